"""The device checks of one rank: discovery, BF16 GEMM, device copy bandwidth, collectives.

Each check takes the initialized ``device.Runtime`` and returns plain data for the rank result.
Timing: the first iteration (which may compile or allocate) is not timed; the timed iterations
are dispatched back to back and the clock stops after the device finished all of them, so
dispatch overlaps execution as it does in training.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import platform as host_platform
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import formulas
from .device import Runtime
from .thresholds import Thresholds

PACKAGES = (
    "torch",
    "torch-neuronx",
    "neuronx-cc",
    "nki",
    "torchtitan",
)
ENVIRONMENT = (
    "CDK_TRN_DEVICE",
    "NEURON_RT_VISIBLE_CORES",
    "NEURON_LOGICAL_NC_CONFIG",
    "NEURON_RT_ROOT_COMM_ID",
    "NEURON_COMPILE_CACHE_URL",
    "NEURON_CC_FLAGS",
    "FI_PROVIDER",
    "FI_EFA_USE_DEVICE_RDMA",
    "TORCHINDUCTOR_CACHE_DIR",
)
#: Set by the bundled image (its Dockerfile's ENV): the Neuron SDK release it is built on.
NEURON_RELEASE_VARIABLE = "CDK_TRN_NEURON_RELEASE"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def slurm_version() -> str | None:
    """``slurmd -V`` as ``23.11.4`` (None where Slurm is not installed)."""
    slurmd = shutil.which("slurmd")
    if not slurmd:
        return None
    try:
        done = subprocess.run(  # noqa: S603  (a fixed argument list)
            [slurmd, "-V"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = done.stdout.split()
    return words[-1] if done.returncode == 0 and words else None


def versions() -> dict[str, str]:
    """torch, torch-neuronx (and the rest of PACKAGES), the Neuron release and Slurm, as found."""
    found = {p: v for p in PACKAGES if (v := _version(p)) is not None}
    if os.environ.get(NEURON_RELEASE_VARIABLE):
        found["neuron-sdk"] = os.environ[NEURON_RELEASE_VARIABLE]
    if slurm := slurm_version():
        found["slurm"] = slurm
    found["python"] = host_platform.python_version()
    return found


def discovery(runtime: Runtime) -> dict[str, Any]:
    import torch

    accelerators = torch.accelerator.device_count() if torch.accelerator.is_available() else 0
    return {
        "platform": runtime.platform,
        "device": str(runtime.device),
        "accelerator_devices": accelerators,
        "rank": runtime.info.rank,
        "local_rank": runtime.info.local_rank,
        "world_size": runtime.info.world_size,
        "local_world_size": runtime.info.local_world_size,
        "collective_backend": runtime.collectives.backend,
        "compile_backend": runtime.compile_backend,
        # Neuron devices the driver exposes on the host (each is one Trainium chip).
        "neuron_devices": len(glob.glob("/dev/neuron[0-9]*")),
        "efa_devices": len(glob.glob("/sys/class/infiniband/*")),
        "host_cpus": os.cpu_count(),
        "python": host_platform.python_version(),
        "versions": versions(),
        "environment": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
    }


def _timed(run_once: Callable[[], Any], wait: Callable[[], None], iterations: int) -> float:
    """Seconds per iteration of ``run_once`` after one untimed (warm-up) iteration."""
    run_once()
    wait()
    start = time.perf_counter()
    for _ in range(iterations):
        run_once()
    wait()
    return (time.perf_counter() - start) / iterations


def gemm(
    runtime: Runtime,
    sizes: Sequence[int],
    iterations: int,
    numerics_max_size: int,
    thresholds: Thresholds,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """BF16 square matmuls; numerics against float64 on the host for sizes up to the limit."""
    import torch

    results = []
    for size in sizes:
        generator = torch.Generator().manual_seed(seed + size)
        a_host = torch.randn(size, size, generator=generator).to(torch.bfloat16)
        b_host = torch.randn(size, size, generator=generator).to(torch.bfloat16)
        a = a_host.to(runtime.device)
        b = b_host.to(runtime.device)
        runtime.wait()
        out: dict[str, Any] = {}

        def once(a: Any = a, b: Any = b, out: dict[str, Any] = out) -> None:
            out["c"] = a @ b

        seconds = _timed(once, runtime.wait, iterations)
        achieved = formulas.tflops(formulas.gemm_flops(size, size, size), seconds)
        numerics: dict[str, Any] = {
            "checked": False,
            "rtol": thresholds.gemm_rtol,
            "reference": "float64 on the host",
        }
        if size <= numerics_max_size:
            got = out["c"].cpu().to(torch.float64)
            reference = a_host.to(torch.float64) @ b_host.to(torch.float64)
            error = torch.linalg.matrix_norm(got - reference) / torch.linalg.matrix_norm(reference)
            numerics.update(checked=True, rel_error=float(error), norm="Frobenius")
        results.append(
            {
                "m": size,
                "n": size,
                "k": size,
                "dtype": "bfloat16",
                "iterations": iterations,
                "seconds": seconds,
                "tflops": achieved,
                "fraction_of_peak": (
                    formulas.fraction_of_peak(achieved, thresholds.peak_bf16_tflops)
                    if thresholds.peak_bf16_tflops
                    else None
                ),
                "numerics": numerics,
            }
        )
        del a, b, out
    return results


def hbm_copy(
    runtime: Runtime, buffer_bytes: int, iterations: int, thresholds: Thresholds
) -> dict[str, Any]:
    """Device copy bandwidth: y = x + s reads and writes the buffer once each.

    ``s`` is a device tensor, so no compiler can fold the copy away.
    """
    import torch

    count = max(buffer_bytes // 4, 1)
    x = torch.ones(count, dtype=torch.float32, device=runtime.device)
    s = torch.tensor(1.0, dtype=torch.float32).to(runtime.device)
    runtime.wait()
    out: dict[str, Any] = {}

    def once() -> None:
        out["y"] = x + s

    seconds = _timed(once, runtime.wait, iterations)
    nbytes = count * 4
    achieved = formulas.gbps(formulas.copy_bytes_moved(nbytes), seconds)
    correct = bool(out["y"][:1].cpu().item() == 2.0)
    return {
        "bytes": nbytes,
        "bytes_moved_per_iteration": formulas.copy_bytes_moved(nbytes),
        "iterations": iterations,
        "seconds": seconds,
        "gbps": achieved,
        "fraction_of_peak": (
            formulas.fraction_of_peak(achieved, thresholds.peak_hbm_gbps)
            if thresholds.peak_hbm_gbps
            else None
        ),
        "correct": correct,
    }


def _pattern(count: int, offset: float, device: Any) -> Any:
    """offset + (i mod 13): distinct per rank and per position, exact in float32."""
    import torch

    return torch.arange(count, dtype=torch.float32, device=device).remainder(13.0) + offset


def collectives(runtime: Runtime, sizes: Sequence[int], iterations: int) -> list[dict[str, Any]]:
    """All-reduce and all-gather over all ranks at each size, checked, then timed.

    Sizes follow nccl-tests: the all-reduce buffer, and the gathered (output) all-gather buffer.
    """
    import torch

    comm = runtime.collectives
    n, rank, device = comm.world_size, comm.rank, comm.tensor_device
    results = []
    for size in sizes:
        for op in ("all_reduce", "all_gather"):
            if op == "all_reduce":
                count = max(size // 4, 1)
                x = _pattern(count, float(rank + 1), device)
                expected = _pattern(count, 0.0, device) * n + n * (n + 1) / 2

                def run(x: Any = x) -> Any:
                    return comm.all_reduce_sum(x)

                size_bytes = count * 4
            else:
                per_rank = max(size // (4 * n), 1)
                x = _pattern(per_rank, float(rank + 1), device)
                offsets = torch.arange(1, n + 1, dtype=torch.float32, device=device)
                expected = _pattern(per_rank, 0.0, device).repeat(n) + offsets.repeat_interleave(
                    per_rank
                )

                def run(x: Any = x) -> Any:
                    return comm.all_gather(x)

                size_bytes = per_rank * n * 4
            comm.barrier()
            got = run()
            error = (got - expected).abs().max()
            max_abs_error = float(error.cpu().item())
            comm.barrier()
            seconds = _timed(run, comm.wait, iterations)
            algbw = formulas.algorithm_bandwidth_gbps(size_bytes, seconds)
            busbw = (
                formulas.allreduce_bus_bandwidth_gbps(algbw, n)
                if op == "all_reduce"
                else formulas.allgather_bus_bandwidth_gbps(algbw, n)
            )
            results.append(
                {
                    "op": op,
                    "size_bytes": size_bytes,
                    "world_size": n,
                    "dtype": "float32",
                    "backend": comm.backend,
                    "iterations": iterations,
                    "seconds": seconds,
                    "algbw_gbps": algbw,
                    "busbw_gbps": busbw,
                    "correct": max_abs_error == 0.0,
                    "max_abs_error": max_abs_error,
                }
            )
            del x, expected, got, error
    return results
