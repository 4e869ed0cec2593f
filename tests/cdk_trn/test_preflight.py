"""The Preflight construct: one Python 3.14 function answering a Custom::TrnPreflight, least
privilege, encrypted logs, no reserved concurrency, compliant and lint-clean."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import assertions

from cdk_trn.capacity import Capacity
from cdk_trn.compliance import enable_compliance, findings_of, lint_template
from cdk_trn.compliance.gate import UNUSED_ACKNOWLEDGMENT
from cdk_trn.errors import CdkTrnError
from cdk_trn.network import TrainingNetwork
from cdk_trn.preflight import HANDLER_MODULE, Preflight

CR_A = "cr-0123456789abcdef0"
CR_B = "cr-0fedcba9876543210"


def preflight_stack(**props) -> tuple[cdk.Stack, Preflight]:
    app = cdk.App()
    stack = cdk.Stack(app, "Test", env=cdk.Environment(region="us-east-2"))
    network = TrainingNetwork(stack, "Network", availability_zone="use2-az3")
    props.setdefault("network", network)
    props.setdefault("instance_type", "trn2.48xlarge")
    props.setdefault("nodes", 2)
    props.setdefault("capacity", Capacity.on_demand())
    return stack, Preflight(stack, "Preflight", **props)


@pytest.fixture(scope="module")
def on_demand():
    stack, preflight = preflight_stack()
    return stack, preflight, assertions.Template.from_stack(stack)


def test_the_custom_resource_carries_what_the_handler_checks(on_demand):
    _, _, template = on_demand
    template.has_resource_properties(
        "Custom::TrnPreflight",
        {
            "InstanceType": "trn2.48xlarge",
            "AvailabilityZone": "use2-az3",
            "Nodes": "2",
            "VcpusPerNode": "192",
            "Capacity": "on-demand",
            "ReservationIds": [],
            "WaitForCapacityBlock": "false",
            "ServiceTimeout": "600",
        },
    )


def function_of(stack, preflight, template):
    logical = stack.get_logical_id(preflight.function.node.default_child)
    return template.to_json()["Resources"][logical]


def test_only_an_imported_subnet_is_sent_for_its_az_check(on_demand):
    _, _, template = on_demand
    (created,) = template.find_resources("Custom::TrnPreflight").values()
    assert "SubnetId" not in created["Properties"]
    app = cdk.App()
    stack = cdk.Stack(app, "Imported", env=cdk.Environment(region="us-east-2"))
    network = TrainingNetwork.from_attributes(
        stack,
        "Network",
        vpc_id="vpc-0123456789abcdef0",
        subnet_id="subnet-0123456789abcdef0",
        availability_zone="use2-az3",
    )
    Preflight(
        stack,
        "Preflight",
        network=network,
        instance_type="trn2.48xlarge",
        nodes=2,
        capacity=Capacity.on_demand(),
    )
    (imported,) = (
        assertions.Template.from_stack(stack).find_resources("Custom::TrnPreflight").values()
    )
    assert imported["Properties"]["SubnetId"] == "subnet-0123456789abcdef0"


def test_the_function_runs_the_runtime_handler_without_reserved_concurrency(on_demand):
    stack, preflight, template = on_demand
    props = function_of(stack, preflight, template)["Properties"]
    assert props["Runtime"] == "python3.14"
    assert props["Handler"] == "cdk_trn_runtime.deploy_time.driver.handler"
    variables = props["Environment"]["Variables"]
    assert variables["CDK_TRN_HANDLER_MODULE"] == HANDLER_MODULE
    assert HANDLER_MODULE == "cdk_trn_runtime.preflight.handler"
    assert "ReservedConcurrentExecutions" not in props


def test_the_function_runs_in_the_node_subnet_with_the_deploy_time_security_group(on_demand):
    stack, preflight, template = on_demand
    config = function_of(stack, preflight, template)["Properties"]["VpcConfig"]
    assert config["SubnetIds"] == [{"Ref": "NetworkVpcnodesSubnet1SubnetE013D65E"}]
    [group] = config["SecurityGroupIds"]
    assert "CdkTrnDeployTime" in group["Fn::GetAtt"][0]


def test_the_log_group_is_encrypted_and_retained(on_demand):
    _, _, template = on_demand
    template.has_resource(
        "AWS::Logs::LogGroup",
        {
            "Properties": {"KmsKeyId": assertions.Match.any_value()},
            "DeletionPolicy": "Retain",
        },
    )


def test_the_policy_reads_only_offerings_quotas_and_reservations(on_demand):
    stack, preflight, template = on_demand
    policy = template.to_json()["Resources"][
        stack.get_logical_id(preflight.policy.node.default_child)
    ]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    actions = sorted(a for s in statements for a in assertions_list(s["Action"]))
    assert actions == [
        "ec2:AssignPrivateIpAddresses",  # the function's network interfaces in its subnet
        "ec2:CreateNetworkInterface",
        "ec2:DeleteNetworkInterface",
        "ec2:DescribeAvailabilityZones",
        "ec2:DescribeCapacityReservations",
        "ec2:DescribeInstanceTypeOfferings",
        "ec2:DescribeInstances",  # Trn vCPUs already running against the quota
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSubnets",  # the function's subnet; and an imported subnet's AZ
        "ec2:DescribeVpcEndpointServices",  # the endpoint services offered in the AZ
        "ec2:UnassignPrivateIpAddresses",
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "lambda:InvokeFunction",  # itself, to continue a wait in a new invocation
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "servicequotas:GetAWSDefaultServiceQuota",
        "servicequotas:GetServiceQuota",
        "sqs:SendMessage",
    ]
    inline = template.find_resources("AWS::IAM::Policy")
    assert [k for k in inline if k.startswith(("Preflight", "CdkTrnDeployTime"))] == []


def assertions_list(value):
    return value if isinstance(value, list) else [value]


def test_the_resource_waits_for_its_permissions(on_demand):
    stack, preflight, template = on_demand
    (resource_id,) = template.find_resources("Custom::TrnPreflight")
    policy_id = stack.get_logical_id(preflight.policy.node.default_child)
    assert policy_id in template.to_json()["Resources"][resource_id]["DependsOn"]


def test_waiting_for_a_block_lets_the_function_reinvoke_itself_within_the_hour():
    stack, preflight = preflight_stack(
        capacity=Capacity.capacity_block(CR_A), wait_for_capacity_block=True
    )
    template = assertions.Template.from_stack(stack)
    name = function_of(stack, preflight, template)["Properties"]["FunctionName"]
    # By name: the policy the function is created after cannot reference the function itself.
    own_arn = {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                ":lambda:us-east-2:",
                {"Ref": "AWS::AccountId"},
                f":function:{name}",
            ],
        ]
    }
    template.has_resource_properties(
        "AWS::IAM::ManagedPolicy",
        {
            "PolicyDocument": {
                "Statement": assertions.Match.array_with(
                    [
                        assertions.Match.object_like(
                            {
                                "Action": "lambda:InvokeFunction",
                                "Resource": own_arn,
                            }
                        )
                    ]
                )
            }
        },
    )
    template.has_resource_properties(
        "Custom::TrnPreflight",
        {"ServiceTimeout": "3600", "WaitForCapacityBlock": "true", "ReservationIds": [CR_A]},
    )
    assert function_of(stack, preflight, template)["Properties"]["Timeout"] == 900


def test_ultraserver_reservations_are_all_checked():
    stack, _ = preflight_stack(
        instance_type="trn2u.48xlarge", nodes=8, capacity=Capacity.ultraserver_block([CR_A, CR_B])
    )
    assertions.Template.from_stack(stack).has_resource_properties(
        "Custom::TrnPreflight", {"Capacity": "ultraserver-block", "ReservationIds": [CR_A, CR_B]}
    )


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"instance_type": "p5.48xlarge"}, "instance_type must be one of"),
        ({"nodes": 0}, "nodes must be a positive integer"),
        ({"wait_for_capacity_block": True}, "wait_for_capacity_block must be False unless"),
    ],
)
def test_bad_props_are_refused_at_synth(props, message):
    with pytest.raises(CdkTrnError, match=message):
        preflight_stack(**props)


def test_synthesizes_with_no_open_finding_and_lint_clean():
    stack, preflight = preflight_stack(
        capacity=Capacity.capacity_block(CR_A), wait_for_capacity_block=True
    )
    enable_compliance(stack.node.root)
    findings = findings_of(preflight)
    assert [f for f in findings if not f.acknowledged] == []
    assert [f for f in findings if f.pack == UNUSED_ACKNOWLEDGMENT] == []
    iam5 = [f for f in findings if f.rule_id.startswith("AwsSolutions-IAM5")]
    assert sorted(f.rule_id for f in iam5) == [
        "AwsSolutions-IAM5[Resource::*]",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:us-east-2:<AWS::AccountId>:"
        "network-interface/*]",
    ]
    # In the VPC with a dead-letter queue: only reserved concurrency is acknowledged.
    lambda_rules = {f.rule_id.split("-", 1)[1] for f in findings if "-Lambda" in f.rule_id}
    assert lambda_rules == {"LambdaConcurrency"}
    template = assertions.Template.from_stack(stack).to_json()
    assert lint_template(template, "us-east-2") == []


def test_the_asynchronously_invoked_function_has_an_encrypted_dead_letter_queue(on_demand):
    stack, preflight, template = on_demand
    queue_id = stack.get_logical_id(preflight.dead_letters.node.default_child)
    template.has_resource_properties(
        "AWS::SQS::Queue", {"KmsMasterKeyId": assertions.Match.any_value()}
    )
    assert function_of(stack, preflight, template)["Properties"]["DeadLetterConfig"] == {
        "TargetArn": {"Fn::GetAtt": [queue_id, "Arn"]}
    }
    function = template.to_json()["Resources"][
        stack.get_logical_id(preflight.function.node.default_child)
    ]
    assert stack.get_logical_id(preflight.policy.node.default_child) in function["DependsOn"]
