"""Throughput sizing for FSx for Lustre: capacity and per-unit throughput for a target GB/s.

Plain Python, no CDK import, so the summary printer and the benchmarks can use it too.

Facts it builds on (FSx for Lustre user guide, "Performance" and "Persistent 2 deployment type";
API reference ``CreateFileSystemLustreConfiguration.PerUnitStorageThroughput`` and
``StorageCapacity``):

* Aggregate throughput = storage capacity in TiB x per-unit storage throughput in MB/s per TiB.
* PERSISTENT_2 (SSD) per-unit throughput tiers: 125, 250, 500, 1000 MB/s/TiB.
  PERSISTENT_1 (SSD) tiers: 50, 100, 200 MB/s/TiB.
* SSD capacity for persistent file systems: 1200 GiB, 2400 GiB, then increments of 2400 GiB.

Units: GiB and TiB are binary (1 TiB = 1024 GiB); MB/s and GB/s are decimal (1 GB/s = 1000 MB/s),
as in the FSx documentation. Example: 1200 GiB = 1.171875 TiB; at 1000 MB/s/TiB that is
1171.875 MB/s = ~1.17 GB/s.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cdk_trn.errors import CdkTrnError, invalid

GIB_PER_TIB = 1024
MB_PER_GB = 1000

PERSISTENT_2_THROUGHPUT_TIERS: tuple[int, ...] = (125, 250, 500, 1000)
"""PERSISTENT_2 per-unit storage throughput tiers, MB/s per TiB."""

PERSISTENT_1_THROUGHPUT_TIERS: tuple[int, ...] = (50, 100, 200)
"""PERSISTENT_1 (SSD) per-unit storage throughput tiers, MB/s per TiB."""

MIN_CAPACITY_GIB = 1200
CAPACITY_INCREMENT_GIB = 2400


def is_valid_capacity(capacity_gib: int) -> bool:
    """True for 1200, 2400 and every further multiple of 2400 GiB."""
    return capacity_gib == MIN_CAPACITY_GIB or (
        capacity_gib >= CAPACITY_INCREMENT_GIB and capacity_gib % CAPACITY_INCREMENT_GIB == 0
    )


def valid_capacities(min_capacity_gib: int = MIN_CAPACITY_GIB) -> Iterator[int]:
    """Valid capacities in ascending order, starting at the first one >= ``min_capacity_gib``."""
    if min_capacity_gib <= MIN_CAPACITY_GIB:
        yield MIN_CAPACITY_GIB
    capacity = max(
        CAPACITY_INCREMENT_GIB,
        math.ceil(min_capacity_gib / CAPACITY_INCREMENT_GIB) * CAPACITY_INCREMENT_GIB,
    )
    while True:
        yield capacity
        capacity += CAPACITY_INCREMENT_GIB


def aggregate_throughput_mbps(capacity_gib: int, per_unit_throughput: int) -> float:
    """Aggregate baseline throughput in MB/s: capacity (TiB) x per-unit throughput (MB/s/TiB)."""
    return capacity_gib / GIB_PER_TIB * per_unit_throughput


def aggregate_throughput_gbps(capacity_gib: int, per_unit_throughput: int) -> float:
    """Aggregate baseline throughput in GB/s (decimal)."""
    return aggregate_throughput_mbps(capacity_gib, per_unit_throughput) / MB_PER_GB


@dataclass(frozen=True)
class SizingChoice:
    """A file-system size and throughput tier, with the reason it was chosen."""

    capacity_gib: int
    per_unit_throughput: int  # MB/s per TiB
    throughput_gbps: float  # aggregate, decimal GB/s
    rationale: str


def describe_size(capacity_gib: int, per_unit_throughput: int) -> SizingChoice:
    """The :class:`SizingChoice` for an explicitly chosen capacity and tier."""
    gbps = aggregate_throughput_gbps(capacity_gib, per_unit_throughput)
    return SizingChoice(
        capacity_gib=capacity_gib,
        per_unit_throughput=per_unit_throughput,
        throughput_gbps=gbps,
        rationale=(
            f"set explicitly: {capacity_gib} GiB x {per_unit_throughput} MB/s/TiB "
            f"= {gbps:.3f} GB/s aggregate"
        ),
    )


def size_for_throughput(
    target_gbps: float,
    *,
    min_capacity_gib: int = MIN_CAPACITY_GIB,
    tiers: Sequence[int] = PERSISTENT_2_THROUGHPUT_TIERS,
) -> SizingChoice:
    """Choose capacity and per-unit throughput that deliver at least ``target_gbps`` GB/s.

    Rule (and tie-break): take the smallest valid capacity >= ``min_capacity_gib`` that reaches the
    target at the highest tier, then the lowest tier that reaches the target at that capacity. The
    bill is per provisioned GiB at the chosen tier, so fewer GiB at a higher tier beats more GiB at
    a lower tier for the same throughput; capacity needed for the data itself comes in through
    ``min_capacity_gib``, and at that floor the lowest sufficient tier is the cheapest.

    Raises :class:`CdkTrnError` for a target that is not a positive finite number or a
    ``min_capacity_gib`` below 1200.
    """
    if isinstance(target_gbps, bool) or not isinstance(target_gbps, (int, float)):
        raise invalid("target_throughput_gbps", target_gbps, "a positive number of GB/s")
    if not math.isfinite(target_gbps) or target_gbps <= 0:
        raise invalid("target_throughput_gbps", target_gbps, "a positive number of GB/s")
    if isinstance(min_capacity_gib, bool) or not isinstance(min_capacity_gib, int):
        raise invalid("min_capacity_gib", min_capacity_gib, "an integer number of GiB >= 1200")
    if min_capacity_gib < MIN_CAPACITY_GIB:
        raise invalid("min_capacity_gib", min_capacity_gib, "an integer number of GiB >= 1200")
    if not tiers:
        raise CdkTrnError("tiers must name at least one per-unit throughput, got none")
    ordered = sorted(tiers)
    top = ordered[-1]
    target_mbps = target_gbps * MB_PER_GB
    # Smallest capacity reaching the target at the top tier: capacity_gib >= target * 1024 / top.
    needed_gib = max(min_capacity_gib, math.ceil(target_mbps * GIB_PER_TIB / top))
    capacity = next(valid_capacities(needed_gib))
    tier = next(t for t in ordered if aggregate_throughput_mbps(capacity, t) >= target_mbps)
    gbps = aggregate_throughput_gbps(capacity, tier)
    limited_by = (
        "the capacity floor"
        if capacity == next(valid_capacities(min_capacity_gib))
        else "the target at the top tier"
    )
    rationale = (
        f"target {target_gbps:g} GB/s: {capacity} GiB ({capacity / GIB_PER_TIB:.4g} TiB, set by "
        f"{limited_by}) x {tier} MB/s/TiB = {gbps:.3f} GB/s aggregate; smallest valid capacity "
        f"first, then the lowest tier that meets the target"
    )
    return SizingChoice(
        capacity_gib=capacity, per_unit_throughput=tier, throughput_gbps=gbps, rationale=rationale
    )


def throughput_per_node_gbps(choice: SizingChoice, nodes: int) -> float:
    """Fair share of the aggregate throughput per client node when all nodes read at once, GB/s.

    An upper bound: one client is also limited by its own network path to the file system.
    """
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise invalid("nodes", nodes, "a positive integer")
    return choice.throughput_gbps / nodes
