"""cdk_trn._provider.DeployTimeProvider: the one provider behind the acceptance run and the EIF
build (its use in each is tested with those constructs)."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms

from cdk_trn._provider import DeployTimeProvider
from cdk_trn.errors import CdkTrnError
from tests.cfn import lint_findings


def provider_template(**props):
    app = cdk.App()
    stack = cdk.Stack(app, "P", env=cdk.Environment(account="111111111111", region="us-east-2"))
    provider = DeployTimeProvider(
        stack,
        "Provider",
        purpose="test provider",
        subpackage="acceptance",
        handler_module="cdk_trn_runtime.acceptance.handler",
        on_event_statements=[
            iam.PolicyStatement(actions=["ec2:DescribeInstances"], resources=["*"])
        ],
        is_complete_statements=[],
        encryption_key=kms.Key(stack, "Key"),
        total_timeout=cdk.Duration.minutes(30),
        query_interval=cdk.Duration.seconds(30),
        **props,
    )
    provider.custom_resource(
        stack, "Resource", resource_type="Custom::Test", properties={},
        service_timeout=cdk.Duration.minutes(30),
    )  # fmt: skip
    return app.synth().get_stack_by_name("P").template


def functions(template):
    return [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]


def test_no_function_reserves_concurrency_unless_asked():
    template = provider_template()
    assert len(functions(template)) == 5  # two handlers, three framework functions
    assert all("ReservedConcurrentExecutions" not in f["Properties"] for f in functions(template))


def test_reserved_concurrency_is_an_explicit_opt_in_for_every_function():
    template = provider_template(reserved_concurrency=3)
    assert {f["Properties"].get("ReservedConcurrentExecutions") for f in functions(template)} == {3}


@pytest.mark.parametrize("value", [0, -1, True, 2.5])
def test_invalid_reserved_concurrency_is_refused(value):
    with pytest.raises(CdkTrnError, match="reserved_concurrency"):
        provider_template(reserved_concurrency=value)


def test_handlers_are_python_314_arm64_with_retained_encrypted_logs_and_managed_policies():
    template = provider_template()
    resources = template["Resources"]
    handlers = [f for f in functions(template) if f["Properties"].get("Runtime") == "python3.14"]
    assert len(handlers) == 2
    assert all(f["Properties"]["Architectures"] == ["arm64"] for f in handlers)
    groups = [r for r in resources.values() if r["Type"] == "AWS::Logs::LogGroup"]
    assert len(groups) == 4  # each handler, the framework functions, the waiter
    assert all(g["DeletionPolicy"] == "Retain" and "KmsKeyId" in g["Properties"] for g in groups)
    assert all(g["Properties"]["RetentionInDays"] == 365 for g in groups)
    inline = [k for k, r in resources.items() if r["Type"] == "AWS::IAM::Policy"]
    # Only the waiter state machine's role, which the Provider builds itself, has an inline one.
    assert len(inline) == 1 and "waiterstatemachine" in inline[0]
    managed = [r for r in resources.values() if r["Type"] == "AWS::IAM::ManagedPolicy"]
    assert len(managed) == 4


def test_custom_resource_runs_after_every_policy_and_template_is_lint_clean():
    template = provider_template()
    resources = template["Resources"]
    (resource,) = [r for r in resources.values() if r["Type"] == "Custom::Test"]
    managed = {k for k, r in resources.items() if r["Type"] == "AWS::IAM::ManagedPolicy"}
    assert set(resource["DependsOn"]) == managed
    assert lint_findings(template, "us-east-2") == []


def test_the_function_cloudformation_invokes_asynchronously_has_an_encrypted_dead_letter_queue():
    template = provider_template()
    resources = template["Resources"]
    [(queue_id, queue)] = [(k, r) for k, r in resources.items() if r["Type"] == "AWS::SQS::Queue"]
    assert "KmsMasterKeyId" in queue["Properties"]
    functions = [r for r in resources.values() if r["Type"] == "AWS::Lambda::Function"]
    with_dlq = [f for f in functions if "DeadLetterConfig" in f["Properties"]]
    # The framework's on-event function, the one CloudFormation invokes (asynchronously).
    assert len(with_dlq) == 1
    [dlq_function] = with_dlq
    target = dlq_function["Properties"]["DeadLetterConfig"]["TargetArn"]
    assert target == {"Fn::GetAtt": [queue_id, "Arn"]}
    # Lambda checks sqs:SendMessage when it creates the function: its policy comes first.
    sends = [
        k
        for k, r in resources.items()
        if r["Type"] == "AWS::IAM::ManagedPolicy"
        and any(
            "sqs:SendMessage" in str(s["Action"])
            for s in r["Properties"]["PolicyDocument"]["Statement"]
        )
    ]
    assert len(sends) == 1 and sends[0] in dlq_function["DependsOn"]
