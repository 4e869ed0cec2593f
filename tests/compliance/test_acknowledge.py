"""cdk_trn.compliance.acknowledge: qualified rule ids, computed wildcard ids, cfn-lint silences."""

from __future__ import annotations

import aws_cdk as cdk
import pytest

from cdk_trn.compliance.acknowledge import acknowledge, qualified_rule_id
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
