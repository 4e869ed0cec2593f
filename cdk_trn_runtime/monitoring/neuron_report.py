"""The Neuron figures of one neuron-monitor report, for ``node_metrics.sh``.

The collector runs as root in the node's Slurm container; it runs this file with
``python3 -I <file> <report>``: isolated (no ``PYTHON*`` variables, no user site, neither the
working directory nor this file's directory on ``sys.path``), so it imports the standard library
only and nothing a job could have written. It prints ``<utilization> <memory>``: the mean
NeuronCore utilization in percent over the cores in use (0 when no Neuron application runs) and
the device memory in use in bytes.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def neuron_figures(report: dict[str, Any]) -> tuple[float, int]:
    """(mean NeuronCore utilization in percent, device memory in use in bytes) of ``report``,
    one JSON report of neuron-monitor."""
    utilization: list[float] = []
    memory = 0
    for runtime in report.get("neuron_runtime_data") or []:
        data = runtime.get("report") or {}
        cores = (data.get("neuroncore_counters") or {}).get("neuroncores_in_use") or {}
        utilization += [float(c.get("neuroncore_utilization", 0)) for c in cores.values()]
        used = (data.get("memory_used") or {}).get("neuron_runtime_used_bytes") or {}
        memory += int(used.get("neuron_device", 0))
    return (sum(utilization) / len(utilization) if utilization else 0.0), memory


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: neuron_report.py <one neuron-monitor report (JSON)>", file=sys.stderr)
        return 2
    utilization, memory = neuron_figures(json.loads(argv[0]))
    print(f"{utilization:.2f} {memory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
