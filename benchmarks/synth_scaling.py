"""Synth time and template size of the default cluster stack for 1, 16, 64 and 256 nodes.

    python benchmarks/synth_scaling.py [--repeat N]

The template should not grow with the node count (one launch template and one Auto Scaling group
serve any N); the synth time is dominated by the jsii round trips, not by N.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aws_cdk as cdk  # noqa: E402

from stacks import build_default_app  # noqa: E402
from stacks.config import AppConfig  # noqa: E402


def synth_once(nodes: int) -> tuple[float, int, int]:
    start = time.perf_counter()
    app = cdk.App()
    default = build_default_app(app, AppConfig(nodes=nodes))
    assembly = app.synth()
    elapsed = time.perf_counter() - start
    template = assembly.get_stack_by_name(default.cluster_stack.stack_name).template
    body = json.dumps(template)
    return elapsed, len(body), len(template["Resources"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    synth_once(1)  # warm-up: loads the jsii runtime and aws-cdk-lib once
    print(f"{'nodes':>6} {'synth s (median)':>17} {'template bytes':>15} {'resources':>10}")
    for nodes in (1, 16, 64, 256):
        runs = [synth_once(nodes) for _ in range(args.repeat)]
        median = statistics.median(r[0] for r in runs)
        _, size, resources = runs[-1]
        print(f"{nodes:>6} {median:>17.2f} {size:>15,} {resources:>10}")


if __name__ == "__main__":
    main()
