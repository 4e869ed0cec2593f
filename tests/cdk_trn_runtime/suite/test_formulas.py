"""Bandwidth and throughput formulas (nccl-tests definitions for collectives)."""

import math

import pytest

from cdk_trn_runtime.suite import formulas


def test_gemm_flops_counts_one_multiply_and_one_add_per_term():
    assert formulas.gemm_flops(2, 3, 4) == 48


def test_gemm_flops_rejects_an_empty_dimension():
    with pytest.raises(ValueError, match="m=0"):
        formulas.gemm_flops(0, 3, 4)


def test_tflops_of_an_8192_cube_in_one_second():
    assert formulas.tflops(formulas.gemm_flops(8192, 8192, 8192), 1.0) == pytest.approx(
        1.0995, rel=1e-4
    )


def test_gbps_uses_decimal_gigabytes():
    assert formulas.gbps(2e9, 0.5) == 4.0


def test_copy_moves_each_byte_twice():
    assert formulas.copy_bytes_moved(1 << 30) == 2 << 30


@pytest.mark.parametrize(
    ("n", "factor"), [(1, 0.0), (2, 1.0), (4, 1.5), (8, 1.75), (128, 1.984375)]
)
def test_allreduce_bus_bandwidth_is_algbw_times_2_n_minus_1_over_n(n, factor):
    assert formulas.allreduce_bus_bandwidth_gbps(100.0, n) == pytest.approx(100.0 * factor)


@pytest.mark.parametrize(("n", "factor"), [(1, 0.0), (2, 0.5), (4, 0.75), (128, 127 / 128)])
def test_allgather_bus_bandwidth_is_algbw_times_n_minus_1_over_n(n, factor):
    assert formulas.allgather_bus_bandwidth_gbps(100.0, n) == pytest.approx(100.0 * factor)


def test_bus_bandwidth_rejects_zero_ranks():
    with pytest.raises(ValueError, match="ranks"):
        formulas.allreduce_bus_bandwidth_gbps(1.0, 0)


def test_algorithm_bandwidth_is_size_over_time():
    assert formulas.algorithm_bandwidth_gbps(1 << 30, 0.1) == pytest.approx(10.737418, rel=1e-6)


def test_rates_reject_non_positive_time():
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="seconds"):
            formulas.gbps(1, bad)


def test_fraction_of_peak_rejects_a_zero_peak():
    with pytest.raises(ValueError, match="peak"):
        formulas.fraction_of_peak(1.0, 0.0)


def test_tokens_per_second_counts_batch_times_sequence_per_step():
    assert formulas.tokens_per_second(8, 256, 10, 2.0) == 10240.0
