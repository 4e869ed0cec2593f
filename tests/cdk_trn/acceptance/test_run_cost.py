"""Tokens per dollar: the acceptance run's cost per million tokens (a stack output beside tokens/s)
when the cluster's price is known, none when it is not; the trainer's ``train: done`` fields."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk.assertions import Template

from cdk_trn.acceptance import AcceptanceRun
from cdk_trn.cluster import TrainiumCluster
from cdk_trn.network import TrainingNetwork
from cdk_trn_runtime.acceptance import common, report
from cdk_trn_runtime.contract import FIGURE_USD_PER_MILLION_TOKENS
from cdk_trn_runtime.cost import throughput_fields
from tests.cdk_trn_runtime.acceptance.handler_doubles import properties


def _summary(tokens_per_s: float) -> dict[str, object]:
    return {"passed": True, "world_size": 4, "figures": {"train_tokens_per_s": tokens_per_s}}


def test_the_handler_derives_the_cost_per_million_tokens_from_the_runs_price():
    props = common.parse_properties(
        properties(
            HourlyPrice="72.0000",
            ExportedFigures=["train_tokens_per_s", FIGURE_USD_PER_MILLION_TOKENS],
        )
    )
    data = report.figures_data(_summary(20_000.0), props, "run-1")
    # 72 $/h for 72M tokens/h: $1 per million tokens.
    assert data[FIGURE_USD_PER_MILLION_TOKENS] == "1"
    assert data["train_tokens_per_s"] == "20000"


def test_without_a_price_there_is_no_cost_figure():
    props = common.parse_properties(properties())
    assert props.hourly_price is None
    assert FIGURE_USD_PER_MILLION_TOKENS not in report.run_figures(_summary(20_000.0), props)


def _run(**cluster_props: object) -> Template:
    app = cdk.App()
    stack = cdk.Stack(app, "Test", env=cdk.Environment(region="us-east-2"))
    network = TrainingNetwork(stack, "Network", availability_zone="use2-az3")
    cluster = TrainiumCluster(stack, "Cluster", network=network, nodes=2, **cluster_props)  # type: ignore[arg-type]
    AcceptanceRun(stack, "Acceptance", cluster=cluster)
    return Template.from_stack(stack)


def test_the_stack_outputs_the_cost_per_million_tokens_beside_tokens_per_second():
    template = _run(hourly_price=10.0)
    (resource,) = template.find_resources("Custom::TrnAcceptanceRun").values()
    assert resource["Properties"]["HourlyPrice"] == "20.0000"  # 2 nodes x $10
    outputs = template.to_json()["Outputs"]
    names = {key for key in outputs if key.startswith("Acceptance")}
    assert any("TrainTokensPerS" in k for k in names)
    (cost,) = [k for k in names if "TrainUsdPerMillionTokens" in k]
    assert outputs[cost]["Value"]["Fn::GetAtt"][1] == FIGURE_USD_PER_MILLION_TOKENS
    assert "USD" in outputs[cost]["Description"]


def test_the_trainer_appends_tokens_per_second_and_tokens_per_dollar():
    env = {"CDK_TRN_HOURLY_PRICE": "36", "SLURM_JOB_NUM_NODES": "2"}
    # 72,000 tokens in 10 s on two nodes at $36 each: 7,200 tokens/s, 360,000 tokens per dollar.
    assert throughput_fields(72_000, 10.0, env) == " tokens_per_s=7200.0 tokens_per_usd=360000"
    assert throughput_fields(72_000, 10.0, {}) == " tokens_per_s=7200.0"
    assert throughput_fields(72_000, 10.0, {"CDK_TRN_HOURLY_PRICE": "x"}) == " tokens_per_s=7200.0"
    assert throughput_fields(0, 0.0, env) == ""
