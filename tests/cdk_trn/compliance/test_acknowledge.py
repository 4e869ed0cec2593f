"""cdk_trn.compliance.acknowledge: qualified rule ids, computed wildcard ids, cfn-lint silences."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3

from cdk_trn.compliance import (
    Pack,
    acknowledge_wildcards,
    drop_implied_depends_on,
    findings_of,
    lint_template,
    silence_cfn_lint,
)
from cdk_trn.compliance.acknowledge import acknowledge, flatten_cfn_reference, qualified_rule_id
from cdk_trn.compliance.cfn_lint_runner import ignored_checks
from cdk_trn.errors import CdkTrnError


@pytest.mark.parametrize(
    ("rule_id", "qualified"),
    [
        ("AwsSolutions-IAM5", "AwsSolutions::AwsSolutions-IAM5"),
        ("AwsSolutions-IAM5[Resource::*]", "AwsSolutions::AwsSolutions-IAM5[Resource::*]"),
        ("NIST.800.53.R5-IAMNoInlinePolicy", "NIST.800.53.R5::NIST.800.53.R5-IAMNoInlinePolicy"),
        ("HIPAA.Security-EC2IMDSv2Enabled", "HIPAA.Security::HIPAA.Security-EC2IMDSv2Enabled"),
        ("PCI.DSS.321-IAMNoInlinePolicy", "PCI.DSS.321::PCI.DSS.321-IAMNoInlinePolicy"),
        ("TRN3", "TrainiumChecks::TrainiumChecks-TRN3"),
        ("TrainiumChecks-TRN3", "TrainiumChecks::TrainiumChecks-TRN3"),
        ("W2508", "CloudFormation-Validate::W2508"),
        ("AwsSolutions::AwsSolutions-S1", "AwsSolutions::AwsSolutions-S1"),
        ("@aws-cdk/aws-ec2:someWarning", "@aws-cdk/aws-ec2:someWarning"),
    ],
)
def test_rule_id_is_qualified_with_its_pack_namespace(rule_id, qualified):
    assert qualified_rule_id(rule_id) == qualified


def test_acknowledgment_is_recorded_under_the_qualified_id():
    stack = cdk.Stack(cdk.App(), "S")
    reason = "the reason this finding does not apply here"
    acknowledge(stack, "AwsSolutions-IAM4", reason)
    [entry] = [m for m in stack.node.metadata if m.type == "aws:cdk:acknowledged-rules"]
    assert entry.data == {"AwsSolutions::AwsSolutions-IAM4": reason}


def test_acknowledgment_without_a_specific_reason_is_rejected():
    with pytest.raises(CdkTrnError, match="reason .*AwsSolutions-IAM4.* at least 20 characters"):
        acknowledge(cdk.Stack(cdk.App(), "S"), "AwsSolutions-IAM4", "n/a")


def test_wildcard_ids_are_flattened_as_cdk_nag_flattens_them():
    assert (
        flatten_cfn_reference({"Fn::Join": ["", [{"Fn::GetAtt": ["B", "Arn"]}, "/p/*"]]})
        == "<B.Arn>/p/*"
    )
    assert flatten_cfn_reference({"Fn::Sub": "arn:${AWS::Partition}:s3:::x/*"}) == (
        "arn:<AWS::Partition>:s3:::x/*"
    )
    assert flatten_cfn_reference({"Fn::ImportValue": "Storage:Arn"}) == "Storage:Arn"


def _policy_stack(*, covered_actions=(), covered_resources=lambda bucket: ()):
    """A bucket and one managed policy with three wildcards: an action, '*' and bucket/*."""
    app = cdk.App()
    stack = cdk.Stack(app, "S", env=cdk.Environment(account="111111111111", region="us-east-2"))
    bucket = s3.Bucket(stack, "Data")
    policy = iam.ManagedPolicy(
        stack,
        "Policy",
        statements=[
            iam.PolicyStatement(actions=["kms:GenerateDataKey*"], resources=["*"]),
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[bucket.arn_for_objects("*")]),
        ],
    )
    acknowledge_wildcards(
        policy,
        "a reason specific enough for a reviewer to check",
        actions=covered_actions,
        resources=covered_resources(bucket),
    )
    return stack


def _iam5(stack):
    return {
        f.rule_id: f.acknowledged
        for f in findings_of(stack, packs=[Pack.AWS_SOLUTIONS])
        if f.rule_id.startswith("AwsSolutions-IAM5")
    }


def test_acknowledge_wildcards_covers_exactly_the_listed_wildcards_with_computed_ids():
    stack = _policy_stack(
        covered_actions=["kms:GenerateDataKey*"],
        covered_resources=lambda bucket: ["*", bucket.arn_for_objects("*")],
    )
    bucket_id = stack.get_logical_id(stack.node.find_child("Data").node.default_child)
    assert _iam5(stack) == {
        "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]": True,
        "AwsSolutions-IAM5[Resource::*]": True,
        f"AwsSolutions-IAM5[Resource::<{stack.resolve(bucket_id)}.Arn>/*]": True,
    }


def test_a_wildcard_the_acknowledgment_does_not_list_stays_open():
    stack = _policy_stack(covered_resources=lambda bucket: ["*", bucket.arn_for_objects("*")])
    assert _iam5(stack)["AwsSolutions-IAM5[Action::kms:GenerateDataKey*]"] is False


def test_a_listed_wildcard_no_policy_has_fails_the_synth():
    stack = _policy_stack(
        covered_actions=["kms:GenerateDataKey*", "s3:Get*"],
        covered_resources=lambda bucket: ["*", bucket.arn_for_objects("*")],
    )
    with pytest.raises(RuntimeError, match=r"lists wildcards no policy under it has: .*s3:Get\*"):
        findings_of(stack, packs=[Pack.AWS_SOLUTIONS])


def test_acknowledge_wildcards_needs_a_list():
    stack = cdk.Stack(cdk.App(), "S")
    with pytest.raises(CdkTrnError, match="wildcard actions and/or resources"):
        acknowledge_wildcards(stack, "a reason specific enough for a reviewer to check")


def _redundant_depends_on(app):
    """A queue that references a topic and also DependsOn it: cfn-lint W3005."""
    stack = cdk.Stack(app, "S")
    topic = cdk.CfnResource(stack, "Topic", type="AWS::SNS::Topic")
    queue = cdk.CfnResource(
        stack,
        "Queue",
        type="AWS::SQS::Queue",
        properties={"QueueName": topic.get_att("TopicName")},
    )
    queue.add_dependency(topic)
    return queue


def test_silence_cfn_lint_writes_the_ignore_and_its_reason_and_cfn_lint_honours_it():
    plain, silenced = cdk.App(), cdk.App()
    _redundant_depends_on(plain)
    queue = _redundant_depends_on(silenced)
    silence_cfn_lint(queue, "W3005", "first reason, long enough to be specific")
    silence_cfn_lint(queue, "W1020", "second reason, long enough to be specific")
    before = plain.synth().get_stack_by_name("S").template
    after = silenced.synth().get_stack_by_name("S").template
    assert [i.rule_id for i in lint_template(before, "us-east-2")] == ["W3005"]
    assert lint_template(after, "us-east-2") == []
    metadata = after["Resources"]["Queue"]["Metadata"]
    assert metadata["cfn-lint"] == {"config": {"ignore_checks": ["W3005", "W1020"]}}
    assert ignored_checks(after) == [
        ("Queue", "W3005", "first reason, long enough to be specific"),
        ("Queue", "W1020", "second reason, long enough to be specific"),
    ]


def test_implied_depends_on_is_dropped_and_a_needed_one_kept():
    app = cdk.App()
    queue = _redundant_depends_on(app)
    stack = cdk.Stack.of(queue)
    other = cdk.CfnResource(stack, "Other", type="AWS::SNS::Topic")
    queue.add_dependency(other)
    drop_implied_depends_on(queue)
    drop_implied_depends_on(stack)  # once per stack: a second call adds nothing
    template = app.synth().get_stack_by_name("S").template
    assert template["Resources"]["Queue"]["DependsOn"] == ["Other"]
    assert lint_template(template, "us-east-2") == []


def test_silence_cfn_lint_rejects_an_unknown_rule_id_and_a_vague_reason():
    topic = cdk.CfnResource(cdk.Stack(cdk.App(), "S"), "Topic", type="AWS::SNS::Topic")
    with pytest.raises(CdkTrnError, match="cfn-lint error or warning id"):
        silence_cfn_lint(topic, "AwsSolutions-S1", "a reason specific enough to be checked")
    with pytest.raises(CdkTrnError, match="at least 20 characters"):
        silence_cfn_lint(topic, "W3005", "because")
