"""EnclaveImage.from_directory: the deploy-time EIF build and what the key policy takes from it."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk import assertions
from aws_cdk.assertions import Match

from cdk_trn_runtime.node.bundle import bundle_files
from tests.cdk_trn.enclave.stacks import VaultStack, vault_stack, write_build_context


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> VaultStack:
    context = write_build_context(tmp_path_factory.mktemp("enclave-context"))
    out = tmp_path_factory.mktemp("cdk-out")
    return vault_stack(context, app=cdk.App(outdir=str(out)))


@pytest.fixture(scope="module")
def template(built: VaultStack) -> assertions.Template:
    return assertions.Template.from_stack(built.stack)


def _build_resource_id(template: assertions.Template) -> str:
    (logical_id,) = template.find_resources("Custom::CdkTrnEifBuild").keys()
    return logical_id


def test_key_policy_pins_the_pcr0_the_build_returns(template, built):
    build_id = _build_resource_id(template)
    key = template.to_json()["Resources"][built.logical_id(built.vault.key)]
    statements = {s["Sid"]: s for s in key["Properties"]["KeyPolicy"]["Statement"]}
    pcr0 = {"Fn::GetAtt": [build_id, "PCR0"]}
    assert statements["EnclaveHostUsesKeyOnlyFromAttestedEnclave"]["Condition"] == {
        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0}
    }
    assert statements["DenyCryptographicUseWithoutAttestation"]["Condition"] == {
        "Null": {"kms:RecipientAttestation:ImageSha384": "true"}
    }


def test_build_project_is_privileged_al2023_without_vpc_and_encrypted(template):
    template.has_resource_properties(
        "AWS::CodeBuild::Project",
        {
            "Environment": Match.object_like(
                {
                    "Image": "aws/codebuild/amazonlinux-x86_64-standard:5.0",
                    "PrivilegedMode": True,
                    "Type": "LINUX_CONTAINER",
                }
            ),
            "EncryptionKey": Match.any_value(),
            "Source": Match.object_like({"Type": "NO_SOURCE"}),
            "VpcConfig": Match.absent(),
            "LogsConfig": {
                "CloudWatchLogs": Match.object_like(
                    {"Status": "ENABLED", "GroupName": Match.any_value()}
                )
            },
        },
    )


def test_every_log_group_of_the_vault_is_kms_encrypted_and_retained(template, built):
    storage_key = built.logical_id(built.vault.storage_key)
    groups = template.find_resources("AWS::Logs::LogGroup")
    vault_groups = {k: v for k, v in groups.items() if k.startswith("Vault")}
    # The build's, the custom resource function's and the hosts' boot log.
    assert len(vault_groups) == 3
    for group in vault_groups.values():
        assert group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": [storage_key, "Arn"]}
        assert group["DeletionPolicy"] == "Retain"


def test_custom_resource_names_the_source_asset_and_a_per_source_output_prefix(template, built):
    build_id = _build_resource_id(template)
    properties = template.to_json()["Resources"][build_id]["Properties"]
    assert properties["OutputPrefix"].startswith("eif/") and len(properties["OutputPrefix"]) == 68
    assert properties["OutputBucket"] == {"Ref": built.logical_id(built.vault.state_bucket)}
    assert properties["SourceKey"].endswith(".zip")


def test_build_role_reads_only_its_source_and_writes_only_its_two_objects(template):
    project = next(iter(template.find_resources("AWS::CodeBuild::Project").values()))
    role_id = project["Properties"]["ServiceRole"]["Fn::GetAtt"][0]
    # One customer managed policy, nothing inline, nothing AWS managed.
    assert (
        template.find_resources("AWS::IAM::Policy", {"Properties": {"Roles": [{"Ref": role_id}]}})
        == {}
    )
    role = template.to_json()["Resources"][role_id]["Properties"]
    assert "ManagedPolicyArns" not in role and "Policies" not in role
    (policy,) = template.find_resources(
        "AWS::IAM::ManagedPolicy", {"Properties": {"Roles": [{"Ref": role_id}]}}
    ).values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    s3_statements = [s for s in statements if str(s["Action"]).startswith("s3:")]
    assert sorted(s["Action"] for s in s3_statements) == ["s3:GetObject", "s3:PutObject"]
    put = next(s for s in s3_statements if s["Action"] == "s3:PutObject")
    rendered = json.dumps(put["Resource"])
    assert "/enclave.eif" in rendered and "/measurements.json" in rendered and "*" not in rendered
    actions = [
        a
        for s in statements
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    ]
    assert not [a for a in actions if "*" in a]
    assert "/aws/codebuild/" not in json.dumps(statements)


def test_one_function_runs_the_driver_with_the_handler_module_in_the_vault_subnet(template, built):
    handlers = template.find_resources(
        "AWS::Lambda::Function",
        {
            "Properties": {
                "Environment": {
                    "Variables": Match.object_like(
                        {"CDK_TRN_HANDLER_MODULE": "cdk_trn_runtime.eif_builder.handler"}
                    )
                }
            }
        },
    )
    (function,) = [h["Properties"] for h in handlers.values()]
    assert function["Handler"] == "cdk_trn_runtime.deploy_time.driver.handler"
    assert function["Runtime"] == "python3.14"
    assert function["VpcConfig"]["SubnetIds"] == [
        built.stack.resolve(built.network.subnet.subnet_id)
    ]
    template.resource_count_is("AWS::StepFunctions::StateMachine", 0)


def test_hosts_fetch_the_eif_the_build_wrote(template, built):
    user_data = json.dumps(next(iter(template.find_resources("AWS::EC2::LaunchTemplate").values())))
    prefix = template.to_json()["Resources"][_build_resource_id(template)]["Properties"][
        "OutputPrefix"
    ]
    assert f"CDK_TRN_EIF_KEY={prefix}/enclave.eif\\n" in user_data


def test_host_bundle_holds_the_vault_and_enclave_runtime_but_no_cdk_code():
    files = sorted(bundle_files("vault"))
    code = [f.removeprefix("src/") for f in files if f.startswith("src/")]
    assert "cdk_trn_runtime/vault/server.py" in code
    assert "cdk_trn_runtime/enclave/channel.py" in code
    assert "cdk_trn_runtime/__init__.py" in code
    assert not [f for f in code if f.startswith("cdk_trn/") or "__pycache__" in f]
    allowed = ("cdk_trn_runtime/vault/", "cdk_trn_runtime/enclave/", "cdk_trn_runtime/contract/")
    top = {"cdk_trn_runtime/__init__.py"}
    assert not [f for f in code if not (f.startswith(allowed) or f in top)]
    rest = {f for f in files if not f.startswith("src/")}
    assert rest == {
        "host_bootstrap.sh",
        "units.sh",
        "units/cdk-trn-enclave-parent.service",
        "units/cdk-trn-enclave.service",
        "units/cdk-trn-kms-proxy.service",
    }


def test_build_starts_only_after_the_project_role_policy_exists(template):
    project = next(iter(template.find_resources("AWS::CodeBuild::Project").values()))
    role_id = project["Properties"]["ServiceRole"]["Fn::GetAtt"][0]
    (policy_id,) = template.find_resources(
        "AWS::IAM::ManagedPolicy", {"Properties": {"Roles": [{"Ref": role_id}]}}
    ).keys()
    build = template.to_json()["Resources"][_build_resource_id(template)]
    assert policy_id in build["DependsOn"]
