"""Each TrainiumChecks rule as a pure function of one template resource: pass and fail."""

from __future__ import annotations

import copy

import pytest

from cdk_trn.compliance.rules import (
    COMPLIANT,
    NON_COMPLIANT,
    NOT_APPLICABLE,
    TemplateResource,
    referenced_logical_id,
)
from cdk_trn.compliance.rules.efa import TRN1, TRN2
from cdk_trn.compliance.rules.fsx import TRN7, TRN8
from cdk_trn.compliance.rules.instances import TRN3, TRN4, TRN5, TRN6, TRN10
from cdk_trn.compliance.rules.kms import TRN9
from cdk_trn.compliance.trainium_checks import RULES
from tests.cdk_trn.compliance import templates as t

RULES_BY_ID = {rule.id: rule for rule in RULES}


def verdict(rule, resources, logical_id, region="us-east-2"):
    return rule(TemplateResource.of(t.template(resources), logical_id, region))


def with_good(extra):
    resources = t.good_resources()
    resources.update(copy.deepcopy(extra))
    return resources


@pytest.mark.parametrize(
    ("rule", "logical_id"),
    [
        (TRN1, "EfaSg"),
        (TRN2, "NodeLt"),
        (TRN3, "NodeLt"),
        (TRN4, "NodeLt"),
        (TRN5, "NodeLt"),
        (TRN5, "Nodes"),
        (TRN6, "CbLt"),
        (TRN6, "CbNodes"),
        (TRN7, "Fsx"),
        (TRN8, "Fsx"),
        (TRN9, "EnclaveKey"),
        (TRN10, "NodeLt"),
    ],
)
def test_rule_passes_the_compliant_resource(rule, logical_id):
    assert verdict(rule, t.good_resources(), logical_id) is COMPLIANT


@pytest.mark.parametrize("case", sorted(t.bad_resources()))
def test_rule_fails_the_non_compliant_resource(case):
    resources, logical_id = t.bad_resources()[case]
    rule = RULES_BY_ID[case.split("-")[0]]
    assert verdict(rule, with_good(resources), logical_id) is NON_COMPLIANT


def test_trn10_fails_a_region_without_the_instance_type():
    assert verdict(TRN10, t.good_resources(), "NodeLt", region="eu-west-1") is NON_COMPLIANT


def test_trn10_fails_a_trainium_type_missing_from_the_catalog():
    resources = {"Lt": t.launch_template("EfaSg", InstanceType="trn9.48xlarge")}
    assert verdict(TRN10, resources, "Lt") is NON_COMPLIANT


def test_trn10_does_not_apply_to_a_region_agnostic_stack():
    assert verdict(TRN10, t.good_resources(), "NodeLt", region=None) is NOT_APPLICABLE


def test_trn1_does_not_apply_to_a_group_no_efa_interface_uses():
    resources = t.efa_security_group("OtherSg", ingress=False, egress=False)
    assert verdict(TRN1, resources, "OtherSg") is NOT_APPLICABLE


def test_trn1_accepts_an_inline_self_egress_rule():
    resources = with_good({})
    del resources["EfaSgSelfOut"]
    resources["EfaSg"]["Properties"]["SecurityGroupEgress"] = [
        {"IpProtocol": "-1", "DestinationSecurityGroupId": {"Ref": "EfaSg"}}
    ]
    assert verdict(TRN1, resources, "EfaSg") is COMPLIANT


def test_trn1_fails_a_self_rule_limited_to_one_port():
    resources = with_good({})
    resources["EfaSgSelfOut"]["Properties"].update(IpProtocol="tcp", FromPort=443, ToPort=443)
    assert verdict(TRN1, resources, "EfaSg") is NON_COMPLIANT


def test_trn1_fails_the_group_of_an_efa_file_system_without_self_rules():
    resources = with_good(t.efa_security_group("FsxSg", ingress=False, egress=False))
    resources["Fsx"]["Properties"]["SecurityGroupIds"] = [t.group_id("FsxSg")]
    assert verdict(TRN1, resources, "FsxSg") is NON_COMPLIANT


def test_trn2_accepts_legacy_efa_interfaces_on_every_card():
    interfaces = [
        {"NetworkCardIndex": c, "DeviceIndex": 0 if c == 0 else 1, "InterfaceType": "efa"}
        for c in range(8)
    ]
    resources = {
        "Lt": t.launch_template("Sg", InstanceType="trn1.32xlarge", NetworkInterfaces=interfaces)
    }
    assert verdict(TRN2, resources, "Lt") is COMPLIANT


def test_trn2_does_not_apply_to_a_type_without_efa():
    resources = {"Lt": t.launch_template("Sg", InstanceType="trn2.3xlarge")}
    assert verdict(TRN2, resources, "Lt") is NOT_APPLICABLE


def test_trn3_fails_a_launch_template_without_metadata_options():
    # EC2's default hop limit depends on the AMI (AL2023 sets 2): unset is not compliant.
    resources = {"Lt": t.launch_template("Sg")}
    del resources["Lt"]["Properties"]["LaunchTemplateData"]["MetadataOptions"]
    assert verdict(TRN3, resources, "Lt") is NON_COMPLIANT


def test_trn3_passes_hop_limit_one_or_a_disabled_endpoint_whatever_the_tokens():
    # IMDSv2 (HttpTokens) is cdk-nag's EC2IMDSv2Enabled; TRN3 judges only the hop limit.
    one = {"Lt": t.launch_template("Sg", MetadataOptions={"HttpPutResponseHopLimit": 1})}
    off = {"Lt": t.launch_template("Sg", MetadataOptions={"HttpEndpoint": "disabled"})}
    two = {
        "Lt": t.launch_template(
            "Sg", MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 2}
        )
    }
    assert verdict(TRN3, one, "Lt") is COMPLIANT
    assert verdict(TRN3, off, "Lt") is COMPLIANT
    assert verdict(TRN3, two, "Lt") is NON_COMPLIANT


