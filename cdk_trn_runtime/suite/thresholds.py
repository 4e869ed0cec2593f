"""Pass/fail thresholds, as fractions of peaks that the caller passes in.

The peaks are per device (one logical NeuronCore, i.e. one rank) and come from cdk-trn's catalog
through the command line; this package never imports cdk_trn. A threshold whose peak is not given is
not checked (its figure is still reported). ``evaluate`` turns one rank's result into failures
in the contract's shape.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


def _fraction(name: str, value: float) -> None:
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a fraction between 0 and 1, got {value}")


def _positive_or_none(name: str, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, got {value}")


@dataclass(frozen=True)
class Thresholds:
    """What a rank must reach. Every field has a default so the suite runs without any peak."""

    peak_bf16_tflops: float | None = None
    """Dense BF16 TFLOPS of one device. Default: none (the GEMM fraction is not checked)."""
    peak_hbm_gbps: float | None = None
    """Memory bandwidth of one device in GB/s. Default: none (not checked)."""
    peak_collective_busbw_gbps: float | None = None
    """Bus bandwidth a collective should approach, GB/s. Default: none (not checked)."""
    min_gemm_fraction: float = 0.5
    """Best GEMM TFLOPS over all sizes, as a fraction of ``peak_bf16_tflops``. Default: 0.5."""
    min_hbm_fraction: float = 0.5
    """Device copy GB/s as a fraction of ``peak_hbm_gbps``. Default: 0.5."""
    min_collective_fraction: float = 0.25
    """Bus bandwidth at the largest size, fraction of the collective peak. Default: 0.25."""
    gemm_rtol: float = 1e-2
    """Allowed normwise relative error of BF16 GEMM against float64. Default: 1e-2 (a few BF16
    rounding units of 2^-8)."""
    min_loss_drop: float = 0.05
    """Training loss must fall by at least this fraction of the first loss. Default: 0.05."""
    max_compilations_after_warmup: int = 0
    """Graph compilations allowed in the steady-state training steps. Default: 0."""
    max_new_compilations_with_warm_cache: int = 0
    """New compile-cache entries allowed in the training run after the warm pass. Default: 0."""

    def __post_init__(self) -> None:
        _positive_or_none("peak_bf16_tflops", self.peak_bf16_tflops)
        _positive_or_none("peak_hbm_gbps", self.peak_hbm_gbps)
        _positive_or_none("peak_collective_busbw_gbps", self.peak_collective_busbw_gbps)
        _fraction("min_gemm_fraction", self.min_gemm_fraction)
        _fraction("min_hbm_fraction", self.min_hbm_fraction)
        _fraction("min_collective_fraction", self.min_collective_fraction)
        _fraction("min_loss_drop", self.min_loss_drop)
        if not self.gemm_rtol > 0:
            raise ValueError(f"gemm_rtol must be > 0, got {self.gemm_rtol}")
        if self.max_compilations_after_warmup < 0:
            raise ValueError("max_compilations_after_warmup must be >= 0")
        if self.max_new_compilations_with_warm_cache < 0:
            raise ValueError("max_new_compilations_with_warm_cache must be >= 0")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def failure(
    check: str,
    rank: int,
    node: str,
    measured: float,
    threshold: float,
    unit: str,
    message: str,
) -> dict[str, Any]:
    """One failure in the shape ``summary.json`` promises its readers."""
    return {
        "check": check,
        "rank": rank,
        "node": node,
        "measured": float(measured),
        "threshold": float(threshold),
        "unit": unit,
        "message": message,
    }


def best_gemm(result: dict[str, Any]) -> dict[str, Any] | None:
    """The GEMM size with the highest TFLOPS: the figure that is compared with the peak."""
    entries = result.get("gemm") or []
    return max(entries, key=lambda e: e["tflops"]) if entries else None


def largest_collective(result: dict[str, Any], op: str) -> dict[str, Any] | None:
    entries = [e for e in result.get("collectives") or [] if e["op"] == op]
    return max(entries, key=lambda e: e["size_bytes"]) if entries else None


def evaluate(result: dict[str, Any], thresholds: Thresholds) -> list[dict[str, Any]]:
    """Every threshold ``result`` (one rank's result) misses, as failures."""
    rank, node = result["rank"], result["node"]
    out: list[dict[str, Any]] = []

    def fail(check: str, measured: float, limit: float, unit: str, message: str) -> None:
        out.append(failure(check, rank, node, measured, limit, unit, message))

    for check, message in sorted((result.get("errors") or {}).items()):
        fail(check, 0.0, 0.0, "", f"{check} raised on rank {rank} ({node}): {message}")

    for entry in result.get("gemm") or []:
        numerics = entry["numerics"]
        if numerics.get("checked") and numerics["rel_error"] > thresholds.gemm_rtol:
            fail(
                "gemm_numerics",
                numerics["rel_error"],
                thresholds.gemm_rtol,
                "relative error",
                f"BF16 GEMM {entry['m']}x{entry['k']}x{entry['n']} differs from the float64 "
                f"reference by {numerics['rel_error']:.3g} (allowed {thresholds.gemm_rtol:.3g})",
            )
    best = best_gemm(result)
    if best is not None and thresholds.peak_bf16_tflops:
        fraction = best["tflops"] / thresholds.peak_bf16_tflops
        if fraction < thresholds.min_gemm_fraction:
            fail(
                "gemm_fraction_of_peak",
                fraction,
                thresholds.min_gemm_fraction,
                "fraction of peak",
                f"BF16 GEMM reached {best['tflops']:.1f} TFLOPS, {fraction:.1%} of the "
                f"{thresholds.peak_bf16_tflops:g} TFLOPS peak (needs "
                f"{thresholds.min_gemm_fraction:.0%})",
            )

    copy = result.get("hbm_copy")
    if copy and copy.get("correct") is False:
        fail(
            "hbm_copy_correctness",
            0.0,
            1.0,
            "correct",
            f"device copy of {copy['bytes']} bytes returned wrong values",
        )
    if copy and thresholds.peak_hbm_gbps:
        fraction = copy["gbps"] / thresholds.peak_hbm_gbps
        if fraction < thresholds.min_hbm_fraction:
            fail(
                "hbm_fraction_of_peak",
                fraction,
                thresholds.min_hbm_fraction,
                "fraction of peak",
                f"device copy reached {copy['gbps']:.1f} GB/s, {fraction:.1%} of the "
                f"{thresholds.peak_hbm_gbps:g} GB/s peak (needs {thresholds.min_hbm_fraction:.0%})",
            )

    for entry in result.get("collectives") or []:
        if not entry["correct"]:
            fail(
                f"{entry['op']}_correctness",
                entry.get("max_abs_error", float("inf")),
                0.0,
                "max abs error",
                f"{entry['op']} of {entry['size_bytes']} bytes returned wrong values "
                f"(max abs error {entry.get('max_abs_error')})",
            )
    world = result["world_size"]
    if thresholds.peak_collective_busbw_gbps and world > 1:
        for op in ("all_reduce", "all_gather"):
            entry = largest_collective(result, op)
            if entry is None:
                continue
            fraction = entry["busbw_gbps"] / thresholds.peak_collective_busbw_gbps
            if fraction < thresholds.min_collective_fraction:
                fail(
                    f"{op}_busbw_fraction",
                    fraction,
                    thresholds.min_collective_fraction,
                    "fraction of peak",
                    f"{op} of {entry['size_bytes']} bytes over {world} ranks reached "
                    f"{entry['busbw_gbps']:.2f} GB/s bus bandwidth, {fraction:.1%} of "
                    f"{thresholds.peak_collective_busbw_gbps:g} GB/s (needs "
                    f"{thresholds.min_collective_fraction:.0%})",
                )

    training = result.get("training")
    if training:
        drop = training["loss_drop_fraction"]
        if drop < thresholds.min_loss_drop:
            fail(
                "training_loss",
                drop,
                thresholds.min_loss_drop,
                "fraction of first loss",
                f"training loss went from {training['first_loss']:.4f} to "
                f"{training['last_loss']:.4f}: fell by {drop:.1%}, needs "
                f"{thresholds.min_loss_drop:.0%}",
            )
        compiles = training["compilations_after_warmup"]
        if compiles > thresholds.max_compilations_after_warmup:
            fail(
                "graph_compilations_after_warmup",
                compiles,
                thresholds.max_compilations_after_warmup,
                "compilations",
                f"{compiles} graph compilations in {training['measured_steps']} steady-state "
                f"training steps (allowed {thresholds.max_compilations_after_warmup})",
            )

    cache = result.get("compile_cache")
    if cache and cache.get("new_compilations_with_warm_cache") is not None:
        new = cache["new_compilations_with_warm_cache"]
        if new > thresholds.max_new_compilations_with_warm_cache:
            fail(
                "new_compilations_with_warm_cache",
                new,
                thresholds.max_new_compilations_with_warm_cache,
                "compilations",
                f"the training run compiled {new} graphs that the warm compile cache in "
                f"{cache['dir']} should have held (allowed "
                f"{thresholds.max_new_compilations_with_warm_cache})",
            )
    return out
