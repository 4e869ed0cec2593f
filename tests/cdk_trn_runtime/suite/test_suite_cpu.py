"""The whole suite on the CPU device, as the container runs it (tiny sizes): gloo, inductor."""

import pytest

from cdk_trn_runtime.suite.schema import validate_rank_result, validate_summary

from .conftest import run_suite

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_single_process_run_passes(first_run):
    assert first_run.returncode == 0, first_run.stderr[-3000:]
    assert first_run.summary["passed"] is True


def test_single_process_run_writes_valid_rank_result_and_summary(first_run):
    validate_rank_result(first_run.rank(0))
    validate_summary(first_run.summary)


def test_single_process_collectives_use_the_cpu_backend_through_torch_distributed(first_run):
    result = first_run.rank(0)
    assert result["platform"] == "CPU"
    assert result["discovery"]["collective_backend"] == "gloo"
    assert result["discovery"]["compile_backend"] == "inductor"
    assert {c["op"] for c in result["collectives"]} == {"all_reduce", "all_gather"}
    assert all(c["correct"] for c in result["collectives"])


def test_gemm_numerics_are_within_tolerance_of_float64(first_run):
    entries = first_run.rank(0)["gemm"]
    checked = [e["numerics"] for e in entries if e["numerics"]["checked"]]
    assert checked, "no GEMM size was checked against float64"
    assert all(n["rel_error"] <= n["rtol"] for n in checked)


def test_no_graph_compilations_after_warmup_over_ten_steps(first_run):
    training = first_run.rank(0)["training"]
    assert training["measured_steps"] >= 10
    assert training["compilations_after_warmup"] == 0
    assert first_run.summary["figures"]["graph_compilations_after_warmup"] == 0


def test_training_loss_falls(first_run):
    training = first_run.rank(0)["training"]
    assert training["last_loss"] < training["first_loss"] * 0.95


def test_discovery_reports_the_torch_version_and_the_summary_carries_it(first_run):
    versions = first_run.rank(0)["discovery"]["versions"]
    assert versions["torch"].split(".")[:2] in (["2", "13"], ["2", "14"])
    assert "torch-xla" not in versions
    assert first_run.summary["versions"]["torch"] == versions["torch"]
    [line] = [x for x in first_run.stdout.splitlines() if x.split()[:1] == ["torch"]]
    assert line.split()[-1] == versions["torch"]


def test_warm_pass_fills_an_empty_cache_so_the_run_adds_nothing(first_run):
    cache = first_run.rank(0)["compile_cache"]
    assert cache["warm_pass"]["returncode"] == 0
    assert cache["warm_pass"]["new_entries"] > 0
    assert cache["warm_pass"]["cache_counters"]["fx_graph_cache_misses"] > 0
    assert cache["new_compilations_with_warm_cache"] == 0


def test_the_measured_run_finds_every_graph_in_the_cache(first_run):
    cache = first_run.rank(0)["compile_cache"]
    assert cache["misses"] == 0
    assert cache["hits"] > 0
    assert cache["hit_rate"] == 1.0
    figures = first_run.summary["figures"]
    assert figures["compile_cache_hit_rate"] == 1.0
    assert figures["compile_cache_misses"] == 0


def test_second_run_with_same_cache_compiles_nothing_new(second_run):
    cache = second_run.rank(0)["compile_cache"]
    # Even the warm pass of the second run finds every graph: inductor's FX-graph cache hits.
    assert cache["warm_pass"]["new_entries"] == 0
    assert cache["warm_pass"]["cache_counters"]["fx_graph_cache_misses"] == 0
    assert cache["warm_pass"]["cache_counters"]["fx_graph_cache_hits"] > 0
    assert cache["new_compilations_with_warm_cache"] == 0
    assert cache["cache_counters_in_training"]["fx_graph_cache_misses"] == 0


def test_unreachable_peak_exits_1_and_names_the_check(second_run):
    assert second_run.returncode == 1
    assert second_run.summary["passed"] is False
    assert [f["check"] for f in second_run.summary["failures"]] == ["gemm_fraction_of_peak"]
    assert "FAILED gemm_fraction_of_peak on rank 0 (test-node)" in second_run.stderr


def test_two_ranks_under_torchrun_pass(two_rank_run):
    assert two_rank_run.returncode == 0, two_rank_run.stderr[-3000:]
    assert two_rank_run.summary["world_size"] == 2
    assert two_rank_run.rank(1)["discovery"]["collective_backend"] == "gloo"


def test_two_ranks_train_with_no_recompiles_after_warmup(two_rank_run):
    for rank in (0, 1):
        training = two_rank_run.rank(rank)["training"]
        assert training["compilations_after_warmup"] == 0
        assert training["recompilations_after_warmup"] == 0
    assert two_rank_run.summary["figures"]["graph_compilations_after_warmup"] == 0


def test_two_rank_summary_validates_and_holds_both_ranks(two_rank_run):
    summary = two_rank_run.summary
    validate_summary(summary)
    for rank in (0, 1):
        validate_rank_result(two_rank_run.rank(rank))
    assert summary["figures"]["world_size"] == 2


def test_two_rank_collectives_are_correct_at_every_size(two_rank_run):
    for rank in (0, 1):
        entries = two_rank_run.rank(rank)["collectives"]
        assert len(entries) == 4  # two sizes, two operations
        assert all(e["correct"] and e["world_size"] == 2 for e in entries)


def test_two_rank_bus_bandwidth_follows_the_formulas(two_rank_run):
    for entry in two_rank_run.rank(0)["collectives"]:
        factor = 1.0 if entry["op"] == "all_reduce" else 0.5  # 2(n-1)/n and (n-1)/n at n=2
        assert entry["busbw_gbps"] == pytest.approx(entry["algbw_gbps"] * factor)


def test_rank_that_did_not_warm_the_cache_finds_it_warm(two_rank_run):
    rank1 = two_rank_run.rank(1)["compile_cache"]
    assert rank1["warm_pass"]["ran"] is False
    assert two_rank_run.rank(0)["compile_cache"]["warm_pass"]["ran"] is True
    assert rank1["new_compilations_with_warm_cache"] == 0


def test_run_past_its_deadline_exits_3_and_names_the_stage(torch_available, tmp_path):
    run = run_suite(tmp_path, "deadline", "--deadline-seconds", "1")
    assert run.returncode == 3
    [failure] = run.summary["failures"]
    assert failure["check"] == "deadline"
    assert "did not finish within 1 s" in failure["message"]
    assert "stage" in failure["message"]
