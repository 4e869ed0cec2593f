"""The compliance kit on apps it has not seen, shaped like public CDK samples (issue 11).

Each numbered defect of the issue is covered by a stack built here: (1) no false pass after
``Template.from_stack``; (2) the command line fails an assembly on which no pack ran; (3) an
acknowledgment that covers nothing (typo, short id, bare IAM5) is reported; (4) cfn-lint ignores
with reasons are listed and CDK's W3005 is handled; (6) summaries go to stderr; (7) TrainiumChecks
say nothing about a t2.micro launch template; (8) the gate and the command line give one verdict;
(9) one line per finding with its acknowledgment id and a short repr. SARIF output is checked too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import aws_cdk as cdk
import pytest
from aws_cdk import assertions
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk_trn.compliance import (
    ComplianceError,
    Finding,
    acknowledge,
    enable_compliance,
    enabled_packs,
    findings_of,
    synth_checked,
)
from cdk_trn.compliance.gate import UNUSED_ACKNOWLEDGMENT
from tests.cdk_trn.compliance.conftest import REPO, run_module

ENV = cdk.Environment(account="111111111111", region="us-east-1")
HANDLER = "def handler(event, context):\n    return {'statusCode': 200}\n"


def api_gateway_lambda(scope: Construct) -> cdk.Stack:
    """The 'API Gateway + Lambda' sample: a REST API proxying to one function."""
    stack = cdk.Stack(scope, "ApiSample", env=ENV)
    function = lambda_.Function(
        stack,
        "Hello",
        runtime=lambda_.Runtime.PYTHON_3_12,
        handler="index.handler",
        code=lambda_.Code.from_inline(HANDLER),
    )
    apigw.LambdaRestApi(stack, "Api", handler=function)
    return stack


def vpc_alb_asg_rds(scope: Construct) -> cdk.Stack:
    """The 'VPC + ALB + ASG + RDS' sample, t2.micro instances from a launch template."""
    stack = cdk.Stack(scope, "WebSample", env=ENV)
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=1)
    template = ec2.LaunchTemplate(
        stack,
        "WebTemplate",
        instance_type=ec2.InstanceType("t2.micro"),
        machine_image=ec2.MachineImage.latest_amazon_linux2023(),
        security_group=ec2.SecurityGroup(stack, "WebSg", vpc=vpc),
    )
    asg = autoscaling.AutoScalingGroup(
        stack, "Web", vpc=vpc, launch_template=template, min_capacity=1, max_capacity=2
    )
    alb = elbv2.ApplicationLoadBalancer(stack, "Alb", vpc=vpc, internet_facing=True)
    alb.add_listener("Http", port=80).add_targets("Web", port=80, targets=[asg])
    rds.DatabaseInstance(
        stack,
        "Db",
        engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_16),
        vpc=vpc,
        instance_type=ec2.InstanceType("t3.micro"),
    )
    return stack


def s3_sns_sqs_lambda(scope: Construct) -> tuple[cdk.Stack, sqs.Queue]:
    """The 'S3 -> SNS -> SQS -> Lambda' fan-out sample."""
    stack = cdk.Stack(scope, "FanOutSample", env=ENV)
    bucket = s3.Bucket(stack, "Uploads")
    topic = sns.Topic(stack, "Uploaded")
    bucket.add_event_notification(s3.EventType.OBJECT_CREATED, s3n.SnsDestination(topic))
    queue = sqs.Queue(stack, "Work")
    topic.add_subscription(subs.SqsSubscription(queue))
    worker = lambda_.Function(
        stack,
        "Worker",
        runtime=lambda_.Runtime.PYTHON_3_12,
        handler="index.handler",
        code=lambda_.Code.from_inline(HANDLER),
    )
    worker.add_event_source(sources.SqsEventSource(queue))
    return stack, queue


def test_findings_after_template_from_stack_are_not_a_false_pass():
    """Defect 1: the stack synthesized by ``Template.from_stack`` first still gets its findings."""
    app = cdk.App()
    stack = api_gateway_lambda(app)
    assertions.Template.from_stack(stack).resource_count_is("AWS::Lambda::Function", 1)
    open_errors = [f for f in findings_of(stack) if not f.acknowledged and f.is_error]
    assert {p.value for p in enabled_packs(app)} >= {"AwsSolutions", "NIST.800.53.R5"}
    rules = {f.rule_id for f in open_errors}
    assert "AwsSolutions-APIG2" in rules  # request validation off on the sample's API
    assert any(r.startswith("NIST.800.53.R5-Lambda") for r in rules)
    # The same findings whatever came before: a second call does not lose any.
    again = [f for f in findings_of(stack) if not f.acknowledged and f.is_error]
    assert {f.rule_id for f in again} == rules


def test_trainium_checks_say_nothing_about_a_t2_micro_launch_template():
    """Defect 7: with CDK's launch-template flag the web tier's t2.micro is no Trainium node."""
    app = cdk.App(
        context={"@aws-cdk/aws-autoscaling:generateLaunchTemplateInsteadOfLaunchConfig": True}
    )
    enable_compliance(app, ["TrainiumChecks", "NIST.800.53.R5"])
    stack = vpc_alb_asg_rds(app)
    assert findings_of(stack, packs=["TrainiumChecks"]) == []
    # The IMDSv2 gap is the regulated pack's to report, once.
    nist = {f.rule_id for f in findings_of(stack, packs=["NIST.800.53.R5"])}
    assert "NIST.800.53.R5-EC2IMDSv2Enabled" in nist


def test_acknowledgments_that_cover_nothing_are_reported():
    """Defect 3: a typo, the short form and a bare IAM5 each come back as an error."""
    app = cdk.App()
    enable_compliance(app, ["AwsSolutions"])
    stack, queue = s3_sns_sqs_lambda(app)
    reason = "the sample's queue is consumed by one function that handles every message"
    acknowledge(queue, "AwsSolutions-SQS33", reason)  # typo of SQS3
    # The short form, without its pack:
    cdk.Validations.of(queue).acknowledge(cdk.Acknowledgment(id="SQS3", reason=reason))
    acknowledge(stack, "AwsSolutions-IAM5", "the function role's wildcard grants")  # bare IAM5
    acknowledge(queue, "AwsSolutions-SQS3", reason)  # right id: used, so not reported
    unused = [f for f in findings_of(stack) if f.pack == UNUSED_ACKNOWLEDGMENT]
    by_rule = {f.rule_id: f for f in unused}
    assert set(by_rule) == {"AwsSolutions-SQS33", "SQS3", "AwsSolutions-IAM5"}
    assert all(f.level == "error" for f in unused)
    assert "has no rule AwsSolutions-SQS33" in by_rule["AwsSolutions-SQS33"].description
    assert "AwsSolutions-SQS3" in by_rule["SQS3"].description
    assert "acknowledge_wildcards" in by_rule["AwsSolutions-IAM5"].description
    with pytest.raises(ComplianceError, match="unused acknowledgment AwsSolutions-SQS33"):
        synth_checked(app)


def test_cdk_lambda_function_has_no_w3005_under_the_kit(tmp_path):
    """Defect 4: CDK's own redundant DependsOn on every Function is dropped once."""
    app = cdk.App(outdir=str(tmp_path))
    enable_compliance(app, ["AwsSolutions"])
    stack, _ = s3_sns_sqs_lambda(app)
    rules = {f.rule_id for f in findings_of(stack, packs=["CloudFormation Validate"])}
    assert "W3005" not in rules
    template = json.loads((tmp_path / "FanOutSample.template.json").read_text())
    worker = next(
        r
        for k, r in template["Resources"].items()
        if k.startswith("Worker") and r["Type"] == "AWS::Lambda::Function"
    )
    # The role is already referenced by GetAtt; its policy dependency stays (it is needed).
    assert [d for d in worker.get("DependsOn", []) if "Policy" not in d] == []


