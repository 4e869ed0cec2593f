"""enable_compliance / synth_checked / findings_of: the synth fails on open findings, and the
report carries findings per pack and acknowledgments with their reasons."""

from __future__ import annotations

import aws_cdk as cdk
import pytest

from cdk_trn.compliance import (
    DEFAULT_PACKS,
    ComplianceError,
    Pack,
    enable_compliance,
    findings_of,
    synth_checked,
)
from cdk_trn.errors import CdkTrnError
from tests.cdk_trn.compliance.sample_app import EFA_REASON, add_open_ssh

FIVE_PACKS = ["AwsSolutions", "NIST.800.53.R5", "HIPAA.Security", "PCI.DSS.321", "TrainiumChecks"]


def test_synth_with_ssh_open_to_the_world_exits_non_zero(broken):
    assert broken.returncode == 1, broken.stderr[-2000:]


def test_failed_synth_names_the_rule_the_pack_and_the_resource(broken):
    assert "AwsSolutions-EC23 [AwsSolutions] at Clean/OpenSsh" in broken.stderr


def test_failed_synth_lists_every_open_finding_of_the_resource(broken):
    assert "NIST.800.53.R5-EC2RestrictedSSH [NIST.800.53.R5] at Clean/OpenSsh" in broken.stderr


def test_clean_synth_has_no_open_finding_in_any_of_the_five_packs(clean):
    assert list(clean.report.packs[:5]) == FIVE_PACKS
    assert clean.report.unacknowledged == []


def test_acknowledgments_are_reported_with_reason_and_place(clean):
    acknowledged = {(f.rule_id, f.path, f.reason) for f in clean.report.acknowledged}
    assert acknowledged == {
        (f"{pack}-EC2RestrictedCommonPorts", "Clean/EfaSelfIn", EFA_REASON)
        for pack in ("NIST.800.53.R5", "HIPAA.Security", "PCI.DSS.321")
    }


def test_summary_counts_findings_per_pack_and_quotes_each_reason(clean):
    summary = clean.report.format_summary()
    assert (
        summary.splitlines()[0] == "Compliance: 5 packs, 0 unacknowledged findings, 3 acknowledged"
    )
    assert "  HIPAA.Security  0 errors, 0 warnings, 1 acknowledged" in summary
    assert f"at Clean/EfaSelfIn (1 resource): {EFA_REASON}" in summary


def test_findings_of_a_stack_are_structured_records(clean):
    findings = findings_of(clean.stack)
    assert findings and all(f.acknowledged and f.reason == EFA_REASON for f in findings)
    assert {f.pack for f in findings} == {"NIST.800.53.R5", "HIPAA.Security", "PCI.DSS.321"}


def test_findings_of_filters_by_pack(clean):
    assert findings_of(clean.stack, packs=[Pack.AWS_SOLUTIONS]) == []


def test_synth_checked_raises_compliance_error_with_the_report():
    app = cdk.App()
    assert enable_compliance(app, packs=["AwsSolutions"]) == (Pack.AWS_SOLUTIONS,)
    add_open_ssh(cdk.Stack(app, "Ssh"))
    with pytest.raises(
        ComplianceError, match=r"AwsSolutions-EC23 \[AwsSolutions\] at Ssh/OpenSsh"
    ) as raised:
        synth_checked(app)
    assert "AwsSolutions-EC23" in {f.rule_id for f in raised.value.report.blocking()}


def test_enable_compliance_defaults_to_the_five_packs_and_is_idempotent():
    app = cdk.App()
    assert enable_compliance(app) == DEFAULT_PACKS
    assert enable_compliance(app, packs="AwsSolutions,TrainiumChecks") == DEFAULT_PACKS
    assert [p.value for p in DEFAULT_PACKS] == FIVE_PACKS


def test_enable_compliance_rejects_an_unknown_pack_naming_the_allowed_ones():
    with pytest.raises(CdkTrnError, match=r"packs must be names among AwsSolutions, .*got 'CIS'"):
        enable_compliance(cdk.App(), packs=["CIS"])


def test_synth_checked_requires_enable_compliance():
    with pytest.raises(CdkTrnError, match="enable_compliance"):
        synth_checked(cdk.App())


def _default_app_builder():
    from stacks import build_default_app

    return build_default_app


def _default_context():
    import json
    from pathlib import Path

    cdk_json = Path(__file__).resolve().parents[3] / "cdk.json"
    return json.loads(cdk_json.read_text())["context"]


@pytest.mark.slow
def test_default_app_with_ssh_open_to_the_world_fails_naming_rule_and_resource():
    build_default_app = _default_app_builder()
    app = cdk.App(context=_default_context())
    enable_compliance(app)
    default = build_default_app(app)
    group = add_open_ssh(default.cluster_stack)
    with pytest.raises(ComplianceError) as raised:
        synth_checked(app)
    message = str(raised.value)
    assert f"AwsSolutions-EC23 [AwsSolutions] at {group.node.path}" in message
