"""One rank's acceptance run, start to finish, and rank 0's summary.

Order: compile-cache warm pass (a child process, before this process opens the device), then
discovery, GEMM, device copy, collectives, training; every check is isolated so one failing
check is reported rather than ending the run. Ranks exchange their results through the
collectives, so rank 0 writes ``summary.json`` without a shared file system, and every rank
exits with the same code: 0 passed, 1 a threshold failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checks, compile_cache
from .device import (
    NEURON,
    ProcessInfo,
    Runtime,
    cache_counters,
    compile_metrics,
    standalone_environment,
)
from .schema import SCHEMA_VERSION, validate_rank_result
from .summary import build_summary, format_report
from .thresholds import Thresholds, evaluate
from .training import TrainConfig, train


@dataclass(frozen=True)
class RunConfig:
    out_dir: str
    run_id: str
    thresholds: Thresholds
    train: TrainConfig
    gemm_sizes: tuple[int, ...] = (2048, 4096, 8192)
    gemm_iterations: int = 10
    numerics_max_size: int = 2048
    copy_bytes: int = 1 << 30
    copy_iterations: int = 10
    collective_sizes: tuple[int, ...] = (1 << 20, 1 << 24, 1 << 28, 1 << 30)
    collective_iterations: int = 5
    cache_dir: str | None = None
    device: str = "cpu"
    warm_pass: bool = True
    node: str | None = None
    deadline_seconds: float = 3600.0


class Deadline:
    """Ends a rank that is stuck (a hung collective, say) with a result that says where.

    On expiry the rank writes its result with a ``deadline`` error naming the stage it was in;
    rank 0 also writes a summary in which the ranks it never heard from are failures. Then the
    process exits with code 3, so the run fails with a reason instead of waiting forever.
    """

    def __init__(self, seconds: float, write: Callable[[str], None]) -> None:
        self.stage = "start"
        self._write = write
        self._seconds = seconds
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        try:
            self._write(
                f"the run did not finish within {self._seconds:g} s; it was in stage {self.stage!r}"
            )
        finally:
            os._exit(3)


def _isolated(errors: dict[str, str], name: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # a failed check is a result, not the end of the run
        errors[name] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
        return None


def warm_pass_command(config: RunConfig, output: str) -> list[str]:
    t = config.train
    return [
        sys.executable,
        "-m",
        "cdk_trn_runtime.suite",
        "warm-cache",
        "--cache-dir",
        str(config.cache_dir),
        "--device",
        config.device,
        "--output",
        output,
        "--train-steps",
        str(t.steps),
        "--warmup-steps",
        str(t.warmup_steps),
        "--batch",
        str(t.batch),
        "--sequence",
        str(t.sequence),
        "--vocab",
        str(t.vocab),
        "--d-model",
        str(t.d_model),
        "--layers",
        str(t.layers),
        "--heads",
        str(t.heads),
        "--learning-rate",
        repr(t.learning_rate),
        "--seed",
        str(t.seed),
    ]


def _warm_pass(
    config: RunConfig, info: ProcessInfo, paths: dict[str, str | None]
) -> dict[str, Any]:
    """Replay the training in a process of its own so the measured run meets a warm cache."""
    output = str(Path(config.out_dir) / f".warm-pass-rank-{info.rank}.json")
    before = compile_cache.entries(paths)
    start = time.perf_counter()
    completed = subprocess.run(  # noqa: S603  (our own module, argument list)
        warm_pass_command(config, output),
        env=standalone_environment(info, config.device),
        capture_output=True,
        text=True,
        check=False,
    )
    record: dict[str, Any] = {
        "ran": True,
        "returncode": completed.returncode,
        "seconds": time.perf_counter() - start,
        "new_entries": len(compile_cache.entries(paths) - before),
    }
    if completed.returncode != 0:
        record["stderr_tail"] = completed.stderr[-2000:]
    elif os.path.exists(output):
        record.update(json.loads(Path(output).read_text()))
        os.unlink(output)
    return record


def run_rank(config: RunConfig, info: ProcessInfo) -> tuple[dict[str, Any], int]:
    """Run every check on this rank; write rank-<N>.json (and summary.json on rank 0)."""
    started = time.time()
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    errors: dict[str, str] = {}
    notes: list[str] = []
    platform = config.device.upper()
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": config.run_id,
        "rank": info.rank,
        "world_size": info.world_size,
        "local_rank": info.local_rank,
        "node": info.node,
        "platform": platform,
        "discovery": {},
        "gemm": [],
        "hbm_copy": None,
        "collectives": [],
        "training": None,
        "compile": {"compile_seconds": 0.0, "compilations": 0, "recompilations": 0},
        "compile_cache": None,
        "errors": errors,
        "notes": notes,
        "failures": [],
    }

    def write_on_deadline(message: str) -> None:
        errors["deadline"] = message
        result["failures"] = evaluate(result, config.thresholds)
        (out_dir / f"rank-{info.rank}.json").write_text(json.dumps(result, indent=2))
        print(f"rank {info.rank}: {message}", file=sys.stderr, flush=True)
        if info.rank == 0:
            summary = build_summary(
                [result], config.thresholds, run_id=config.run_id, world_size=info.world_size
            )
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            print(format_report(summary), flush=True)

    deadline = Deadline(config.deadline_seconds, write_on_deadline)
    deadline.start()

    paths: dict[str, str | None] | None = None
    cache: dict[str, Any] | None = None
    if config.cache_dir:
        paths = compile_cache.cache_paths(config.cache_dir, config.device)
        compile_cache.configure_environment(paths)
        cache = {
            "dir": paths["dir"],
            "neuron_cache": os.environ.get("NEURON_COMPILE_CACHE_URL")
            if config.device == NEURON
            else None,
            "inductor_cache": paths["inductor"],
        }
        deadline.stage = "compile cache warm pass"
        if config.warm_pass and info.local_rank == 0:
            # One warm pass per node: every rank trains the same graphs, and the measured
            # training starts only after a barrier that waits for it. More would compile the
            # same graphs concurrently on one node.
            warm_paths = paths
            cache["warm_pass"] = _isolated(
                errors,
                "compile_cache_warm_pass",
                lambda: _warm_pass(config, info, warm_paths),
            )
            if cache["warm_pass"] and cache["warm_pass"]["returncode"] != 0:
                errors["compile_cache_warm_pass"] = (
                    f"warm pass exited {cache['warm_pass']['returncode']}: "
                    f"{cache['warm_pass'].get('stderr_tail', '')[-300:]}"
                )
        else:
            cache["warm_pass"] = {
                "ran": False,
                "reason": "disabled"
                if not config.warm_pass
                else "local rank 0 warms this node's cache",
            }

    deadline.stage = "device and process group"
    runtime = Runtime(config.device, info)
    thresholds = config.thresholds
    deadline.stage = "discovery"
    result["discovery"] = _isolated(errors, "discovery", lambda: checks.discovery(runtime)) or {}
    deadline.stage = "gemm"
    result["gemm"] = (
        _isolated(
            errors,
            "gemm",
            lambda: checks.gemm(
                runtime,
                config.gemm_sizes,
                config.gemm_iterations,
                config.numerics_max_size,
                thresholds,
            ),
        )
        or []
    )
    deadline.stage = "hbm_copy"
    result["hbm_copy"] = _isolated(
        errors,
        "hbm_copy",
        lambda: checks.hbm_copy(runtime, config.copy_bytes, config.copy_iterations, thresholds),
    )
    deadline.stage = "collectives"
    result["collectives"] = (
        _isolated(
            errors,
            "collectives",
            lambda: checks.collectives(
                runtime, config.collective_sizes, config.collective_iterations
            ),
        )
        or []
    )

    deadline.stage = "training"
    # Every rank is past its other graphs, so cache files appearing now come from training.
    runtime.collectives.barrier()
    entries_before = compile_cache.entries(paths) if paths else set()
    counters_before = cache_counters()
    result["training"] = _isolated(
        errors,
        "training",
        lambda: train(config.train, runtime.device, runtime.compile_backend),
    )
    runtime.collectives.barrier()
    if cache is not None and paths is not None:
        counters_after = cache_counters()
        new_entries = sorted(compile_cache.entries(paths) - entries_before)
        delta = {k: counters_after[k] - counters_before[k] for k in counters_after}
        countable = compile_cache.countable(paths)
        hits = delta["fx_graph_cache_hits"] + delta["autograd_cache_hits"]
        misses = delta["fx_graph_cache_misses"] + delta["autograd_cache_misses"]
        cache.update(
            {
                "entries_before_training": len(entries_before),
                "new_entries_in_training": new_entries[:20],
                "new_compilations_with_warm_cache": len(new_entries) if countable else None,
                "cache_counters_in_training": delta,
                "hits": hits,
                "misses": misses,
                "hit_rate": compile_cache.hit_rate(hits, misses),
            }
        )
        if not countable:
            notes.append(
                "NEURON_COMPILE_CACHE_URL is not a local path, so new cache entries cannot be "
                "counted; pass --cache-dir on a shared file system instead."
            )
    result["compile_cache"] = cache
    result["compile"] = compile_metrics()
    result["duration_s"] = time.time() - started
    result["failures"] = evaluate(result, thresholds)
    validate_rank_result(result)
    (out_dir / f"rank-{info.rank}.json").write_text(json.dumps(result, indent=2))

    deadline.stage = "exchanging results"
    payloads = runtime.collectives.all_gather_bytes(json.dumps(result).encode())
    results = [json.loads(p) for p in payloads]
    summary = build_summary(results, thresholds, run_id=config.run_id, world_size=info.world_size)
    if info.rank == 0:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(format_report(summary), flush=True)
    # Nobody exits before rank 0 has written: torchrun stops all ranks when one fails.
    runtime.collectives.barrier()
    deadline.cancel()
    runtime.shutdown()
    return summary, 0 if summary["passed"] else 1


def warm_cache(train_config: TrainConfig, cache_dir: str, device: str, output: str | None) -> int:
    """The warm pass itself: the training graphs once, alone, against the cache."""
    paths = compile_cache.cache_paths(cache_dir, device)
    compile_cache.configure_environment(paths)
    info = ProcessInfo(0, 1, 0, 1, "warm-pass")
    runtime = Runtime(device, info, distributed=False)
    trained = train(train_config, runtime.device, runtime.compile_backend)
    record = {
        "compile": compile_metrics(),
        "cache_counters": cache_counters(),
        "loss_drop_fraction": trained["loss_drop_fraction"],
    }
    runtime.shutdown()
    if output:
        Path(output).write_text(json.dumps(record))
    return 0
