"""Rank 0's summary of all rank results, and the text report printed from it.

Plain Python: the custom-resource handler's tests and the CPU benchmark use it without torch.
Figures are flat numbers chosen so that one bad device shows: throughput figures are the worst
rank's, time and compilation figures the largest, ``train_tokens_per_s`` the sum over ranks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .schema import SCHEMA_VERSION, validate_summary
from .thresholds import Thresholds, best_gemm, evaluate, largest_collective

Getter = Callable[[dict[str, Any]], float | None]


def _collect(results: Sequence[dict[str, Any]], get: Getter) -> list[float]:
    values = []
    for result in results:
        try:
            value = get(result)
        except (KeyError, TypeError):
            value = None
        if value is not None:
            values.append(float(value))
    return values


def _gemm(key: str) -> Getter:
    def get(result: dict[str, Any]) -> float | None:
        best = best_gemm(result)
        return None if best is None else best[key]

    return get


def _collective(op: str, key: str) -> Getter:
    def get(result: dict[str, Any]) -> float | None:
        entry = largest_collective(result, op)
        return None if entry is None else entry[key]

    return get


# figure name -> (how to read it from one rank, how to combine the ranks)
_FIGURES: dict[str, tuple[Getter, Callable[[Iterable[float]], float]]] = {
    "gemm_bf16_tflops_per_device": (_gemm("tflops"), min),
    "gemm_fraction_of_peak": (_gemm("fraction_of_peak"), min),
    "gemm_max_rel_error": (
        lambda r: max(
            (e["numerics"]["rel_error"] for e in r["gemm"] if e["numerics"]["checked"]),
            default=None,
        ),
        max,
    ),
    "hbm_copy_gbps": (lambda r: r["hbm_copy"]["gbps"], min),
    "hbm_fraction_of_peak": (lambda r: r["hbm_copy"]["fraction_of_peak"], min),
    "allreduce_algbw_gbps": (_collective("all_reduce", "algbw_gbps"), min),
    "allreduce_busbw_gbps": (_collective("all_reduce", "busbw_gbps"), min),
    "allgather_algbw_gbps": (_collective("all_gather", "algbw_gbps"), min),
    "allgather_busbw_gbps": (_collective("all_gather", "busbw_gbps"), min),
    "train_tokens_per_s": (lambda r: r["training"]["tokens_per_s"], sum),
    "train_step_ms": (lambda r: r["training"]["step_ms"], max),
    "train_loss_drop_fraction": (lambda r: r["training"]["loss_drop_fraction"], min),
    "compile_seconds": (lambda r: r["compile"]["compile_seconds"], max),
    "graph_compilations_after_warmup": (
        lambda r: r["training"]["compilations_after_warmup"],
        max,
    ),
    "new_compilations_with_warm_cache": (
        lambda r: r["compile_cache"]["new_compilations_with_warm_cache"],
        max,
    ),
    "compile_cache_hits": (lambda r: r["compile_cache"]["hits"], sum),
    "compile_cache_misses": (lambda r: r["compile_cache"]["misses"], sum),
    "compile_cache_hit_rate": (lambda r: r["compile_cache"]["hit_rate"], min),
}

_INTEGER_FIGURES = {
    "graph_compilations_after_warmup",
    "new_compilations_with_warm_cache",
    "compile_cache_hits",
    "compile_cache_misses",
}


def figures(results: Sequence[dict[str, Any]]) -> dict[str, float | int]:
    """The flat figures of a run; a figure no rank measured is left out."""
    out: dict[str, float | int] = {}
    for name, (get, combine) in _FIGURES.items():
        values = _collect(results, get)
        if values:
            value = combine(values)
            out[name] = int(value) if name in _INTEGER_FIGURES else round(value, 6)
    out["world_size"] = len(results)
    out["nodes"] = len({r["node"] for r in results})
    return out


def _versions(results: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The software versions rank 0 found (torch, torch-neuronx, Neuron SDK, Slurm, ...)."""
    for result in results:
        found = (result.get("discovery") or {}).get("versions")
        if isinstance(found, dict):
            return {str(k): str(v) for k, v in found.items()}
    return {}


