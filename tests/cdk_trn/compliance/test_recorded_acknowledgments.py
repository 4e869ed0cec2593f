"""The acknowledgments the recorder writes at synth: read from the stack artifacts' metadata
(plus the constructs outside stacks), the same as asking every construct through jsii."""

from __future__ import annotations

import json

import aws_cdk as cdk
from aws_cdk import aws_sns as sns

from cdk_trn.compliance import enable_compliance
from cdk_trn.compliance.gate import _synthesize, recorded_acknowledgments
from cdk_trn.compliance.report import PACKS_FILE


def ack(scope, rule: str, reason: str) -> None:
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))


def test_record_from_the_assembly_equals_the_construct_tree(tmp_path):
    app = cdk.App(outdir=str(tmp_path), builtin_cloud_formation_validation=False)
    enable_compliance(app, ["TrainiumChecks"])
    ack(app, "AwsSolutions::AwsSolutions-SNS3", "on the app itself, outside every stack")
    top = cdk.Stack(app, "Top")
    ack(top, "AwsSolutions::AwsSolutions-SNS2", "on a stack")
    topic = sns.Topic(top, "Topic")
    ack(topic, "NIST.800.53.R5::NIST.800.53.R5-SNSEncryptedKMS", "on a resource")
    nested = cdk.NestedStack(top, "Nested")
    ack(sns.Topic(nested, "Inner"), "AwsSolutions::AwsSolutions-SNS3", "in a nested stack")
    stage = cdk.Stage(app, "Stage")
    ack(stage, "AwsSolutions::AwsSolutions-SNS2", "on a stage")
    ack(sns.Topic(cdk.Stack(stage, "Staged"), "T"), "AwsSolutions::AwsSolutions-SNS3", "staged")
    _synthesize(app, fresh=True)

    def rows(found):
        return sorted((a["path"], a["id"], a["reason"]) for a in found)

    walked = rows(recorded_acknowledgments(app))
    assert len(walked) == 6
    assert rows(recorded_acknowledgments(app, tmp_path)) == walked
    assert rows(json.loads((tmp_path / PACKS_FILE).read_text())["acknowledgments"]) == walked
