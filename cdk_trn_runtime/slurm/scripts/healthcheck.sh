#!/usr/bin/env bash
# Slurm HealthCheckProgram: drains this node (with a reason naming the failed check and its
# figure, e.g. "neuron devices 15 of 16") when a check of node_checks.sh fails; on the cloud a
# hardware failure also marks the instance Unhealthy so its Auto Scaling group replaces it.
set -uo pipefail
# shellcheck source=node_checks.sh
. "$(dirname "${BASH_SOURCE[0]}")/node_checks.sh"
load_node_env
problem=$(node_problem)
if [ -n "$problem" ]; then
  drain_node "$problem"
  replace_if_hardware "$problem"
  exit 1
fi
exit 0