def build_summary(
    results: Sequence[dict[str, Any]],
    thresholds: Thresholds,
    *,
    run_id: str,
    world_size: int,
) -> dict[str, Any]:
    """``summary.json`` for the rank results of one run; validated before it is returned."""
    ordered = sorted(results, key=lambda r: r["rank"])
    failures = [f for result in ordered for f in evaluate(result, thresholds)]
    missing = sorted(set(range(world_size)) - {r["rank"] for r in ordered})
    for rank in missing:
        failures.append(
            {
                "check": "rank_result",
                "rank": rank,
                "node": "unknown",
                "measured": 0.0,
                "threshold": 1.0,
                "unit": "results",
                "message": f"rank {rank} reported no result",
            }
        )
    notes = sorted({note for r in ordered for note in r.get("notes", [])})
    summary = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "world_size": world_size,
        "passed": not failures,
        "failures": failures,
        "figures": figures(ordered),
        "platform": ordered[0]["platform"] if ordered else "CPU",
        "nodes": sorted({r["node"] for r in ordered}),
        "notes": notes,
        "thresholds": thresholds.as_dict(),
        "versions": _versions(ordered),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    validate_summary(summary)
    return summary


def _line(label: str, value: str) -> str:
    return f"  {label:<38} {value}"


def format_report(summary: dict[str, Any]) -> str:
    """The human-readable report, identical in layout on Trainium and on CPU."""
    f = summary["figures"]

    def fig(name: str, fmt: str = "{:.2f}", unit: str = "") -> str:
        return (fmt.format(f[name]) + (f" {unit}" if unit else "")) if name in f else "-"

    verdict = "PASSED" if summary["passed"] else "FAILED"
    lines = [
        f"trn-acceptance run {summary['run_id']}: {verdict}",
        _line("platform", summary.get("platform", "-")),
        _line("ranks / nodes", f"{summary['world_size']} / {len(summary.get('nodes', []))}"),
        "GEMM (BF16)",
        _line("TFLOPS per device (worst rank)", fig("gemm_bf16_tflops_per_device", "{:.3f}")),
        _line("fraction of peak", fig("gemm_fraction_of_peak", "{:.1%}")),
        _line("max relative error vs float64", fig("gemm_max_rel_error", "{:.2e}")),
        "Device memory",
        _line("copy bandwidth (worst rank)", fig("hbm_copy_gbps", unit="GB/s")),
        _line("fraction of peak", fig("hbm_fraction_of_peak", "{:.1%}")),
        "Collectives (largest size)",
        _line(
            "all-reduce alg / bus bandwidth",
            fig("allreduce_algbw_gbps") + " / " + fig("allreduce_busbw_gbps", unit="GB/s"),
        ),
        _line(
            "all-gather alg / bus bandwidth",
            fig("allgather_algbw_gbps") + " / " + fig("allgather_busbw_gbps", unit="GB/s"),
        ),
        "Training (decoder-only transformer)",
        _line("tokens/s (all ranks)", fig("train_tokens_per_s", "{:.0f}")),
        _line("steady-state step time (slowest rank)", fig("train_step_ms", unit="ms")),
        _line("loss drop", fig("train_loss_drop_fraction", "{:.1%}")),
        _line(
            "torch.compile recompiles after warm-up",
            fig("graph_compilations_after_warmup", "{}"),
        ),
        "Compilation",
        _line("compile seconds (slowest rank)", fig("compile_seconds", unit="s")),
        _line("new compilations with warm cache", fig("new_compilations_with_warm_cache", "{}")),
        _line(
            "compile cache hits / misses",
            fig("compile_cache_hits", "{}") + " / " + fig("compile_cache_misses", "{}"),
        ),
        _line("compile cache hit rate", fig("compile_cache_hit_rate", "{:.1%}")),
    ]
    versions = summary.get("versions") or {}
    if versions:
        lines.append("Versions")
        for name in sorted(versions):
            lines.append(_line(name, versions[name]))
    if summary["failures"]:
        lines.append("Failures")
        for item in summary["failures"]:
            lines.append(
                f"  [{item['check']}] rank {item['rank']} on {item['node']}: {item['message']}"
            )
    for note in summary.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines)