def test_trn4_fails_a_launch_template_that_does_not_declare_its_root_volume():
    resources = {"Lt": t.launch_template("Sg")}
    del resources["Lt"]["Properties"]["LaunchTemplateData"]["BlockDeviceMappings"]
    assert verdict(TRN4, resources, "Lt") is NON_COMPLIANT


def test_trn5_accepts_a_public_subnet_when_the_primary_interface_turns_public_ip_off():
    resources = with_good({"PublicSubnet": t.subnet(public=True)})
    resources["Nodes"] = t.auto_scaling_group("NodeLt", "PublicSubnet")
    assert verdict(TRN5, resources, "Nodes") is COMPLIANT


def test_trn6_does_not_apply_to_an_on_demand_group_in_a_placement_group():
    assert verdict(TRN6, t.good_resources(), "Nodes") is NOT_APPLICABLE


@pytest.mark.parametrize(
    "key_id",
    ["alias/aws/fsx", "arn:aws:kms:us-east-2:111111111111:alias/aws/fsx", None],
    ids=["aws-managed-alias", "aws-managed-alias-arn", "no-key"],
)
def test_trn7_fails_persistent2_without_a_customer_managed_key_in_the_stack(key_id):
    resources = t.good_resources()
    if key_id is None:
        del resources["Fsx"]["Properties"]["KmsKeyId"]
    else:
        resources["Fsx"]["Properties"]["KmsKeyId"] = key_id
    assert verdict(TRN7, resources, "Fsx") is NON_COMPLIANT


def test_trn7_accepts_the_key_arn_by_getatt():
    resources = t.good_resources()
    resources["Fsx"]["Properties"]["KmsKeyId"] = {"Fn::GetAtt": ["DataKey", "Arn"]}
    assert verdict(TRN7, resources, "Fsx") is COMPLIANT


def test_trn8_does_not_apply_to_a_file_system_without_efa():
    resources = {"Fsx": t.lustre(EfaEnabled=None, MetadataConfiguration=None)}
    assert verdict(TRN8, resources, "Fsx") is NOT_APPLICABLE


def test_trn9_fails_an_enclave_key_without_the_deny_for_missing_attestation():
    resources = {"Key": t.kms_key([t.ADMIN_STATEMENT, t.ATTESTED_ALLOW])}
    assert verdict(TRN9, resources, "Key") is NON_COMPLIANT


def test_trn9_fails_a_deny_that_names_one_principal_only():
    deny = dict(t.DENY_WITHOUT_ATTESTATION, Principal=t.HOST_ROLE)
    resources = {"Key": t.kms_key([t.ADMIN_STATEMENT, t.ATTESTED_ALLOW, deny])}
    assert verdict(TRN9, resources, "Key") is NON_COMPLIANT


def test_trn9_fails_a_wildcard_decrypt_allow_without_attestation():
    allow = {"Effect": "Allow", "Principal": t.HOST_ROLE, "Action": "kms:Decrypt*", "Resource": "*"}
    resources = {"Key": t.kms_key([allow, t.ATTESTED_ALLOW, t.DENY_WITHOUT_ATTESTATION])}
    assert verdict(TRN9, resources, "Key") is NON_COMPLIANT


def test_trn9_applies_to_a_key_tagged_for_enclaves_even_without_attestation_keys():
    tags = [{"Key": "cdk-trn:purpose", "Value": "enclave"}]
    resources = {"Key": t.kms_key([t.ROOT_ALL], tags=tags)}
    assert verdict(TRN9, resources, "Key") is NON_COMPLIANT


def test_trn9_does_not_apply_to_an_ordinary_key():
    assert verdict(TRN9, t.good_resources(), "DataKey") is NOT_APPLICABLE


def test_rules_do_not_apply_to_other_resource_types():
    resources = t.good_resources()
    assert all(verdict(rule, resources, "PrivateSubnet") is NOT_APPLICABLE for rule in RULES)


def test_every_rule_has_an_id_info_and_explanation():
    assert [rule.id for rule in RULES] == [f"TRN{n}" for n in range(1, 11)]
    assert all(rule.info and len(rule.explanation) > 80 for rule in RULES)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"Ref": "A"}, "A"),
        ({"Fn::GetAtt": ["A", "GroupId"]}, "A"),
        ({"Fn::GetAtt": "A.GroupId"}, "A"),
        ({"Fn::ImportValue": "x"}, None),
        ("sg-123", None),
    ],
)
def test_referenced_logical_id_reads_ref_and_getatt_only(value, expected):
    assert referenced_logical_id(value) == expected


def test_node_rules_do_not_apply_to_a_t2_micro_launch_template():
    plain = {
        "Lt": {
            "Type": "AWS::EC2::LaunchTemplate",
            "Properties": {"LaunchTemplateData": {"InstanceType": "t2.micro"}},
        }
    }
    for rule_id in ("TRN3", "TRN4", "TRN5", "TRN6", "TRN10"):
        assert verdict(RULES_BY_ID[rule_id], plain, "Lt") is NOT_APPLICABLE


def test_explicitly_unencrypted_volume_is_left_to_aws_solutions_ec26():
    lt = t.launch_template(
        "EfaSg", BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": False}}]
    )
    assert verdict(RULES_BY_ID["TRN4"], with_good({"Lt": lt}), "Lt") is COMPLIANT
