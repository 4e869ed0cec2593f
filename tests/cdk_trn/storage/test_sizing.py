"""The throughput sizing helper against the documented FSx for Lustre figures.

Arithmetic used throughout: aggregate MB/s = capacity GiB / 1024 x per-unit MB/s/TiB, and
GB/s = MB/s / 1000 (FSx documents throughput per TiB of storage, in decimal MB/s).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdk_trn.errors import CdkTrnError
from cdk_trn.storage.sizing import (
    PERSISTENT_1_THROUGHPUT_TIERS,
    PERSISTENT_2_THROUGHPUT_TIERS,
    SizingChoice,
    aggregate_throughput_gbps,
    aggregate_throughput_mbps,
    describe_size,
    is_valid_capacity,
    size_for_throughput,
    throughput_per_node_gbps,
    valid_capacities,
)


def test_persistent_2_tiers_are_the_documented_ones():
    assert PERSISTENT_2_THROUGHPUT_TIERS == (125, 250, 500, 1000)


def test_1200_gib_at_1000_mb_per_tib_is_about_1_17_gb_per_s():
    # 1200 GiB = 1.171875 TiB; x 1000 MB/s/TiB = 1171.875 MB/s = 1.171875 GB/s.
    assert aggregate_throughput_mbps(1200, 1000) == pytest.approx(1171.875)
    assert aggregate_throughput_gbps(1200, 1000) == pytest.approx(1.171875)


@pytest.mark.parametrize(
    ("capacity", "tier", "mbps"),
    [
        (1200, 125, 146.484375),  # 1.171875 TiB x 125
        (1200, 250, 292.96875),
        (1200, 500, 585.9375),
        (2400, 125, 292.96875),  # 2.34375 TiB x 125
        (2400, 1000, 2343.75),
        (4800, 500, 2343.75),  # half the tier, twice the capacity: same throughput
        (9600, 250, 2343.75),
        (48000, 1000, 46875.0),  # 46.875 TiB x 1000
    ],
)
def test_aggregate_throughput_is_capacity_in_tib_times_the_tier(capacity, tier, mbps):
    assert aggregate_throughput_mbps(capacity, tier) == pytest.approx(mbps)


@pytest.mark.parametrize(
    ("capacity", "valid"),
    [
        (1000, False),
        (1200, True),
        (1800, False),
        (2400, True),
        (3600, False),
        (4800, True),
        (7200, True),
        (7201, False),
    ],
)
def test_capacity_is_1200_2400_or_a_multiple_of_2400(capacity, valid):
    assert is_valid_capacity(capacity) is valid


def test_valid_capacities_start_at_the_first_valid_one_above_the_floor():
    ladder = valid_capacities(1201)
    assert [next(ladder) for _ in range(3)] == [2400, 4800, 7200]


def test_a_target_within_1200_gib_gets_1200_gib_and_the_lowest_tier_that_meets_it():
    # 0.5 GB/s: 1200 GiB @ 500 = 0.586 GB/s (250 gives only 0.293).
    choice = size_for_throughput(0.5)
    assert (choice.capacity_gib, choice.per_unit_throughput) == (1200, 500)
    assert choice.throughput_gbps == pytest.approx(0.5859375)


def test_a_target_equal_to_1200_gib_at_the_top_tier_fits_exactly():
    choice = size_for_throughput(1.171875)
    assert (choice.capacity_gib, choice.per_unit_throughput) == (1200, 1000)


def test_2_gb_per_s_takes_2400_gib_at_1000_rather_than_more_capacity_at_a_lower_tier():
    # 1200 @ 1000 = 1.17 < 2; 2400 @ 1000 = 2.34 >= 2. 4800 @ 500 would also reach 2.34.
    choice = size_for_throughput(2.0)
    assert (choice.capacity_gib, choice.per_unit_throughput) == (2400, 1000)
    assert choice.throughput_gbps == pytest.approx(2.34375)


def test_12_gb_per_s_takes_14400_gib_at_1000():
    # 12000 MB/s x 1024 / 1000 = 12288 GiB needed at the top tier -> next valid is 14400.
    choice = size_for_throughput(12)
    assert (choice.capacity_gib, choice.per_unit_throughput) == (14400, 1000)
    assert choice.throughput_gbps == pytest.approx(14.0625)


def test_a_capacity_floor_lowers_the_tier_instead_of_raising_capacity():
    # The data needs 9600 GiB; 9600 @ 125 = 1.17 GB/s already meets 1 GB/s.
    choice = size_for_throughput(1.0, min_capacity_gib=9600)
    assert (choice.capacity_gib, choice.per_unit_throughput) == (9600, 125)
    assert "capacity floor" in choice.rationale


def test_a_floor_between_valid_sizes_rounds_up_to_the_next_valid_size():
    choice = size_for_throughput(0.1, min_capacity_gib=3000)
    assert choice.capacity_gib == 4800


def test_persistent_1_tiers_are_used_when_given():
    # 1200 GiB @ 200 MB/s/TiB = 234.375 MB/s.
    choice = size_for_throughput(0.2, tiers=PERSISTENT_1_THROUGHPUT_TIERS)
    assert (choice.capacity_gib, choice.per_unit_throughput) == (1200, 200)


def test_the_rationale_states_capacity_tier_and_result():
    choice = size_for_throughput(2.0)
    assert "2400 GiB" in choice.rationale
    assert "1000 MB/s/TiB" in choice.rationale
    assert "2.344 GB/s" in choice.rationale


def test_an_explicit_size_is_described_with_its_throughput():
    choice = describe_size(2400, 250)
    assert isinstance(choice, SizingChoice)
    assert (choice.capacity_gib, choice.per_unit_throughput) == (2400, 250)
    assert choice.throughput_gbps == pytest.approx(0.5859375)
    assert "explicitly" in choice.rationale


@pytest.mark.parametrize("target", [0, -1, math.nan, math.inf, "2", True, None])
def test_a_target_that_is_not_a_positive_number_is_refused(target):
    with pytest.raises(CdkTrnError, match="target_throughput_gbps must be a positive number"):
        size_for_throughput(target)


def test_a_capacity_floor_below_1200_is_refused():
    with pytest.raises(CdkTrnError, match="min_capacity_gib must be .* >= 1200, got 600"):
        size_for_throughput(1.0, min_capacity_gib=600)


def test_throughput_per_node_is_the_fair_share_of_the_aggregate():
    # 14400 GiB @ 1000 = 14.0625 GB/s shared by 4 nodes = 3.515625 GB/s each.
    choice = size_for_throughput(12)
    assert throughput_per_node_gbps(choice, 4) == pytest.approx(3.515625)


@pytest.mark.parametrize("nodes", [0, -2, 1.5, True])
def test_throughput_per_node_needs_a_positive_node_count(nodes):
    with pytest.raises(CdkTrnError, match="nodes must be a positive integer"):
        throughput_per_node_gbps(size_for_throughput(1), nodes)


@given(
    target=st.floats(min_value=0.01, max_value=500, allow_nan=False),
    floor=st.sampled_from([1200, 2400, 4800, 10000, 48000]),
)
def test_the_choice_meets_the_target_with_the_smallest_capacity_and_lowest_tier(target, floor):
    choice = size_for_throughput(target, min_capacity_gib=floor)
    assert is_valid_capacity(choice.capacity_gib)
    assert choice.capacity_gib >= floor
    assert choice.throughput_gbps >= target
    assert choice.per_unit_throughput in PERSISTENT_2_THROUGHPUT_TIERS
    # No smaller valid capacity at or above the floor reaches the target, even at the top tier.
    smaller = _capacities_between(floor, choice.capacity_gib)
    assert all(aggregate_throughput_gbps(c, 1000) < target for c in smaller)
    # No lower tier reaches it at the chosen capacity.
    lower = [t for t in PERSISTENT_2_THROUGHPUT_TIERS if t < choice.per_unit_throughput]
    assert all(aggregate_throughput_gbps(choice.capacity_gib, t) < target for t in lower)


def _capacities_between(low: int, high: int) -> list[int]:
    out: list[int] = []
    for capacity in valid_capacities(low):
        if capacity >= high:
            return out
        out.append(capacity)
    return out
