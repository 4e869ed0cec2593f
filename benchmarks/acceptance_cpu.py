"""Run cdk-trn's container acceptance suite on this machine's CPU and print its report.

The suite runs exactly as on a Trainium node (``torchrun ... -m cdk_trn_runtime.suite run``), on the
CPU device (gloo, torch.compile's inductor backend) with sizes a CPU finishes in a few minutes; the
report printed at the end is the one rank 0 prints on Trainium
(``cdk_trn_runtime.suite.summary.format_report``): GEMM, device copy, all-reduce and all-gather bus
bandwidth, loss drop, torch.compile recompiles after warm-up (0), and the compile cache's hits,
misses and hit rate in the measured run (after the warm pass filled the cache). Then the figures
that matter are printed once more as ``name=value`` lines. CPU figures say nothing about Trainium
performance; no peaks are passed, so no fraction is judged.

With ``--hourly-price P`` (US dollars per hour of this machine, or of the node it stands for), it
also prints the cost per million tokens at the measured training throughput
(``cdk_trn_runtime.cost``).

Usage: python benchmarks/acceptance_cpu.py [--nproc 2] [--keep DIR] [--hourly-price P]
Needs: torch 2.13 or 2.14 (the test extra).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CPU_SIZES = [
    "--gemm-sizes",
    "256,512,1024",
    "--gemm-iterations",
    "5",
    "--numerics-max-size",
    "1024",
    "--copy-size",
    "64M",
    "--copy-iterations",
    "5",
    "--collective-sizes",
    "1M,16M,64M",
    "--collective-iterations",
    "5",
    "--train-steps",
    "20",
    "--warmup-steps",
    "3",
    "--batch",
    "8",
    "--sequence",
    "128",
    "--vocab",
    "512",
    "--d-model",
    "128",
    "--layers",
    "2",
    "--heads",
    "4",
]


def cost_line(summary: dict[str, object], hourly_price: float) -> str:
    """``cost: $<x> per million tokens at <t> tokens/s and $<p>/h`` from the run's summary."""
    from cdk_trn_runtime.cost import tokens_per_usd, usd_per_million_tokens

    figures = summary.get("figures")
    tokens_per_s = figures.get("train_tokens_per_s") if isinstance(figures, dict) else None
    if not isinstance(tokens_per_s, int | float) or tokens_per_s <= 0:
        return "cost: unknown (no training throughput in the summary)"
    per_million = usd_per_million_tokens(float(tokens_per_s), hourly_price)
    per_usd = tokens_per_usd(float(tokens_per_s), hourly_price)
    return (
        f"cost: ${per_million:.4f} per million tokens ({per_usd:.0f} tokens per dollar) "
        f"at {tokens_per_s:.1f} tokens/s and ${hourly_price:.2f}/h"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="ranks (processes); default: 2")
    parser.add_argument("--keep", help="write results and the cache here instead of a temp dir")
    parser.add_argument(
        "--hourly-price",
        type=float,
        default=None,
        help="US dollars per hour: also print the cost per million tokens",
    )
    args = parser.parse_args()
    if args.hourly_price is not None and not 0 < args.hourly_price < 10_000:
        parser.error(f"--hourly-price must be above 0, got {args.hourly_price}")

    from cdk_trn_runtime.suite.schema import validate_summary
    from cdk_trn_runtime.suite.summary import format_report

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        out_dir, cache_dir = root / "results", root / "cache"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(args.nproc),
            "-m",
            "cdk_trn_runtime.suite",
            "run",
            "--out-dir",
            str(out_dir),
            "--run-id",
            f"cpu-{int(time.time())}",
            "--cache-dir",
            str(cache_dir),
            *CPU_SIZES,
        ]
        env = {**os.environ, "CDK_TRN_DEVICE": "cpu"}
        print("$ CDK_TRN_DEVICE=cpu python " + " ".join(command[1:]), flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        summary_path = out_dir / "summary.json"
        if not summary_path.exists():
            print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
            print(f"no summary.json (exit {done.returncode})", file=sys.stderr)
            return 2
        summary = json.loads(summary_path.read_text())
        validate_summary(summary)
        print(format_report(summary))
        figures = summary["figures"]
        for name in (
            "gemm_bf16_tflops_per_device",
            "allreduce_busbw_gbps",
            "allgather_busbw_gbps",
            "train_loss_drop_fraction",
            "graph_compilations_after_warmup",
            "compile_cache_hits",
            "compile_cache_misses",
            "compile_cache_hit_rate",
            "new_compilations_with_warm_cache",
        ):
            print(f"{name}={figures.get(name, 'not measured')}")
        if args.hourly_price is not None:
            print(cost_line(summary, args.hourly_price))
        print(f"(wall time {elapsed:.1f} s for {args.nproc} ranks, exit {done.returncode})")
        return done.returncode


if __name__ == "__main__":
    sys.exit(main())
