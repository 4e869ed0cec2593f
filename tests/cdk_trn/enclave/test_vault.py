"""EnclaveKeyVault synth facts: key policy, hosts, network rules, host permissions, boot script."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk import assertions
from aws_cdk import aws_kms as kms
from aws_cdk.assertions import Match

from cdk_trn.enclave.vault import ADMIN_ACTIONS, CRYPTO_ACTIONS, KEY_STATE_OBJECT
from cdk_trn.errors import CdkTrnError
from cdk_trn_runtime.node.bundle import bundle_files, bundle_sha256
from tests.cdk_trn.enclave.stacks import (
    EIF_BUCKET,
    EIF_KEY,
    PCR0,
    PCR8,
    VaultStack,
    vault_stack,
)

KEY_ADMIN = "arn:aws:iam::111111111111:role/KeyAdmin"


@pytest.fixture(scope="module")
def built() -> VaultStack:
    return vault_stack(key_admins=[KEY_ADMIN])


@pytest.fixture(scope="module")
def template(built: VaultStack) -> assertions.Template:
    return assertions.Template.from_stack(built.stack)


@pytest.fixture(scope="module")
def signed_template() -> assertions.Template:
    return assertions.Template.from_stack(vault_stack("signed").stack)


def _host_role_arn(built: VaultStack) -> dict[str, Any]:
    return {"Fn::GetAtt": [built.logical_id(built.vault.host_role), "Arn"]}


def _key_statements(template: assertions.Template, built: VaultStack) -> list[dict[str, Any]]:
    key = template.to_json()["Resources"][built.logical_id(built.vault.key)]
    return key["Properties"]["KeyPolicy"]["Statement"]


def _user_data(template: assertions.Template) -> str:
    templates = template.find_resources(
        "AWS::EC2::LaunchTemplate",
        {"Properties": {"LaunchTemplateData": {"EnclaveOptions": {"Enabled": True}}}},
    )
    (launch_template,) = templates.values()
    joined = launch_template["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
    parts = joined["Fn::Join"][1] if isinstance(joined, dict) else [joined]
    return "".join(p if isinstance(p, str) else json.dumps(p) for p in parts)


def _host_policy_statements(template: assertions.Template, built: VaultStack) -> list[dict]:
    role_id = built.logical_id(built.vault.host_role)
    policies = template.find_resources(
        "AWS::IAM::ManagedPolicy", {"Properties": {"Roles": [{"Ref": role_id}]}}
    )
    return [s for p in policies.values() for s in p["Properties"]["PolicyDocument"]["Statement"]]


# --- the key --------------------------------------------------------------------------------


def test_key_policy_allows_host_role_crypto_only_with_matching_pcr0(template, built):
    assert {
        "Sid": "EnclaveHostUsesKeyOnlyFromAttestedEnclave",
        "Effect": "Allow",
        "Principal": {"AWS": _host_role_arn(built)},
        "Action": list(CRYPTO_ACTIONS),
        "Resource": "*",
        "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0}},
    } in _key_statements(template, built)


def test_key_policy_denies_crypto_to_everyone_when_attestation_is_absent(template, built):
    assert {
        "Sid": "DenyCryptographicUseWithoutAttestation",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": list(CRYPTO_ACTIONS),
        "Resource": "*",
        "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}},
    } in _key_statements(template, built)


def test_key_policy_denies_crypto_to_everyone_from_another_image(template, built):
    assert {
        "Sid": "DenyCryptographicUseFromOtherImages",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": list(CRYPTO_ACTIONS),
        "Resource": "*",
        "Condition": {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0}},
    } in _key_statements(template, built)


def test_key_policy_denies_grants_and_re_encryption_to_everyone_without_condition(template, built):
    assert {
        "Sid": "DenyGrantsAndReEncryptionToEveryone",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": ["kms:CreateGrant", "kms:ReEncrypt*"],
        "Resource": "*",
    } in _key_statements(template, built)


def test_key_policy_statements_are_exactly_the_documented_set(template, built):
    assert [s["Sid"] for s in _key_statements(template, built)] == [
        "AccountAdministersKeyWithoutCryptographicUse",
        "OnlyDeploymentAndBreakGlassRolesChangeKeyPolicy",
        "KeyAdministratorsWithoutCryptographicUse",
        "EnclaveHostUsesKeyOnlyFromAttestedEnclave",
        "DenyCryptographicUseWithoutAttestation",
        "DenyCryptographicUseFromOtherImages",
        "DenyGrantsAndReEncryptionToEveryone",
        "DenyKeyPolicyChangesToOtherPrincipals",
    ]


def test_key_policy_has_no_unconditioned_allow_of_crypto_operations(template, built):
    for statement in _key_statements(template, built):
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        crypto = [a for a in actions if a in CRYPTO_ACTIONS or a in ("kms:*", "*")]
        if statement["Effect"] == "Allow" and crypto:
            assert "kms:RecipientAttestation:ImageSha384" in json.dumps(statement["Condition"])


def test_key_administrators_get_admin_actions_without_crypto_or_grants(template, built):
    statements = {s["Sid"]: s for s in _key_statements(template, built)}
    admins = statements["KeyAdministratorsWithoutCryptographicUse"]
    assert admins["Principal"] == {"AWS": KEY_ADMIN}
    assert admins["Action"] == list(ADMIN_ACTIONS)
    account = statements["AccountAdministersKeyWithoutCryptographicUse"]
    for statement in (admins, account):
        assert not set(statement["Action"]) & set(CRYPTO_ACTIONS)
        assert "kms:CreateGrant" not in statement["Action"]
        assert not any(a.endswith("*") for a in statement["Action"])


def test_signed_image_pins_pcr8_in_the_allow_and_denies_other_signers(signed_template):
    key = next(
        r
        for r in signed_template.find_resources("AWS::KMS::Key").values()
        if "EnclaveHostUsesKeyOnlyFromAttestedEnclave" in json.dumps(r)
    )
    statements = {s["Sid"]: s for s in key["Properties"]["KeyPolicy"]["Statement"]}
    assert statements["EnclaveHostUsesKeyOnlyFromAttestedEnclave"]["Condition"] == {
        "StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:ImageSha384": PCR0,
            "kms:RecipientAttestation:PCR8": PCR8,
        }
    }
    assert statements["DenyCryptographicUseFromOtherSigners"]["Condition"] == {
        "StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:PCR8": PCR8}
    }


def test_key_rotates_is_retained_and_tagged_enclave(template, built):
    key = template.to_json()["Resources"][built.logical_id(built.vault.key)]
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["DeletionPolicy"] == "Retain" and key["UpdateReplacePolicy"] == "Retain"
    assert {"Key": "cdk-trn:purpose", "Value": "enclave"} in key["Properties"]["Tags"]


def test_host_role_identity_policies_grant_no_crypto_on_the_vault_key(template, built):
    key_arn = json.dumps({"Fn::GetAtt": [built.logical_id(built.vault.key), "Arn"]})
    for statement in _host_policy_statements(template, built):
        assert key_arn not in json.dumps(statement["Resource"])
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        assert "kms:GenerateDataKeyPair" not in actions and "kms:GenerateRandom" not in actions


def test_host_role_s3_access_is_the_eif_the_package_and_the_key_state_only(template, built):
    s3_statements = [
        s
        for s in _host_policy_statements(template, built)
        if str(s["Action"]).startswith(("s3:", "['s3:"))
    ]
    rendered = json.dumps(s3_statements)
    assert f":s3:::{EIF_BUCKET}/{EIF_KEY}" in rendered
    assert f"/{KEY_STATE_OBJECT}" in rendered
    for statement in s3_statements:
        resources = (
            statement["Resource"]
            if isinstance(statement["Resource"], list)
            else [statement["Resource"]]
        )
        assert "*" not in json.dumps(resources)


# --- the hosts ----------------------------------------------------------------------------


def test_hosts_have_enclave_options_imdsv2_no_public_ip_and_encrypted_root(template):
    template.has_resource_properties(
        "AWS::EC2::LaunchTemplate",
        {
            "LaunchTemplateData": Match.object_like(
                {
                    "EnclaveOptions": {"Enabled": True},
                    "InstanceType": "m7i.xlarge",
                    "MetadataOptions": Match.object_like(
                        {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}
                    ),
                    "NetworkInterfaces": [
                        Match.object_like({"AssociatePublicIpAddress": False, "DeviceIndex": 0})
                    ],
                    "BlockDeviceMappings": [
                        {
                            "DeviceName": "/dev/xvda",
                            "Ebs": Match.object_like({"Encrypted": True, "VolumeType": "gp3"}),
                        }
                    ],
                }
            )
        },
    )


def test_hosts_use_al2023_resolved_at_deploy_time(template):
    parameters = template.to_json()["Parameters"]
    assert any(
        p["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>" and "al2023" in p["Default"]
        for p in parameters.values()
    )


def test_host_group_is_fixed_size_in_the_vault_subnet_and_waits_for_signals(template, built):
    subnet_id = built.logical_id(built.network.subnet.node.default_child)
    template.has_resource(
        "AWS::AutoScaling::AutoScalingGroup",
        {
            "Properties": Match.object_like(
                {"MinSize": "1", "MaxSize": "1", "VPCZoneIdentifier": [{"Ref": subnet_id}]}
            ),
            "CreationPolicy": {"ResourceSignal": {"Count": 1, "Timeout": "PT30M"}},
            "UpdatePolicy": {"AutoScalingReplacingUpdate": {"WillReplace": True}},
        },
    )


# --- network rules ------------------------------------------------------------------------


def test_host_security_group_admits_only_the_clients_on_the_service_port(template, built):
    host_group = built.logical_id(built.vault.security_group)
    client_group = built.logical_id(built.client.connections.security_groups[0])
    ingress = template.find_resources(
        "AWS::EC2::SecurityGroupIngress",
        {"Properties": {"GroupId": {"Fn::GetAtt": [host_group, "GroupId"]}}},
    )
    assert [r["Properties"] for r in ingress.values()] == [
        {
            "IpProtocol": "tcp",
            "FromPort": 8443,
            "ToPort": 8443,
            "GroupId": {"Fn::GetAtt": [host_group, "GroupId"]},
            "SourceSecurityGroupId": {"Fn::GetAtt": [client_group, "GroupId"]},
            "Description": "cdk-trn vault client to the enclave parent server",
        }
    ]
    group = template.to_json()["Resources"][host_group]["Properties"]
    assert "SecurityGroupIngress" not in group


def test_host_security_group_egress_is_https_to_vpc_endpoints_and_s3_only(template, built):
    host_group = built.logical_id(built.vault.security_group)
    inline = template.to_json()["Resources"][host_group]["Properties"]["SecurityGroupEgress"]
    separate = [
        r["Properties"]
        for r in template.find_resources(
            "AWS::EC2::SecurityGroupEgress",
            {"Properties": {"GroupId": {"Fn::GetAtt": [host_group, "GroupId"]}}},
        ).values()
    ]
    egress = inline + separate
    assert all(r["IpProtocol"] == "tcp" and r["FromPort"] == r["ToPort"] == 443 for r in egress)
    vpc_id = built.logical_id(built.network.vpc.node.default_child)
    destinations = [r.get("CidrIp") or r.get("DestinationPrefixListId") for r in egress]
    assert len(destinations) == 2
    assert {"Fn::GetAtt": [vpc_id, "CidrBlock"]} in destinations
    (lookup,) = template.find_resources("Custom::CdkTrnS3PrefixList")
    assert {"Fn::GetAtt": [lookup, "PrefixListId"]} in destinations


def test_s3_prefix_list_is_looked_up_at_deploy_time_by_the_stacks_deploy_time_function(template):
    (lookup,) = template.find_resources("Custom::CdkTrnS3PrefixList").values()
    (target, _) = lookup["Properties"]["ServiceToken"]["Fn::GetAtt"]
    function = template.to_json()["Resources"][target]["Properties"]
    assert function["Environment"]["Variables"]["CDK_TRN_HANDLER_MODULE"] == (
        "cdk_trn_runtime.deploy_time.prefix_list"
    )
    assert "VpcConfig" in function and "DeadLetterConfig" in function


# --- boot script ----------------------------------------------------------------------------


def _shipped(name: str) -> str:
    """A file of the vault host's boot bundle (what the launcher unpacks and runs)."""
    return bundle_files("vault")[name].read_text()


