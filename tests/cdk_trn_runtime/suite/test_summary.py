"""Rank 0's summary: figures from all ranks, failures, and the printed report."""

from cdk_trn_runtime.suite.schema import validate_summary
from cdk_trn_runtime.suite.summary import build_summary, format_report
from cdk_trn_runtime.suite.thresholds import Thresholds

from .rank_results import rank_result


def _two_ranks():
    fast = rank_result(rank=0, node="i-0")
    slow = rank_result(rank=1, node="i-1")
    slow["gemm"][0]["tflops"] = 50.0
    slow["gemm"][1]["tflops"] = 60.0
    slow["training"]["tokens_per_s"] = 10000.0
    slow["training"]["step_ms"] = 80.0
    return [slow, fast]


def test_summary_validates_against_the_schema():
    validate_summary(build_summary(_two_ranks(), Thresholds(), run_id="r", world_size=2))


def test_gemm_figure_is_the_best_size_of_the_worst_rank():
    summary = build_summary(_two_ranks(), Thresholds(), run_id="r", world_size=2)
    assert summary["figures"]["gemm_bf16_tflops_per_device"] == 60.0


def test_tokens_per_second_add_up_and_step_time_is_the_slowest():
    figures = build_summary(_two_ranks(), Thresholds(), run_id="r", world_size=2)["figures"]
    assert figures["train_tokens_per_s"] == 50000.0
    assert figures["train_step_ms"] == 80.0


def test_contract_figures_are_present():
    figures = build_summary(
        _two_ranks(), Thresholds(peak_bf16_tflops=166.75), run_id="r", world_size=2
    )["figures"]
    for name in (
        "gemm_bf16_tflops_per_device",
        "hbm_copy_gbps",
        "allreduce_busbw_gbps",
        "allgather_busbw_gbps",
        "train_tokens_per_s",
        "train_step_ms",
        "compile_seconds",
        "graph_compilations_after_warmup",
        "new_compilations_with_warm_cache",
    ):
        assert name in figures


def test_failure_on_one_rank_fails_the_run_and_names_the_node():
    summary = build_summary(
        _two_ranks(),
        Thresholds(peak_bf16_tflops=166.75, min_gemm_fraction=0.5),
        run_id="r",
        world_size=2,
    )
    assert summary["passed"] is False
    assert [(f["check"], f["node"]) for f in summary["failures"]] == [
        ("gemm_fraction_of_peak", "i-1")
    ]


def test_missing_rank_is_a_failure():
    summary = build_summary([rank_result(rank=0)], Thresholds(), run_id="r", world_size=2)
    assert summary["passed"] is False
    assert summary["failures"][0]["check"] == "rank_result"
    assert summary["failures"][0]["rank"] == 1


def test_report_names_verdict_and_failure():
    summary = build_summary(
        _two_ranks(), Thresholds(peak_bf16_tflops=166.75), run_id="r", world_size=2
    )
    report = format_report(summary)
    assert report.splitlines()[0] == "trn-acceptance run r: FAILED"
    assert "[gemm_fraction_of_peak] rank 1 on i-1" in report
