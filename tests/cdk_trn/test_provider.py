"""cdk_trn._provider: one Lambda function per deploy-time custom resource, in the VPC (its use by
the acceptance run, the EIF build and the preflight is tested with those constructs)."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms

from cdk_trn._provider import DeployTimeProvider
from cdk_trn._resources import allow_cloudwatch_logs
from cdk_trn.errors import CdkTrnError
from cdk_trn.network import TrainingNetwork
from tests.support.cfn import lint_findings

REGION = "us-east-2"


def provider_stack(providers: int = 1, **props):
    app = cdk.App()
    stack = cdk.Stack(app, "P", env=cdk.Environment(account="111111111111", region=REGION))
    network = TrainingNetwork(stack, "Network", availability_zone="use2-az3")
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    allow_cloudwatch_logs(key)
    built = []
    for index in range(providers):
        provider = DeployTimeProvider(
            stack,
            f"Provider{index}",
            purpose="test provider",
            subpackage="acceptance",
            handler_module="cdk_trn_runtime.acceptance.handler",
            statements=[
                iam.PolicyStatement(
                    actions=["autoscaling:DescribeAutoScalingGroups"], resources=["*"]
                )
            ],
            wildcard_reason="autoscaling:DescribeAutoScalingGroups supports no resource-level "
            "permission (test).",
            wildcard_resources=["*"],
            encryption_key=key,
            vpc=network.vpc,
            subnet=network.subnet,
            **{
                "total_timeout": cdk.Duration.minutes(30),
                "query_interval": cdk.Duration.seconds(30),
                **props,
            },
        )
        provider.custom_resource(
            stack, f"Resource{index}", resource_type="Custom::Test", properties={"A": "1"}
        )
        built.append(provider)
    template = app.synth().get_stack_by_name("P").template
    return stack, network, built, template


@pytest.fixture(scope="module")
def single():
    return provider_stack()


def of_type(template, kind):
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


def deploy_time_functions(template):
    """Functions of ours (not aws-cdk-lib's restrict-default-security-group provider)."""
    return {
        k: r
        for k, r in of_type(template, "AWS::Lambda::Function").items()
        if not k.startswith("CustomVpcRestrictDefaultSG")
    }


def logical(stack, construct):
    return stack.get_logical_id(construct.node.default_child)


def test_one_function_per_custom_resource_and_no_state_machine(single):
    stack, _, [provider], template = single
    functions = deploy_time_functions(template)
    # The custom resource's function, and the stack's S3 prefix-list lookup.
    assert set(functions) == {
        logical(stack, provider.function),
        *(k for k in functions if "S3PrefixList" in k),
    }
    assert len(functions) == 2
    assert of_type(template, "AWS::StepFunctions::StateMachine") == {}
    (resource,) = of_type(template, "Custom::Test").values()
    assert resource["Properties"]["ServiceToken"] == {
        "Fn::GetAtt": [logical(stack, provider.function), "Arn"]
    }
    # CloudFormation's backstop: the driver's 30 minutes plus 5 for its own timeout message.
    assert resource["Properties"]["ServiceTimeout"] == "2100"


def test_the_function_runs_in_the_node_subnet_with_https_only_egress(single):
    stack, network, [provider], template = single
    function = of_type(template, "AWS::Lambda::Function")[logical(stack, provider.function)]
    config = function["Properties"]["VpcConfig"]
    assert config["SubnetIds"] == [stack.resolve(network.subnet.subnet_id)]
    [group] = config["SecurityGroupIds"]
    group_id = group["Fn::GetAtt"][0]
    inline = of_type(template, "AWS::EC2::SecurityGroup")[group_id]["Properties"][
        "SecurityGroupEgress"
    ]
    # The prefix list is a deploy-time value, so its rule is a resource of its own.
    egress = [
        *inline,
        *(
            r["Properties"]
            for r in of_type(template, "AWS::EC2::SecurityGroupEgress").values()
            if r["Properties"]["GroupId"] == {"Fn::GetAtt": [group_id, "GroupId"]}
        ),
    ]
    assert [(e["IpProtocol"], e["FromPort"], e["ToPort"]) for e in egress] == [
        ("tcp", 443, 443)
    ] * 2
    assert egress[0]["CidrIp"] == stack.resolve(network.vpc.vpc_cidr_block)
    (lookup,) = of_type(template, "Custom::CdkTrnS3PrefixList")
    assert egress[1]["DestinationPrefixListId"] == {"Fn::GetAtt": [lookup, "PrefixListId"]}


def test_every_invocation_is_asynchronous_so_the_function_has_an_encrypted_dead_letter_queue(
    single,
):
    stack, _, [provider], template = single
    function = of_type(template, "AWS::Lambda::Function")[logical(stack, provider.function)]
    queue = logical(stack, provider.dead_letters)
    assert function["Properties"]["DeadLetterConfig"] == {
        "TargetArn": {"Fn::GetAtt": [queue, "Arn"]}
    }
    assert "KmsMasterKeyId" in of_type(template, "AWS::SQS::Queue")[queue]["Properties"]
    # Lambda checks the queue and network permissions when it creates the function.
    assert logical(stack, provider.policy) in function["DependsOn"]
    (config,) = [
        c["Properties"]
        for c in of_type(template, "AWS::Lambda::EventInvokeConfig").values()
        if c["Properties"]["FunctionName"] == {"Ref": logical(stack, provider.function)}
    ]
    assert config["MaximumRetryAttempts"] == 0 and config["MaximumEventAgeInSeconds"] == 3600


def test_one_managed_policy_holds_everything_and_no_role_has_an_inline_or_aws_managed_one(single):
    stack, network, [provider], template = single
    assert {k for k in of_type(template, "AWS::IAM::Policy") if "Provider" in k} == set()
    role = of_type(template, "AWS::IAM::Role")[logical(stack, provider.role)]["Properties"]
    assert "ManagedPolicyArns" not in role and "Policies" not in role
    policy = of_type(template, "AWS::IAM::ManagedPolicy")[logical(stack, provider.policy)]
    assert policy["Properties"]["Roles"] == [{"Ref": logical(stack, provider.role)}]
    statements = {
        s.get("Sid", s["Action"] if isinstance(s["Action"], str) else s["Action"][0]): s
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
    }
    invoke = statements["ContinueWaitingInANewInvocation"]
    assert invoke["Action"] == "lambda:InvokeFunction"
    function_name = of_type(template, "AWS::Lambda::Function")[logical(stack, provider.function)][
        "Properties"
    ]["FunctionName"]
    assert json.dumps(invoke["Resource"]).endswith(f':function:{function_name}"]]}}')
    assert statements["sqs:SendMessage"]["Resource"] == {
        "Fn::GetAtt": [logical(stack, provider.dead_letters), "Arn"]
    }
    create = statements["CreateNetworkInterfacesInTheSubnet"]
    assert create["Action"] == "ec2:CreateNetworkInterface"
    subnet = json.dumps(stack.resolve(network.subnet.subnet_id))
    assert subnet in json.dumps(create["Resource"]) and "security-group/" in json.dumps(
        create["Resource"]
    )
    manage = statements["ManageTheFunctionsNetworkInterfaces"]
    assert set(manage["Action"]) == {
        "ec2:DeleteNetworkInterface",
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
    }
    # The Lambda developer guide's form for interface ids not known in advance: every interface
    # id, with no condition key Lambda's own permission check might not evaluate.
    assert "Condition" not in manage
    assert json.dumps(manage["Resource"]).endswith(':network-interface/*"]]}')
    describe = statements["DescribeNetworkInterfacesAndSubnets"]
    assert set(describe["Action"]) == {"ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"}
    assert describe["Resource"] == "*"


def test_custom_resources_wait_for_their_policy_and_the_vpc_endpoints(single):
    stack, network, [provider], template = single
    (resource,) = of_type(template, "Custom::Test").values()
    endpoints = {stack.get_logical_id(e.node.default_child) for e in network.endpoints}
    invoke_config = logical(stack, provider.function.node.find_child("EventInvokeConfig"))
    assert set(resource["DependsOn"]) == {
        logical(stack, provider.policy),
        invoke_config,
        *endpoints,
    }


def test_the_stack_is_lint_clean(single):
    assert lint_findings(single[3], REGION) == []


def test_providers_of_one_stack_share_one_placement_and_lookup():
    _, _, providers, template = provider_stack(providers=2)
    assert len(of_type(template, "Custom::CdkTrnS3PrefixList")) == 1
    assert providers[0].security_group is providers[1].security_group
    assert len(deploy_time_functions(template)) == 3


def test_no_function_reserves_concurrency_unless_asked(single):
    template = single[3]
    functions = of_type(template, "AWS::Lambda::Function").values()
    assert all("ReservedConcurrentExecutions" not in f["Properties"] for f in functions)


def test_reserved_concurrency_is_an_explicit_opt_in():
    stack, _, [provider], template = provider_stack(reserved_concurrency=3)
    function = of_type(template, "AWS::Lambda::Function")[logical(stack, provider.function)]
    assert function["Properties"]["ReservedConcurrentExecutions"] == 3


@pytest.mark.parametrize("value", [0, -1, True, 2.5])
def test_invalid_reserved_concurrency_is_refused(value):
    with pytest.raises(CdkTrnError, match="reserved_concurrency"):
        provider_stack(reserved_concurrency=value)


def test_a_total_timeout_beyond_55_minutes_is_refused():
    with pytest.raises(CdkTrnError, match=r"total_timeout must be from 60 to 3300 seconds"):
        provider_stack(total_timeout=cdk.Duration.minutes(56))


def test_a_handler_timeout_shorter_than_a_poll_and_the_handover_is_refused():
    with pytest.raises(CdkTrnError, match=r"handler_timeout must be from query_interval \+ 90"):
        provider_stack(handler_timeout=cdk.Duration.minutes(1))