def test_user_data_is_the_launcher_of_the_vault_bundle_and_holds_no_script(template):
    user_data = _user_data(template)
    assert f"CDK_TRN_BOOT_SHA256={bundle_sha256('vault')}" in user_data
    assert "CDK_TRN_BOOT_ENTRY=host_bootstrap.sh" in user_data
    assert "nitro-cli" not in user_data


def test_enclave_never_starts_in_debug_mode(template):
    unit = _shipped("units/cdk-trn-enclave.service")
    assert "nitro-cli run-enclave" in unit
    assert "--debug-mode" not in unit and "--attach-console" not in unit


def test_vsock_proxy_reaches_regional_kms_only(template):
    script = _shipped("host_bootstrap.sh")
    allowlist = script.split("vsock-proxy.yaml <<EOF", 1)[1].split("\nEOF", 1)[0]
    assert [line for line in allowlist.splitlines() if line.startswith("- ")] == [
        "- {address: kms.${AWS_REGION}.amazonaws.com, port: 443}"
    ]
    assert "CDK_TRN_REGION=us-east-2" in _user_data(template)
    assert "AWS_REGION=$CDK_TRN_REGION" in script
    unit = _shipped("units/cdk-trn-kms-proxy.service")
    assert "vsock-proxy @KMS_PROXY_PORT@ kms.@CDK_TRN_REGION@.amazonaws.com 443" in unit


