#!/bin/sh
# slurm.conf ResumeProgram (idle scale-in): slurmctld runs it with the hostlist of the nodes
# a job needs and an environment of its own (no PYTHONPATH): the package is three levels up.
root=$(cd "$(dirname "$0")/../../.." && pwd)
PATH=/usr/local/bin:/usr/bin:/bin PYTHONPATH=$root exec python3 -P -m cdk_trn_runtime.slurm.power resume "$1"