def test_finding_line_and_repr_are_short_and_name_the_id():
    """Defect 9: one line with the id to acknowledge, and a repr pytest can show."""
    finding = Finding(
        "AwsSolutions-SQS3", "AwsSolutions", "error", "S/Work/Resource", "x " * 400, logical_id="W"
    )
    assert "\n" not in finding.line() and len(finding.line()) < 250
    assert finding.line().startswith("error AwsSolutions-SQS3 [AwsSolutions] at S/Work/Resource")
    assert repr(finding) == "Finding(AwsSolutions-SQS3 OPEN error at S/Work/Resource)"


# --- the command line, on assemblies synthesized here ------------------------------------------


@pytest.fixture(scope="module")
def plain_assembly(tmp_path_factory):
    """A plain synth, as ``cdk synth`` of an app that never called enable_compliance."""
    outdir = tmp_path_factory.mktemp("plain") / "cdk.out"
    app = cdk.App(outdir=str(outdir))
    s3_sns_sqs_lambda(app)
    app.synth()
    return outdir


@pytest.fixture(scope="module")
def api_assembly(tmp_path_factory):
    """The API sample with AwsSolutions, judged by the gate (which must fail it)."""
    outdir = tmp_path_factory.mktemp("api") / "cdk.out"
    app = cdk.App(outdir=str(outdir))
    enable_compliance(app, ["AwsSolutions"])
    api_gateway_lambda(app)
    with pytest.raises(ComplianceError) as raised:
        synth_checked(app)
    return outdir, raised.value


