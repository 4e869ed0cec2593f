"""Throughput and bandwidth formulas, shared by the checks and their tests.

Units: TFLOPS is 10^12 floating-point operations per second; GB/s is 10^9 bytes per second, the
unit of the catalog's ``hbm_gbps_per_chip``. Collective bandwidths follow the definitions of
NVIDIA's nccl-tests (doc/PERFORMANCE.md): the algorithm bandwidth is the buffer size divided by
the time, and the bus bandwidth scales it by the fraction of the data each rank must move over
its links, so it is comparable with a link's peak whatever the number of ranks.
"""

from __future__ import annotations

GIGA = 1e9
TERA = 1e12


def _positive_seconds(seconds: float) -> float:
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return seconds


def gemm_flops(m: int, n: int, k: int) -> int:
    """Floating-point operations of one (m x k) @ (k x n) product: one multiply and one add each."""
    if min(m, n, k) <= 0:
        raise ValueError(f"matrix dimensions must be > 0, got m={m}, n={n}, k={k}")
    return 2 * m * n * k


def tflops(flops: float, seconds: float) -> float:
    """TFLOPS achieved by ``flops`` operations in ``seconds``."""
    return flops / _positive_seconds(seconds) / TERA


def gbps(nbytes: float, seconds: float) -> float:
    """GB/s (10^9 bytes per second) for ``nbytes`` moved in ``seconds``."""
    return nbytes / _positive_seconds(seconds) / GIGA


def copy_bytes_moved(buffer_bytes: int) -> int:
    """Bytes a device copy of ``buffer_bytes`` moves through memory: one read plus one write."""
    return 2 * buffer_bytes


def algorithm_bandwidth_gbps(size_bytes: float, seconds: float) -> float:
    """Algorithm bandwidth of a collective: buffer size over time, in GB/s.

    For all-reduce the size is the buffer every rank holds; for all-gather it is the gathered
    (output) buffer, as in nccl-tests.
    """
    return gbps(size_bytes, seconds)


def _ranks(n: int) -> int:
    if n < 1:
        raise ValueError(f"the number of ranks must be >= 1, got {n}")
    return n


def allreduce_bus_bandwidth_gbps(algbw_gbps: float, n: int) -> float:
    """All-reduce bus bandwidth: algbw x 2(n-1)/n (a reduce-scatter then an all-gather)."""
    n = _ranks(n)
    return algbw_gbps * 2.0 * (n - 1) / n


def allgather_bus_bandwidth_gbps(algbw_gbps: float, n: int) -> float:
    """All-gather bus bandwidth: algbw x (n-1)/n (each rank receives the n-1 chunks it lacks)."""
    n = _ranks(n)
    return algbw_gbps * (n - 1) / n


def fraction_of_peak(measured: float, peak: float) -> float:
    """``measured / peak``; the peak must be positive."""
    if not peak > 0:
        raise ValueError(f"peak must be > 0, got {peak}")
    return measured / peak


def tokens_per_second(batch: int, sequence: int, steps: int, seconds: float) -> float:
    """Training throughput: tokens consumed by ``steps`` steps of ``batch`` x ``sequence``."""
    return batch * sequence * steps / _positive_seconds(seconds)
