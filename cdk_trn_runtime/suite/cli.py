"""Command line: ``python -m cdk_trn_runtime.suite run|warm-cache|report``.

Parsing is plain Python; torch is imported only when a command needs the device, so ``--help``,
``report`` and argument errors work anywhere.

Exit codes: 0 every threshold passed; 1 a threshold failed (the report names it); 2 bad usage;
3 the run passed ``--deadline-seconds`` (its result names the stage it was stuck in).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``64K``, ``1MiB``, ``1G`` (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1MiB, 256M, 1G)")
    value = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be > 0, got {text!r}")
    return value


def parse_size_list(text: str) -> tuple[int, ...]:
    return tuple(parse_size(part) for part in text.split(",") if part.strip())


def parse_int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_training(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--train-steps", type=_positive_int, default=20)
    group.add_argument("--warmup-steps", type=_positive_int, default=3)
    group.add_argument("--batch", type=_positive_int, default=8)
    group.add_argument("--sequence", type=_positive_int, default=256)
    group.add_argument("--vocab", type=_positive_int, default=1024)
    group.add_argument("--d-model", type=_positive_int, default=256)
    group.add_argument("--layers", type=_positive_int, default=4)
    group.add_argument("--heads", type=_positive_int, default=4)
    group.add_argument("--learning-rate", type=float, default=3e-3)
    group.add_argument("--seed", type=int, default=0)


def _add_cache(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--cache-dir",
        required=required,
        help="persistent compile cache (FSx in the cluster); default: none",
    )
    parser.add_argument(
        "--device",
        choices=("neuron", "cuda", "cpu"),
        help="the device to run on; default: $CDK_TRN_DEVICE, else torch.accelerator's "
        "(neuron on Trainium), else cpu",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cdk_trn_runtime.suite",
        description="Acceptance suite for Trainium clusters.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run every check on this rank (under torchrun)")
    run.add_argument("--out-dir", required=True, help="where rank-<N>.json and summary.json go")
    run.add_argument("--run-id", required=True)
    run.add_argument(
        "--node", help="node name in results; default: $TRN_ACCEPTANCE_NODE or the host name"
    )
    peaks = run.add_argument_group("peaks per device (from the catalog)")
    peaks.add_argument("--peak-bf16-tflops", type=float)
    peaks.add_argument("--peak-hbm-gbps", type=float, help="GB/s (10^9 bytes/s)")
    peaks.add_argument("--peak-collective-busbw-gbps", type=float, help="GB/s")
    limits = run.add_argument_group("thresholds")
    limits.add_argument("--min-gemm-fraction", type=float, default=0.5)
    limits.add_argument("--min-hbm-fraction", type=float, default=0.5)
    limits.add_argument("--min-collective-fraction", type=float, default=0.25)
    limits.add_argument("--gemm-rtol", type=float, default=1e-2)
    limits.add_argument("--min-loss-drop", type=float, default=0.05)
    limits.add_argument("--max-compilations-after-warmup", type=int, default=0)
    limits.add_argument("--max-new-compilations-with-warm-cache", type=int, default=0)
    sizes = run.add_argument_group("sizes")
    sizes.add_argument(
        "--gemm-sizes",
        type=parse_int_list,
        default=(2048, 4096, 8192),
        help="square matrix sizes, comma-separated; default: 2048,4096,8192",
    )
    sizes.add_argument("--gemm-iterations", type=_positive_int, default=10)
    sizes.add_argument(
        "--numerics-max-size",
        type=int,
        default=2048,
        help="check numerics for GEMM sizes up to this; default: 2048",
    )
    sizes.add_argument(
        "--copy-size", type=parse_size, default=1 << 30, help="device copy buffer; default: 1GiB"
    )
    sizes.add_argument("--copy-iterations", type=_positive_int, default=10)
    sizes.add_argument(
        "--collective-sizes",
        type=parse_size_list,
        default=(1 << 20, 1 << 24, 1 << 28, 1 << 30),
        help="comma-separated; default: 1MiB,16MiB,256MiB,1GiB",
    )
    sizes.add_argument("--collective-iterations", type=_positive_int, default=5)
    _add_training(run)
    _add_cache(run, required=False)
    run.add_argument(
        "--no-warm-pass",
        action="store_true",
        help="skip the compile-cache warm pass before the measured run",
    )
    run.add_argument(
        "--deadline-seconds",
        type=float,
        default=3600.0,
        help="a rank still running after this writes what it was doing and exits 3; default: 3600",
    )

    warm = commands.add_parser("warm-cache", help="(internal) training graphs into the cache")
    _add_cache(warm, required=True)
    warm.add_argument("--output")
    _add_training(warm)

    report = commands.add_parser("report", help="print the report of a summary.json")
    report.add_argument("summary")
    return parser


def _train_config(args: argparse.Namespace) -> Any:
    from .training import TrainConfig

    return TrainConfig(
        steps=args.train_steps,
        warmup_steps=args.warmup_steps,
        batch=args.batch,
        sequence=args.sequence,
        vocab=args.vocab,
        d_model=args.d_model,
        layers=args.layers,
        heads=args.heads,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.command == "report":
        from .schema import validate_summary
        from .summary import format_report

        with open(args.summary) as handle:
            summary = json.load(handle)
        validate_summary(summary)
        print(format_report(summary))
        return 0 if summary["passed"] else 1

    from .device import choose_device, process_info
    from .thresholds import Thresholds

    try:
        train_config = _train_config(args)
        device = choose_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))

    if args.command == "warm-cache":
        from .runner import warm_cache

        return warm_cache(train_config, args.cache_dir, device, args.output)

    from .runner import RunConfig, run_rank

    try:
        thresholds = Thresholds(
            peak_bf16_tflops=args.peak_bf16_tflops,
            peak_hbm_gbps=args.peak_hbm_gbps,
            peak_collective_busbw_gbps=args.peak_collective_busbw_gbps,
            min_gemm_fraction=args.min_gemm_fraction,
            min_hbm_fraction=args.min_hbm_fraction,
            min_collective_fraction=args.min_collective_fraction,
            gemm_rtol=args.gemm_rtol,
            min_loss_drop=args.min_loss_drop,
            max_compilations_after_warmup=args.max_compilations_after_warmup,
            max_new_compilations_with_warm_cache=args.max_new_compilations_with_warm_cache,
        )
        info = process_info(node=args.node)
    except ValueError as exc:
        parser.error(str(exc))
    config = RunConfig(
        out_dir=args.out_dir,
        run_id=args.run_id,
        thresholds=thresholds,
        train=train_config,
        gemm_sizes=args.gemm_sizes,
        gemm_iterations=args.gemm_iterations,
        numerics_max_size=args.numerics_max_size,
        copy_bytes=args.copy_size,
        copy_iterations=args.copy_iterations,
        collective_sizes=args.collective_sizes,
        collective_iterations=args.collective_iterations,
        cache_dir=args.cache_dir,
        device=device,
        warm_pass=not args.no_warm_pass,
        node=args.node,
        deadline_seconds=args.deadline_seconds,
    )
    summary, code = run_rank(config, info)
    if code and info.rank == 0:
        for item in summary["failures"]:
            print(
                f"FAILED {item['check']} on rank {item['rank']} ({item['node']}): "
                f"measured {item['measured']:g} {item['unit']}, threshold "
                f"{item['threshold']:g}: {item['message']}",
                file=sys.stderr,
            )
    return code
