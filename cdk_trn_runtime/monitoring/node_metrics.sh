#!/usr/bin/env bash
# This node's NeuronCore utilization, Neuron device memory in use and EFA traffic and errors as
# CloudWatch metric data (the JSON list `aws cloudwatch put-metric-data --namespace cdk-trn/Node
# --metric-data` takes) on stdout.
#
#   node_metrics.sh <cluster name>
#
# Runs in the node's Slurm container (the training image ships neuron-monitor; the container
# sees the host's devices and /sys); the node's timer publishes the output (node_bootstrap.sh
# publish-metrics). neuron-monitor's first report gives NeuronCoreUtilization (percent, mean over
# the NeuronCores in use, 0 when no Neuron application runs) and NeuronDeviceMemoryUsed (bytes).
# EFA hardware counters are cumulative: each run stores them (CDK_TRN_METRICS_STATE, default
# /run/cdk-trn/efa-counters) and reports the increase since the last run (nothing the first
# time, or after a counter reset). CDK_TRN_DEVICE_ROOT prefixes /sys (tests).
# Metric names: the contract's NODE_NEURON_METRICS and NODE_EFA_COUNTERS (contract.sh).
set -euo pipefail
PATH="${PATH:+$PATH:}/opt/aws/neuron/bin:/usr/local/bin:/usr/bin:/bin"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../contract/contract.sh
. "$HERE/../contract/contract.sh"

cluster="${1:-}"
if ! [[ $cluster =~ ^[a-z][a-z0-9-]{0,38}$ ]]; then
  echo "usage: $0 <cluster name: lower-case letters, digits, '-'>" >&2
  exit 2
fi
DEVICE_ROOT="${CDK_TRN_DEVICE_ROOT:-}"
STATE="${CDK_TRN_METRICS_STATE:-/run/cdk-trn/efa-counters}"
PY="${CDK_TRN_PYTHON:-python3}"

metric() { # name value unit
  printf '{"MetricName":"%s","Value":%s,"Unit":"%s","Dimensions":[{"Name":"%s","Value":"%s"}]}' \
    "$1" "$2" "$3" "$CONTRACT_METRIC_DIMENSION_CLUSTER" "$cluster"
}

data=()

# --- Neuron: one report of neuron-monitor (it streams one JSON report per period) -------------
if command -v neuron-monitor > /dev/null; then
  report=$(timeout 30 neuron-monitor | head -n1) || true
  # Isolated (-I), run as a file: the standard library only, nothing from the working directory.
  if figures=$("$PY" -I "$HERE/neuron_report.py" "$report" 2> /dev/null); then
    read -r utilization memory <<< "$figures"
    data+=("$(metric "${CONTRACT_NODE_NEURON_METRICS[0]}" "$utilization" Percent)")
    data+=("$(metric "${CONTRACT_NODE_NEURON_METRICS[1]}" "$memory" Bytes)")
  else
    echo "neuron-monitor gave no report" >&2
  fi
fi

# --- EFA: increase of the hardware counters since the last run, summed over the devices -------
declare -A now=([tx_bytes]=0 [rx_bytes]=0 [rx_drops]=0)
efa=0
for device in "$DEVICE_ROOT"/sys/class/infiniband/*; do
  [ -d "$device" ] || continue
  efa=1
  for counter in "${!now[@]}"; do
    for file in "$device"/ports/*/hw_counters/"$counter"; do
      [ -r "$file" ] && now[$counter]=$((now[$counter] + $(< "$file")))
    done
  done
done
if [ "$efa" = 1 ]; then
  if [ -r "$STATE" ]; then
    declare -A before=()
    while read -r counter value; do before[$counter]=$value; done < "$STATE"
    for counter in tx_bytes rx_bytes rx_drops; do
      [ -n "${before[$counter]:-}" ] || continue
      delta=$((now[$counter] - before[$counter]))
      [ "$delta" -ge 0 ] || continue # a reset counter (driver reload): a new baseline
      unit=Bytes
      [ "$counter" = rx_drops ] && unit=Count
      data+=("$(metric "${CONTRACT_NODE_EFA_COUNTERS[$counter]}" "$delta" "$unit")")
    done
  fi
  mkdir -p "$(dirname "$STATE")"
  for counter in tx_bytes rx_bytes rx_drops; do echo "$counter ${now[$counter]}"; done > "$STATE.new"
  mv "$STATE.new" "$STATE"
fi

if [ "${#data[@]}" -eq 0 ]; then
  echo "nothing to report" >&2
  exit 3
fi
(IFS=,; printf '[%s]\n' "${data[*]}")
