#!/bin/sh
# slurm.conf SuspendProgram (idle scale-in): slurmctld runs it with the hostlist of the nodes
# idle longer than SuspendTime and an environment of its own (no PYTHONPATH): the package is three levels up.
root=$(cd "$(dirname "$0")/../../.." && pwd)
PATH=/usr/local/bin:/usr/bin:/bin PYTHONPATH=$root exec python3 -P -m cdk_trn_runtime.slurm.power suspend "$1"
