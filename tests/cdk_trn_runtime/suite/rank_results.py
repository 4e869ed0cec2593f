"""Hand-written rank results in the suite's schema, for the pure-Python tests."""

from __future__ import annotations

import copy
from typing import Any

_BASE: dict[str, Any] = {
    "schema_version": 1,
    "run_id": "run-1",
    "rank": 0,
    "world_size": 2,
    "local_rank": 0,
    "node": "i-0abc",
    "platform": "NEURON",
    "discovery": {"neuron_devices": 16},
    "gemm": [
        {
            "m": 2048,
            "n": 2048,
            "k": 2048,
            "seconds": 1e-4,
            "tflops": 120.0,
            "fraction_of_peak": None,
            "numerics": {"checked": True, "rel_error": 2e-3, "rtol": 1e-2},
        },
        {
            "m": 8192,
            "n": 8192,
            "k": 8192,
            "seconds": 1e-2,
            "tflops": 140.0,
            "fraction_of_peak": None,
            "numerics": {"checked": False, "rtol": 1e-2},
        },
    ],
    "hbm_copy": {"bytes": 1 << 30, "seconds": 3e-3, "gbps": 600.0, "fraction_of_peak": None},
    "collectives": [
        {
            "op": "all_reduce",
            "size_bytes": 1 << 20,
            "seconds": 1e-4,
            "algbw_gbps": 10.0,
            "busbw_gbps": 10.0,
            "correct": True,
            "max_abs_error": 0.0,
        },
        {
            "op": "all_reduce",
            "size_bytes": 1 << 30,
            "seconds": 1e-2,
            "algbw_gbps": 100.0,
            "busbw_gbps": 100.0,
            "correct": True,
            "max_abs_error": 0.0,
        },
        {
            "op": "all_gather",
            "size_bytes": 1 << 30,
            "seconds": 1e-2,
            "algbw_gbps": 120.0,
            "busbw_gbps": 60.0,
            "correct": True,
            "max_abs_error": 0.0,
        },
    ],
    "training": {
        "first_loss": 7.0,
        "last_loss": 3.0,
        "loss_drop_fraction": 4 / 7,
        "measured_steps": 17,
        "step_ms": 50.0,
        "tokens_per_s": 40000.0,
        "compilations_after_warmup": 0,
    },
    "compile": {"compile_seconds": 30.0, "compilations": 12},
    "compile_cache": {"dir": "/fsx/cache", "new_compilations_with_warm_cache": 0},
    "errors": {},
    "failures": [],
}


def rank_result(rank: int = 0, node: str = "i-0abc", **changes: Any) -> dict[str, Any]:
    """A passing rank result; ``changes`` replace top-level keys."""
    result = copy.deepcopy(_BASE)
    result.update(rank=rank, node=node, local_rank=rank, **changes)
    return result