def test_allocator_gets_the_enclave_resources(template):
    user_data = _user_data(template)
    assert "CDK_TRN_ENCLAVE_CPU_COUNT=2" in user_data
    assert "CDK_TRN_ENCLAVE_MEMORY_MIB=4096" in user_data
    script = _shipped("host_bootstrap.sh")
    assert "memory_mib: ${CDK_TRN_ENCLAVE_MEMORY_MIB}" in script
    assert "cpu_count: ${CDK_TRN_ENCLAVE_CPU_COUNT}" in script


def test_success_is_signalled_only_after_the_enclave_runs_in_production_mode():
    script = _shipped("host_bootstrap.sh")
    success = script.index('signal 0 "enclave running')
    assert script.index("nitro-cli describe-enclaves") < success
    assert script.index('host_checks enclave "$ROOT/enclaves.json"') < success
    checks = _shipped("src/cdk_trn_runtime/vault/host_checks.py")
    assert 'enclaves[0].get("Flags") == "NONE"' in checks
    assert script.count("signal 0 ") == 1


def test_user_data_pins_the_expected_pcr0_and_the_parent_server_listens_on_the_port(template):
    user_data = _user_data(template)
    assert f"CDK_TRN_EXPECTED_PCR0={PCR0}" in user_data
    assert "CDK_TRN_SERVICE_PORT=8443" in user_data
    unit = _shipped("units/cdk-trn-enclave-parent.service")
    assert "python3.11 -m cdk_trn_runtime.vault.server --listen 0.0.0.0:@SERVICE_PORT@" in unit


