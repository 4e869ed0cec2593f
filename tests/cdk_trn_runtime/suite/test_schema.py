"""The summary / rank-result schemas and the stdlib validator."""

import pytest

from cdk_trn_runtime.suite.schema import (
    SCHEMA_VERSION,
    SchemaError,
    validate_rank_result,
    validate_summary,
    validation_errors,
)

from .rank_results import rank_result


def _summary(**changes):
    summary = {
        "schema_version": 1,
        "run_id": "r",
        "world_size": 2,
        "passed": False,
        "failures": [
            {
                "check": "gemm_fraction_of_peak",
                "rank": 1,
                "node": "i-1",
                "measured": 0.2,
                "threshold": 0.5,
                "unit": "fraction of peak",
                "message": "too slow",
            }
        ],
        "figures": {"gemm_bf16_tflops_per_device": 12.5, "graph_compilations_after_warmup": 0},
    }
    summary.update(changes)
    return summary


def test_schema_version_is_1():
    assert SCHEMA_VERSION == 1


def test_contract_summary_is_valid():
    validate_summary(_summary())


def test_summary_without_figures_names_the_missing_key():
    summary = _summary()
    del summary["figures"]
    with pytest.raises(SchemaError, match="missing required key 'figures'"):
        validate_summary(summary)


def test_summary_with_other_schema_version_is_rejected():
    with pytest.raises(SchemaError, match="schema_version"):
        validate_summary(_summary(schema_version=2))


def test_summary_figure_that_is_not_a_number_is_rejected():
    with pytest.raises(SchemaError, match=r"figures\.x: expected number"):
        validate_summary(_summary(figures={"x": "fast"}))


def test_boolean_is_not_a_number_in_figures():
    with pytest.raises(SchemaError, match=r"figures\.x"):
        validate_summary(_summary(figures={"x": True}))


def test_nan_is_not_a_valid_figure():
    with pytest.raises(SchemaError, match=r"figures\.x"):
        validate_summary(_summary(figures={"x": float("nan")}))


def test_failure_without_node_is_rejected():
    failure = dict(_summary()["failures"][0])
    del failure["node"]
    with pytest.raises(SchemaError, match=r"failures\[0\]: missing required key 'node'"):
        validate_summary(_summary(failures=[failure]))


def test_world_size_must_be_at_least_one():
    assert validation_errors(
        _summary(world_size=0),
        {"type": "object", "properties": {"world_size": {"type": "integer", "minimum": 1}}},
    )


def test_hand_written_rank_result_is_valid():
    validate_rank_result(rank_result())


def test_rank_result_with_unknown_collective_is_rejected():
    result = rank_result()
    result["collectives"][0]["op"] = "broadcast"
    with pytest.raises(SchemaError, match=r"collectives\[0\]\.op"):
        validate_rank_result(result)
