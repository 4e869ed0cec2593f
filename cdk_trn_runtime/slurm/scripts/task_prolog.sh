#!/usr/bin/env bash
# Slurm TaskProlog (runs as the job's user before each task): the node's environment reaches the
# job. Batch jobs inherit the submitting environment, not the node's; Slurm adds each
# `export NAME=value` line this prints to the task's environment. The lines come from the node's
# environment file (the contract's SLURM_NODE_ENV_FILE, written by root at boot): the shared file system
# (CDK_TRN_SHARED_ROOT), the Neuron compile cache, the region, EFA and UltraServer settings, and
# where the node keeps it, the job's Python (CDK_TRN_PYTHON, CDK_TRN_JOB_PATH put first on PATH).
set -uo pipefail
# shellcheck source=../../contract/contract.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../contract/contract.sh"
file=$CONTRACT_SLURM_NODE_ENV_FILE
[ -r "$file" ] || exit 0
# Slurm takes each value verbatim (no shell unquoting): values are printed as they are.
names=$(sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' "$file")
(
  set -a
  # shellcheck source=/dev/null
  . "$file"
  set +a
  for name in $names; do
    case "$name" in
      CDK_TRN_JOB_PATH) printf 'export PATH=%s:%s\n' "${!name}" "${PATH:-/usr/bin:/bin}" ;;
      # The node checks' prefix for the twin's stand-in device trees: a job sees the node's real
      # /dev (none on the twin, so it runs on CPU), never the stand-ins.
      CDK_TRN_DEVICE_ROOT) ;;
      *) printf 'export %s=%s\n' "$name" "${!name}" ;;
    esac
  done
)
exit 0
