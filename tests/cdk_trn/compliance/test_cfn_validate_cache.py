"""aws-cdk-lib's CloudFormation Validate run by the kit, cached by template content: the report
is the built-in plugin's, and a template that did not change is not validated again."""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk
import pytest

from cdk_trn.compliance import enable_compliance, findings_of
from cdk_trn.compliance.cfn_lint_runner import CACHE_ENV
from cdk_trn.compliance.gate import _state, _synthesize
from cdk_trn.compliance.packs import CLOUDFORMATION_VALIDATE


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("CDK_VALIDATION", raising=False)
    return tmp_path / "xdg" / "cdk-trn" / "cloudformation-validate"


def build(app: cdk.App, second_bogus: str = "x") -> None:
    """Two stacks with the same unexpected property (merged into one violation by the plugin)
    and an unused parameter in the second."""
    for name, bogus in (("One", "x"), ("Two", second_bogus)):
        stack = cdk.Stack(app, name, env=cdk.Environment(region="us-east-2"))
        cdk.CfnResource(
            stack,
            "Topic",
            type="AWS::SNS::Topic",
            properties={"TopicName": f"t-{bogus}", "Bogus": "x"},
        )
    cdk.CfnParameter(cdk.Stack.of(app.node.find_child("Two")), "Unused", type="String")


def synth(outdir: Path, *, cached: bool, second_bogus: str = "x") -> tuple[dict, cdk.App]:
    if cached:
        app = cdk.App(outdir=str(outdir), builtin_cloud_formation_validation=False)
        enable_compliance(app, ["AwsSolutions"], cache_cloudformation_validate=True)
    else:
        app = cdk.App(outdir=str(outdir))
        enable_compliance(app, ["AwsSolutions"])
    build(app, second_bogus)
    _synthesize(app, fresh=True)
    report = json.loads((outdir / "validation-report.json").read_text())
    [cfn_validate] = [
        r for r in report["pluginReports"] if r["pluginName"] == "CloudFormation Validate"
    ]
    return cfn_validate, app


def test_cached_report_is_the_builtin_one_and_unchanged_templates_are_not_validated(tmp_path):
    builtin, _ = synth(tmp_path / "builtin", cached=False)
    assert len(builtin["violations"]) >= 2
    assert any(len(v["violatingConstructs"]) == 2 for v in builtin["violations"])

    cold, app = synth(tmp_path / "cold", cached=True)
    assert _state(app).validate.validated == ["One", "Two"]
    assert cold == builtin

    warm, app = synth(tmp_path / "warm", cached=True)
    assert _state(app).validate.validated == []
    assert warm == builtin

    _, app = synth(tmp_path / "changed", cached=True, second_bogus="y")
    assert _state(app).validate.validated == ["Two"]


def test_findings_of_sees_the_cached_plugin_as_cloudformation_validate(tmp_path):
    app = cdk.App(outdir=str(tmp_path), builtin_cloud_formation_validation=False)
    enable_compliance(app, ["AwsSolutions"], cache_cloudformation_validate=True)
    build(app)
    found = findings_of(app.node.find_child("Two"), packs=[CLOUDFORMATION_VALIDATE])
    assert found and {f.pack for f in found} == {CLOUDFORMATION_VALIDATE}
