"""The synth summary's cost: the total first ($/h, $/day), then each part with its source; unknown
parts are left out of the total, saying so; a given price (prop or ``-c hourlyPrice=``) wins."""

from __future__ import annotations

import re
from typing import Any

import aws_cdk as cdk
import pytest

from cdk_trn.catalog import INSTANCE_PRICES, instance_price
from cdk_trn.errors import CdkTrnError
from cdk_trn.summary import cost_estimate, format_cluster_summary
from stacks import build_default_app
from stacks.config import AppConfig
from tests.support.stacks import cluster_stack


def _summary(context: dict[str, str] | None = None) -> str:
    app = cdk.App(context=context or {})
    return _summary_of(build_default_app(app))


def _summary_of(default: Any) -> str:
    return format_cluster_summary(
        default.cluster,
        default.storage_stack.file_system,
        scheduler=default.cluster_stack.scheduler,
        vault=default.vault_stack.vault if default.vault_stack else None,
    )


@pytest.fixture(scope="module")
def default_summary(default_app) -> str:
    return _summary_of(default_app.default)


def test_the_total_comes_first_per_hour_and_per_day(default_summary):
    first = default_summary.splitlines()[0]
    match = re.match(r"cdk-trn estimated cost: \$(\d+\.\d\d)/h, \$(\d+\.\d\d)/day", first)
    assert match, first
    per_hour, per_day = (float(x) for x in match.groups())
    # 2 x trn2.48xlarge at the labelled us-east-1 figure, the m7i.xlarge controller and vault host.
    assert per_hour == pytest.approx(2 * 35.76 + 2 * 0.2016, abs=0.01)
    assert per_day == pytest.approx(per_hour * 24, abs=0.24)  # both rounded to the cent


def test_each_part_is_an_estimate_with_its_source(default_summary):
    lines = default_summary.splitlines()
    nodes = next(line for line in lines if "nodes (2 x trn2.48xlarge)" in line)
    assert "$71.52/h" in nodes
    assert "estimate, us-east-1 price (no figure for us-east-2)" in nodes
    assert "third-party report" in nodes and "2026-04" in nodes
    controller = next(line for line in lines if "Slurm controller (1 x m7i.xlarge)" in line)
    assert "$0.20/h" in controller and "estimate" in controller and "c3x.dev" in controller
    assert any("enclave vault hosts (1 x m7i.xlarge)" in line for line in lines)


def test_a_part_without_a_sourced_price_is_unknown_and_left_out(default_summary):
    # The default file system is PERSISTENT_2 at 500 MB/s/TiB: no sourced figure.
    fsx = next(line for line in default_summary.splitlines() if "FSx for Lustre (" in line)
    assert "unknown" in fsx
    first = default_summary.splitlines()[0]
    assert "without FSx for Lustre (4800 GiB at 500 MB/s/TiB): unknown price" in first
    assert "left out of the total" in first


def test_hourly_price_context_changes_the_total():
    summary = _summary({"hourlyPrice": "10"})
    first = summary.splitlines()[0]
    assert first.startswith(f"cdk-trn estimated cost: ${20 + 2 * 0.2016:.2f}/h")
    nodes = next(line for line in summary.splitlines() if "nodes (2 x" in line)
    assert "$20.00/h" in nodes and "given price (hourly_price)" in nodes
    assert "estimate" not in nodes


@pytest.mark.parametrize("value", ["abc", "0", "-3", "nan", "1e9"])
def test_a_bad_hourly_price_context_is_refused(value):
    app = cdk.App(context={"hourlyPrice": value})
    with pytest.raises(CdkTrnError, match=r"hourlyPrice must be .*US dollars"):
        AppConfig.from_context(app.node)


def test_a_bad_hourly_price_prop_names_the_construct():
    with pytest.raises(CdkTrnError, match=r"Test/Cluster: hourly_price must be .* got True"):
        cluster_stack(hourly_price=True)
    with pytest.raises(CdkTrnError, match=r"Test/Cluster: hourly_price must be a price above 0"):
        cluster_stack(hourly_price=0.0)


def test_the_prop_sets_the_node_price():
    _, cluster = cluster_stack(hourly_price=12.5)
    assert cluster.hourly_price == 12.5
    estimate = cost_estimate(cluster)
    assert estimate.usd_per_hour == 25.0
    assert estimate.unknown == ()


def test_a_capacity_block_type_without_a_figure_is_unknown_and_says_how_to_give_it():
    _, cluster = cluster_stack("trn2u.48xlarge")
    estimate = cost_estimate(cluster)
    assert estimate.usd_per_hour == 0
    (part,) = estimate.unknown
    assert "ultraserver-block: give hourly_price / -c hourlyPrice=" in part.source
    assert "unknown price, left out of the total" in estimate.headline()


def test_every_catalog_price_names_its_source_and_date():
    for instance_type, prices in INSTANCE_PRICES.items():
        for region, price in prices.items():
            assert price.region == region and price.unit == "hour", instance_type
            assert price.source and price.date and price.usd > 0
    # Another region falls back to the us-east-1 figure, which says so when labelled.
    fallback = instance_price("trn2.48xlarge", "us-east-2")
    assert fallback is not None and "no figure for us-east-2" in fallback.label("us-east-2")
    assert instance_price("trn1n.32xlarge", "us-east-1") is None


def test_the_cluster_stack_outputs_the_node_price_for_cdk_trn_cost():
    from aws_cdk.assertions import Template

    from cdk_trn_runtime.contract import OUTPUT_NODE_HOURLY_PRICE

    app = cdk.App(context={"hourlyPrice": "12.5", "enclaveVault": "false", "acceptance": "false"})
    default = build_default_app(app)
    outputs = Template.from_stack(default.cluster_stack).to_json()["Outputs"]
    assert outputs[OUTPUT_NODE_HOURLY_PRICE]["Value"] == "12.5"
    assert "given price (hourly_price)" in outputs[OUTPUT_NODE_HOURLY_PRICE]["Description"]
