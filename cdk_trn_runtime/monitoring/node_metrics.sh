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
# Metric names: cdk_trn_runtime/contract/__init__.py NODE_NEURON_METRICS, NODE_EFA_COUNTERS.
set -euo pipefail
PATH="${PATH:+$PATH:}/opt/aws/neuron/bin:/usr/local/bin:/usr/bin:/bin"

cluster="${1:-}"
if ! [[ $cluster =~ ^[a-z][a-z0-9-]{0,38}$ ]]; then
  echo "usage: $0 <cluster name: lower-case letters, digits, '-'>" >&2
  exit 2
fi
DEVICE_ROOT="${CDK_TRN_DEVICE_ROOT:-}"
STATE="${CDK_TRN_METRICS_STATE:-/run/cdk-trn/efa-counters}"
PY="${CDK_TRN_PYTHON:-python3}"

metric() { # name value unit
  printf '{"MetricName":"%s","Value":%s,"Unit":"%s","Dimensions":[{"Name":"Cluster","Value":"%s"}]}' \
    "$1" "$2" "$3" "$cluster"
}

data=()

# --- Neuron: one report of neuron-monitor (it streams one JSON report per period) -------------
if command -v neuron-monitor > /dev/null; then
  report=$(timeout 30 neuron-monitor | head -n1) || true
  # shellcheck disable=SC2016
  if figures=$("$PY" -I -c '
import json, sys
report = json.loads(sys.argv[1])
utilization, memory = [], 0
for runtime in report.get("neuron_runtime_data") or []:
    data = runtime.get("report") or {}
    cores = (data.get("neuroncore_counters") or {}).get("neuroncores_in_use") or {}
    utilization += [float(c.get("neuroncore_utilization", 0)) for c in cores.values()]
    used = (data.get("memory_used") or {}).get("neuron_runtime_used_bytes") or {}
    memory += int(used.get("neuron_device", 0))
print(f"{sum(utilization) / len(utilization) if utilization else 0:.2f} {memory}")
' "$report" 2> /dev/null); then
    read -r utilization memory <<< "$figures"
    data+=("$(metric NeuronCoreUtilization "$utilization" Percent)")
    data+=("$(metric NeuronDeviceMemoryUsed "$memory" Bytes)")
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
      case "$counter" in
        tx_bytes) data+=("$(metric EfaTxBytes "$delta" Bytes)") ;;
        rx_bytes) data+=("$(metric EfaRxBytes "$delta" Bytes)") ;;
        rx_drops) data+=("$(metric EfaRxDrops "$delta" Count)") ;;
      esac
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
