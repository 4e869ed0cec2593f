#!/bin/bash
# Runs the node's checkpoint signing agent (cdk_trn_runtime/provenance/agent.py, as root: the
# only holder of the credential the vault accepts) in the background, restarted whenever it ends,
# then execs its arguments (slurmd) in the foreground. In the slurmd container (node_bootstrap.sh
# slurmd-run): jobs there reach the agent's socket, /run/cdk-trn/signer.sock.
set -u
cd / || exit 1
(while :; do python3 -P -m cdk_trn_runtime.provenance.agent serve; sleep 5; done) &
exec "$@"
