"""TrainingNetwork: one AZ, no internet path, endpoints only for this account."""

import json

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match

from cdk_trn.network import (
    INTERFACE_ENDPOINTS,
    TrainingNetwork,
    az_id_prefix,
    custom_resource_response_bucket,
)
from tests.support.cfn import template_of


@pytest.fixture(scope="module")
def network_template():
    app = cdk.App()
    stack = cdk.Stack(app, "Net", env=cdk.Environment(region="us-east-2"))
    TrainingNetwork(stack, "Network", availability_zone="use2-az3")
    return template_of(stack)


def test_nodes_have_no_internet_path(network_template):
    network_template.resource_count_is("AWS::EC2::InternetGateway", 0)
    network_template.resource_count_is("AWS::EC2::NatGateway", 0)
    network_template.has_resource_properties(
        "AWS::EC2::Subnet", {"AvailabilityZoneId": "use2-az3", "MapPublicIpOnLaunch": False}
    )


def test_every_interface_endpoint_serves_only_this_accounts_principals(network_template):
    endpoints = network_template.find_resources(
        "AWS::EC2::VPCEndpoint", {"Properties": {"VpcEndpointType": "Interface"}}
    )
    assert len(endpoints) == len(INTERFACE_ENDPOINTS)
    for endpoint in endpoints.values():
        (statement,) = endpoint["Properties"]["PolicyDocument"]["Statement"]
        assert statement["Condition"] == {
            "StringEquals": {"aws:PrincipalAccount": {"Ref": "AWS::AccountId"}}
        }


def test_s3_endpoint_reaches_this_accounts_buckets_and_reads_named_aws_buckets(network_template):
    network_template.has_resource_properties(
        "AWS::EC2::VPCEndpoint",
        {
            "VpcEndpointType": "Gateway",
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Sid": "ThisAccountsBuckets",
                                "Condition": {
                                    "StringEquals": {
                                        "aws:ResourceAccount": {"Ref": "AWS::AccountId"}
                                    }
                                },
                            }
                        ),
                        Match.object_like(
                            {
                                "Sid": "AwsOwnedBucketsNodesRead",
                                "Action": "s3:GetObject",
                                "Resource": Match.array_with(
                                    [
                                        {
                                            "Fn::Join": [
                                                "",
                                                [
                                                    "arn:",
                                                    {"Ref": "AWS::Partition"},
                                                    ":s3:::al2023-repos-us-east-2-de612dc2/*",
                                                ],
                                            ]
                                        }
                                    ]
                                ),
                            }
                        ),
                    ]
                )
            },
        },
    )


def test_deploy_time_functions_find_the_endpoints_they_call(network_template):
    # Self-invocation (lambda), preflight (ec2, servicequotas), EIF build (codebuild).
    services = [
        endpoint["Properties"]["ServiceName"]
        for endpoint in network_template.find_resources(
            "AWS::EC2::VPCEndpoint", {"Properties": {"VpcEndpointType": "Interface"}}
        ).values()
    ]
    rendered = [json.dumps(service) for service in services]
    for suffix in ("lambda", "ec2", "servicequotas", "codebuild", "ssm", "autoscaling"):
        assert any(f'.{suffix}"' in text for text in rendered), suffix


def test_s3_endpoint_lets_functions_answer_cloudformation_in_this_region(network_template):
    network_template.has_resource_properties(
        "AWS::EC2::VPCEndpoint",
        {
            "VpcEndpointType": "Gateway",
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        {
                            "Sid": "AnswerCloudFormationCustomResources",
                            "Effect": "Allow",
                            "Principal": {"AWS": "*"},
                            "Action": "s3:PutObject",
                            "Resource": {
                                "Fn::Join": [
                                    "",
                                    [
                                        "arn:",
                                        {"Ref": "AWS::Partition"},
                                        ":s3:::cloudformation-custom-resource-response-useast2/*",
                                    ],
                                ]
                            },
                        }
                    ]
                )
            },
        },
    )


def test_the_response_bucket_name_drops_the_dashes_of_the_region():
    assert custom_resource_response_bucket("ap-southeast-4") == (
        "cloudformation-custom-resource-response-apsoutheast4"
    )
    stack = cdk.Stack(cdk.App(), "Agnostic")
    assert stack.resolve(custom_resource_response_bucket(stack.region)) == {
        "Fn::Join": [
            "",
            [
                "cloudformation-custom-resource-response-",
                {"Fn::Join": ["", {"Fn::Split": ["-", {"Ref": "AWS::Region"}]}]},
            ],
        ]
    }


def test_flow_logs_go_to_a_retained_kms_encrypted_group(network_template):
    network_template.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "ALL"})
    network_template.has_resource(
        "AWS::Logs::LogGroup",
        {"Properties": {"KmsKeyId": Match.any_value()}, "DeletionPolicy": "Retain"},
    )


@pytest.mark.parametrize(
    ("region", "prefix"),
    [
        ("us-east-2", "use2"),
        ("ap-southeast-4", "apse4"),
        ("sa-east-1", "sae1"),
        ("us-west-2", "usw2"),
    ],
)
def test_az_id_prefix_of_a_region(region, prefix):
    assert az_id_prefix(region) == prefix
