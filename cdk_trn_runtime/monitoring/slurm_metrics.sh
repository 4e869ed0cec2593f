#!/usr/bin/env bash
# Slurm node states and queue depth as CloudWatch metric data (the JSON list that
# `aws cloudwatch put-metric-data --namespace cdk-trn/Slurm --metric-data` takes) on stdout.
#
#   slurm_metrics.sh <cluster name>
#
# Runs where sinfo and squeue reach slurmctld (the controller's container); the controller's
# timer publishes the output (controller_bootstrap.sh publish-metrics). Each node counts once, in
# one of: NodesIdle, NodesAllocated (allocated or completing), NodesMixed, NodesDrained (drained
# or draining), NodesDown (down, failed, not responding); JobsRunning and JobsPending. Exits
# non-zero and prints nothing when Slurm does not answer: no sample beats a wrong zero.
# Metric names: the contract's SLURM_NODE_STATE_METRICS and SLURM_JOB_METRICS (contract.sh).
set -euo pipefail
# shellcheck source=../contract/contract.sh
. "$(dirname "${BASH_SOURCE[0]}")/../contract/contract.sh"

cluster="${1:-}"
if ! [[ $cluster =~ ^[a-z][a-z0-9-]{0,38}$ ]]; then
  echo "usage: $0 <cluster name: lower-case letters, digits, '-'>" >&2
  exit 2
fi

# One line per node and partition: "<node> <compact state>", e.g. "trn-1 drng" or "trn-2 idle*".
nodes=$(sinfo -h -N -o '%N %t') || { echo "sinfo failed" >&2; exit 1; }
running=$(squeue -h -t RUNNING -o %A) || { echo "squeue failed" >&2; exit 1; }
pending=$(squeue -h -t PENDING -o %A) || { echo "squeue failed" >&2; exit 1; }

idle=0 allocated=0 mixed=0 drained=0 down=0
while read -r node state; do
  [ -n "$node" ] || continue
  # '*' not responding, '~' powered off, '#' powering up, '%' powering down, '$' maintenance,
  # '@' reboot pending, '^' reboot issued, '!' pending power down, '-' planned.
  responding=1
  [[ $state == *'*' ]] && responding=0
  state="${state%%[*~#%\$@^!-]*}"
  case "$state" in
    drain | drng | drained | draining) drained=$((drained + 1)) ;;
    down | fail | failg | boot) down=$((down + 1)) ;;
    *) if [ "$responding" = 0 ]; then down=$((down + 1)); else
      case "$state" in
        idle) idle=$((idle + 1)) ;;
        alloc | comp) allocated=$((allocated + 1)) ;;
        mix) mixed=$((mixed + 1)) ;;
        *) down=$((down + 1)) ;;
      esac
    fi ;;
  esac
done < <(sort -u -k1,1 <<< "$nodes")

count() { grep -c . <<< "$1" || true; }

metric() {
  printf '{"MetricName":"%s","Value":%d,"Unit":"Count","Dimensions":[{"Name":"%s","Value":"%s"}]}' \
    "$1" "$2" "$CONTRACT_METRIC_DIMENSION_CLUSTER" "$cluster"
}

# The contract's metric names, in its order.
node_metrics=("${CONTRACT_SLURM_NODE_STATE_METRICS[@]}") job_metrics=("${CONTRACT_SLURM_JOB_METRICS[@]}")
printf '[%s,%s,%s,%s,%s,%s,%s]\n' \
  "$(metric "${node_metrics[0]}" "$idle")" \
  "$(metric "${node_metrics[1]}" "$allocated")" \
  "$(metric "${node_metrics[2]}" "$mixed")" \
  "$(metric "${node_metrics[3]}" "$drained")" \
  "$(metric "${node_metrics[4]}" "$down")" \
  "$(metric "${job_metrics[0]}" "$(count "$running")")" \
  "$(metric "${job_metrics[1]}" "$(count "$pending")")"
