#!/usr/bin/env bash
# Slurm Epilog: kills what the job left behind, so the next job finds its NeuronCores free.
# Processes of the job's user that carry this job's SLURM_JOB_ID always; every process of the
# user when no other job of the user runs on this host's nodes (unless CDK_TRN_EPILOG_USER_SWEEP=0).
# Never root's processes.
set -uo pipefail
# shellcheck source=node_checks.sh
. "$(dirname "${BASH_SOURCE[0]}")/node_checks.sh"
load_node_env
job="${SLURM_JOB_ID:-}"
uid="${SLURM_JOB_UID:-}"
user="${SLURM_JOB_USER:-}"
if [ -z "$job" ] || [ -z "$uid" ] || [ "$uid" = 0 ]; then
  exit 0
fi

killed=""
for dir in /proc/[0-9]*; do
  pid="${dir#/proc/}"
  [ "$(stat -c %u "$dir" 2>/dev/null)" = "$uid" ] || continue
  if [ "$(job_of_pid "$pid")" = "$job" ]; then
    kill -KILL "$pid" 2>/dev/null && killed="$killed $pid"
  fi
done
[ -n "$killed" ] && log "job $job left processes, killed:$killed"

if [ "${CDK_TRN_EPILOG_USER_SWEEP:-1}" != 1 ]; then
  exit 0
fi
if others=$(jobs_on_host -u "$user"); then
  others=$(grep -vx "$job" <<< "$others" || true)
  if [ -z "$others" ] && pgrep -U "$uid" > /dev/null; then
    log "no other job of $user on this host: killing the user's remaining processes"
    pkill -KILL -U "$uid" || true
  fi
else
  log "squeue did not answer: left $user's processes outside job $job alone"
fi
exit 0
