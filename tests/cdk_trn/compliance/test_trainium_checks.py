"""TrainiumChecks as a cdk-nag v3 pack inside a real synthesis (one synth for the module)."""

from __future__ import annotations

import aws_cdk as cdk
import pytest

from cdk_trn.compliance import Pack, TrainiumChecks, acknowledge, findings_of
from cdk_trn.compliance.trainium_checks import RULES
from tests.cdk_trn.compliance import templates as t

ACK_REASON = "Test double of a reviewed exception: IMDSv1 kept for a legacy agent in this test"


def add_resources(stack: cdk.Stack, resources: t.Resources) -> dict[str, cdk.CfnResource]:
    return {
        logical_id: cdk.CfnResource(
            stack, logical_id, type=body["Type"], properties=body["Properties"]
        )
        for logical_id, body in resources.items()
    }


@pytest.fixture(scope="module")
def findings():
    app = cdk.App()
    env = cdk.Environment(account="111111111111", region="us-east-2")
    add_resources(cdk.Stack(app, "Good", env=env), t.good_resources())
    bad = t.good_resources()
    for resources, _ in t.bad_resources().values():
        bad.update(resources)
    bad["AckedLt"] = t.launch_template(
        "EfaSg", MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 2}
    )
    constructs = add_resources(cdk.Stack(app, "Bad", env=env), bad)
    acknowledge(constructs["AckedLt"], "TRN3", ACK_REASON)
    elsewhere = cdk.Environment(account="111111111111", region="eu-west-1")
    add_resources(cdk.Stack(app, "BadRegion", env=elsewhere), t.good_resources())
    return findings_of(app, packs=[Pack.TRAINIUM])


def fired(findings, rule_id, path):
    return [f for f in findings if f.rule_id == f"TrainiumChecks-{rule_id}" and f.path == path]


@pytest.mark.parametrize("case", sorted(t.bad_resources()))
def test_pack_reports_the_rule_on_the_non_compliant_resource(findings, case):
    _, logical_id = t.bad_resources()[case]
    rule_id = case.split("-")[0]
    [finding] = fired(findings, rule_id, f"Bad/{logical_id}")
    assert (finding.pack, finding.level, finding.acknowledged) == ("TrainiumChecks", "error", False)


def test_pack_reports_an_instance_type_outside_its_regions(findings):
    assert fired(findings, "TRN10", "BadRegion/NodeLt")


def test_pack_reports_nothing_on_the_compliant_stack(findings):
    assert [f for f in findings if f.path.startswith("Good/")] == []


def test_pack_finding_description_is_the_rule_info(findings):
    [finding] = fired(findings, "TRN3", "Bad/TwoHopLt")
    assert finding.description == next(r.info for r in RULES if r.id == "TRN3")


def test_acknowledged_rule_is_reported_with_its_reason(findings):
    [finding] = fired(findings, "TRN3", "Bad/AckedLt")
    assert finding.acknowledged
    assert (finding.reason, finding.acknowledged_at) == (ACK_REASON, "Bad/AckedLt")


def test_pack_is_a_nag_pack_with_the_rule_ids():
    pack = TrainiumChecks()
    assert pack.name == "TrainiumChecks"
    assert pack.rule_ids == [f"TrainiumChecks-TRN{n}" for n in range(1, 11)]