def test_public_key_parameter_is_a_valid_ssm_name_the_host_may_write(template, built):
    name = built.vault.public_key_parameter
    assert name.startswith("/cdk-trn/enclave/") and name.endswith("/manifest-public-key")
    assert all(c.isalnum() or c in "/_.-" for c in name)
    assert f"CDK_TRN_PUBLIC_KEY_PARAMETER={name}" in _user_data(template)
    writes = [
        s for s in _host_policy_statements(template, built) if "ssm:PutParameter" in s["Action"]
    ]
    # Its own statement, and the vault URL parameters' (test_vault_clients.py).
    assert [s["Sid"] for s in writes] == ["PublishManifestSigningPublicKey", "PublishVaultUrl"]
    assert f"parameter{name}" in json.dumps(writes[0]["Resource"])
    assert "manifest-public-key" not in json.dumps(writes[1]["Resource"])


def test_vault_exposes_connections_port_and_endpoint(built):
    vault = built.vault
    assert vault.port == 8443
    assert vault.connections.security_groups == [vault.security_group]
    assert vault.endpoint.port == 8443
    assert vault.endpoint.discovery_tag_key == "cdk-trn:enclave-vault"


# --- who may change the key policy (issue 13, item 4) ------------------------------------------

BOOTSTRAP_EXEC_ROLE = {
    "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/"
    "cdk-hnb659fds-cfn-exec-role-${AWS::AccountId}-us-east-2"
}
BREAK_GLASS = "arn:aws:iam::111122223333:role/security/VaultBreakGlass"


