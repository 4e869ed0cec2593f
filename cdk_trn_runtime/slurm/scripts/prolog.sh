#!/usr/bin/env bash
# Slurm Prolog (PrologFlags=Alloc: on every node of an allocation, before the job starts): the
# health checks once more. A failure drains the node with the reason and exits non-zero, so
# Slurm requeues the job elsewhere (SchedulerParameters=nohold_on_prolog_fail).
set -uo pipefail
# shellcheck source=node_checks.sh
. "$(dirname "${BASH_SOURCE[0]}")/node_checks.sh"
load_node_env
problem=$(node_problem)
if [ -n "$problem" ]; then
  drain_node "$problem" || true
  replace_if_hardware "$problem" || true
  log "prolog of job ${SLURM_JOB_ID:-?} failed: $problem"
  exit 1
fi
exit 0
