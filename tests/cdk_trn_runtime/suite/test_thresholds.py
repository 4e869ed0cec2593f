"""Thresholds as fractions of peaks passed in, and the failures they produce."""

import pytest

from cdk_trn_runtime.suite.thresholds import Thresholds, evaluate

from .rank_results import rank_result

TRN2_CORE = Thresholds(
    peak_bf16_tflops=166.75, peak_hbm_gbps=725.0, peak_collective_busbw_gbps=200.0
)


def test_passing_result_has_no_failures():
    assert evaluate(rank_result(), TRN2_CORE) == []


def test_without_peaks_only_correctness_is_checked():
    slow = rank_result(hbm_copy={"bytes": 1, "seconds": 1.0, "gbps": 0.001})
    assert evaluate(slow, Thresholds()) == []


def test_slow_gemm_fails_with_fraction_rank_and_node():
    result = rank_result(rank=3, node="i-0slow")
    for entry in result["gemm"]:
        entry["tflops"] = 40.0
    [failure] = evaluate(result, TRN2_CORE)
    assert failure["check"] == "gemm_fraction_of_peak"
    assert (failure["rank"], failure["node"]) == (3, "i-0slow")
    assert failure["measured"] == pytest.approx(40.0 / 166.75)
    assert failure["threshold"] == 0.5
    assert "40.0 TFLOPS" in failure["message"]


def test_gemm_fraction_uses_the_best_size():
    result = rank_result()
    result["gemm"][0]["tflops"] = 1.0  # the small size never reaches peak; the large one does
    assert evaluate(result, TRN2_CORE) == []


def test_gemm_error_above_rtol_fails_numerics():
    result = rank_result()
    result["gemm"][0]["numerics"]["rel_error"] = 0.2
    assert [f["check"] for f in evaluate(result, TRN2_CORE)] == ["gemm_numerics"]


def test_slow_device_copy_fails_hbm_fraction():
    result = rank_result(hbm_copy={"bytes": 1, "seconds": 1.0, "gbps": 100.0})
    assert [f["check"] for f in evaluate(result, TRN2_CORE)] == ["hbm_fraction_of_peak"]


def test_wrong_collective_result_fails_correctness():
    result = rank_result()
    result["collectives"][2].update(correct=False, max_abs_error=3.0)
    [failure] = evaluate(result, TRN2_CORE)
    assert failure["check"] == "all_gather_correctness"
    assert failure["measured"] == 3.0


def test_collective_bandwidth_is_judged_at_the_largest_size():
    result = rank_result()
    result["collectives"][1]["busbw_gbps"] = 10.0
    assert [f["check"] for f in evaluate(result, TRN2_CORE)] == ["all_reduce_busbw_fraction"]


def test_collective_bandwidth_is_not_judged_on_one_rank():
    result = rank_result(world_size=1)
    result["collectives"][1]["busbw_gbps"] = 0.0
    assert evaluate(result, TRN2_CORE) == []


def test_flat_loss_fails_training_loss():
    result = rank_result()
    result["training"].update(first_loss=5.0, last_loss=4.9, loss_drop_fraction=0.02)
    assert [f["check"] for f in evaluate(result, TRN2_CORE)] == ["training_loss"]


def test_compilation_after_warmup_fails():
    result = rank_result()
    result["training"]["compilations_after_warmup"] = 2
    [failure] = evaluate(result, TRN2_CORE)
    assert (failure["check"], failure["measured"], failure["threshold"]) == (
        "graph_compilations_after_warmup",
        2.0,
        0.0,
    )


def test_new_compilation_with_warm_cache_fails():
    result = rank_result(compile_cache={"dir": "/fsx/c", "new_compilations_with_warm_cache": 1})
    assert [f["check"] for f in evaluate(result, TRN2_CORE)] == ["new_compilations_with_warm_cache"]


def test_check_that_raised_is_a_failure():
    result = rank_result(errors={"collectives": "RuntimeError: EFA down"})
    [failure] = evaluate(result, TRN2_CORE)
    assert failure["check"] == "collectives"
    assert "EFA down" in failure["message"]


@pytest.mark.parametrize("field", ["min_gemm_fraction", "min_hbm_fraction", "min_loss_drop"])
def test_fraction_above_one_is_rejected(field):
    with pytest.raises(ValueError, match=field):
        Thresholds(**{field: 1.5})


def test_non_positive_peak_is_rejected():
    with pytest.raises(ValueError, match="peak_bf16_tflops"):
        Thresholds(peak_bf16_tflops=0.0)


def test_wrong_device_copy_fails_correctness():
    result = rank_result(hbm_copy={"bytes": 1024, "seconds": 1.0, "gbps": 900.0, "correct": False})
    assert [f["check"] for f in evaluate(result, TRN2_CORE)] == ["hbm_copy_correctness"]