def _listed(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _may_put_key_policy(statement: dict) -> bool:
    if "NotAction" in statement:
        return not any(
            a in ("kms:PutKeyPolicy", "kms:*", "*") for a in _listed(statement["NotAction"])
        )
    return any(a in ("kms:PutKeyPolicy", "kms:*", "*") for a in _listed(statement["Action"]))


def _vault_keys(template: assertions.Template, built: VaultStack) -> list[dict]:
    """Every KMS key the vault construct creates (the test stack also holds a stand-in cluster)."""
    resources = template.to_json()["Resources"]
    ids = [
        built.stack.get_logical_id(child)
        for child in built.vault.node.find_all()
        if isinstance(child, kms.CfnKey)
    ]
    return [resources[i] for i in ids]


def _put_key_policy_allows(template: assertions.Template, built: VaultStack) -> list[dict]:
    return [
        statement
        for key in _vault_keys(template, built)
        for statement in key["Properties"]["KeyPolicy"]["Statement"]
        if statement["Effect"] == "Allow" and _may_put_key_policy(statement)
    ]


def test_no_key_in_the_vault_lets_the_account_root_change_its_policy_unconditionally(
    template, built
):
    # Finding: account root held kms:PutKeyPolicy, so any principal with kms:* could rewrite the
    # policy, drop the Deny statements and decrypt the key state. Every key of the vault counts.
    allows = _put_key_policy_allows(template, built)
    assert len(allows) == len(_vault_keys(template, built)) == 3  # vault, storage, alerts
    for statement in allows:
        assert statement["Action"] == "kms:PutKeyPolicy"
        assert statement["Condition"] == {"ArnEquals": {"aws:PrincipalArn": [BOOTSTRAP_EXEC_ROLE]}}


def test_every_vault_key_denies_policy_changes_to_all_other_principals(template, built):
    for key in _vault_keys(template, built):
        statements = {s.get("Sid"): s for s in key["Properties"]["KeyPolicy"]["Statement"]}
        assert statements["DenyKeyPolicyChangesToOtherPrincipals"] == {
            "Sid": "DenyKeyPolicyChangesToOtherPrincipals",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "kms:PutKeyPolicy",
            "Resource": "*",
            "Condition": {"ArnNotEquals": {"aws:PrincipalArn": [BOOTSTRAP_EXEC_ROLE]}},
        }


def test_key_administrators_cannot_change_the_key_policy(template, built):
    for statement in _key_statements(template, built):
        if statement["Effect"] == "Allow" and statement.get("Sid") != (
            "OnlyDeploymentAndBreakGlassRolesChangeKeyPolicy"
        ):
            assert not _may_put_key_policy(statement)


def test_named_deployment_and_break_glass_roles_are_the_only_ones_allowed():
    deployer = "arn:aws:iam::111122223333:role/cdk-custom1-cfn-exec-role-111122223333-us-east-2"
    built = vault_stack(deployment_role_arn=deployer, break_glass_role_arn=BREAK_GLASS)
    template = assertions.Template.from_stack(built.stack)
    for statement in _put_key_policy_allows(template, built):
        assert statement["Condition"] == {
            "ArnEquals": {"aws:PrincipalArn": [deployer, BREAK_GLASS]}
        }


@pytest.mark.parametrize(
    "prop, value",
    [
        ("break_glass_role_arn", "BreakGlass"),
        ("break_glass_role_arn", "arn:aws:iam::111122223333:user/alice"),
        ("deployment_role_arn", "arn:aws:iam::1234:role/x"),
    ],
)
def test_role_props_must_be_iam_role_arns(prop, value):
    with pytest.raises(CdkTrnError, match=prop):
        vault_stack(**{prop: value})


def test_policy_change_attempts_on_the_vault_key_notify_an_encrypted_topic(template, built):
    key = built.logical_id(built.vault.key)
    rules = template.find_resources("AWS::Events::Rule")
    (rule,) = [r for r in rules.values() if "PutKeyPolicy" in json.dumps(r)]
    pattern = rule["Properties"]["EventPattern"]
    assert pattern["source"] == ["aws.kms"]
    assert pattern["detail-type"] == ["AWS API Call via CloudTrail"]
    assert pattern["detail"]["eventName"] == ["PutKeyPolicy"]
    assert pattern["detail"]["$or"] == [
        {"resources": {"ARN": [{"Fn::GetAtt": [key, "Arn"]}]}},
        {"requestParameters": {"keyId": [{"Fn::GetAtt": [key, "Arn"]}, {"Ref": key}]}},
    ]
    topic_id = built.logical_id(built.vault.key_policy_alerts)
    assert rule["Properties"]["Targets"][0]["Arn"] == {"Ref": topic_id}
    topic = template.to_json()["Resources"][topic_id]
    alerts_key = topic["Properties"]["KmsMasterKeyId"]["Fn::GetAtt"][0]
    assert alerts_key != key  # not the vault key: its Deny statements would stop EventBridge
    assert template.to_json()["Resources"][alerts_key]["Properties"]["EnableKeyRotation"]