def test_cli_fails_an_assembly_on_which_no_pack_ran(plain_assembly):
    """Defect 2: validation-report.json is there (CDK's own plugin) but no pack ran."""
    assert (plain_assembly / "validation-report.json").is_file()
    done = run_module("cdk_trn.compliance", str(plain_assembly))
    assert done.returncode == 1
    assert "no compliance pack ran on this assembly" in done.stdout


def test_cli_lists_cfn_lint_ignores_with_their_reason(plain_assembly):
    reason = "the sample's parameters are documented elsewhere"
    done = run_module(
        "cdk_trn.compliance",
        str(plain_assembly),
        "--packs",
        "TrainiumChecks",
        "--ignore-cfn-lint",
        f"W2001={reason}",
        "--allow-warnings",  # CDK's W3005 on a plain synth, without the kit's aspect
    )
    assert f"silenced cfn-lint W2001 on (every stack)/*: {reason}" in done.stdout
    assert "no compliance pack ran" not in done.stdout  # TrainiumChecks ran on the templates
    assert done.returncode == 0, done.stdout[-3000:]


def test_cli_rejects_an_ignore_without_a_reason(plain_assembly):
    done = run_module("cdk_trn.compliance", str(plain_assembly), "--ignore-cfn-lint", "W2001")
    assert done.returncode == 2
    assert "RULE=REASON" in done.stderr


def test_gate_and_cli_give_one_verdict(api_assembly):
    """Defect 8: the same problems from synth_checked and from the command line."""
    outdir, error = api_assembly
    done = run_module("cdk_trn.compliance", str(outdir), "--format", "json")
    assert done.returncode == 1
    verdict = json.loads(done.stdout)
    assert verdict["passed"] is False
    assert sorted(verdict["problems"]) == sorted(error.evidence.problems)


def test_sarif_has_one_result_per_open_finding(api_assembly):
    outdir, error = api_assembly
    done = run_module("cdk_trn.compliance", str(outdir), "--format", "sarif")
    sarif = json.loads(done.stdout)
    assert sarif["version"] == "2.1.0"
    results = sarif["runs"][0]["results"]
    open_results = [
        r for r in results if "suppressions" not in r and r["ruleId"] != "unused-acknowledgment"
    ]
    assert len(open_results) == len(error.report.unacknowledged) > 0
    assert {r["ruleId"] for r in open_results} == {f.rule_id for f in error.report.unacknowledged}


def test_under_cdk_synth_problems_go_to_stderr_and_stdout_stays_clean(tmp_path):
    """Defect 6 and 9: ``cdk synth > template.yaml`` must not get summaries nor a traceback."""
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import aws_cdk as cdk
            from cdk_trn.compliance import acknowledge, enable_compliance, synth_checked
            from tests.cdk_trn.compliance.test_public_samples import s3_sns_sqs_lambda

            app = cdk.App(outdir={str(tmp_path / "cdk.out")!r})
            enable_compliance(app, ["AwsSolutions"])
            stack, queue = s3_sns_sqs_lambda(app)
            acknowledge(queue, "AwsSolutions-SQS33", "a typo of the dead-letter queue rule")
            synth_checked(app, fail_on_warnings=False)
            """
        )
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "CDK_CLI_VERSION": "2.1000.0",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert "unused acknowledgment AwsSolutions-SQS33" in done.stderr
