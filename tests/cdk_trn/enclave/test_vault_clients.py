"""The real TrainiumCluster is a vault client: its nodes reach the parent server, its role signs."""

from __future__ import annotations

import json

import pytest
from aws_cdk import assertions

from cdk_trn.enclave.vault import EnclaveKeyVault
from cdk_trn.network import TrainingNetwork
from cdk_trn_runtime.contract import VAULT_URL_PENDING
from tests.cdk_trn.enclave.stacks import REGION, prebuilt_image
from tests.support.cfn import lint_findings
from tests.support.stacks import cluster_stack


@pytest.fixture(scope="module")
def cluster_and_vault():
    stack, cluster = cluster_stack("trn2.48xlarge")
    vault = EnclaveKeyVault(
        stack,
        "Vault",
        network=cluster.network,
        clients=[cluster],
        image=prebuilt_image(stack),
    )
    return stack, cluster, vault, assertions.Template.from_stack(stack).to_json()


def test_cluster_nodes_may_reach_the_vault_port_and_nothing_else_may(cluster_and_vault):
    stack, cluster, vault, template = cluster_and_vault
    host_group = stack.get_logical_id(vault.security_group.node.default_child)
    node_group = stack.get_logical_id(cluster.security_group.node.default_child)
    ingress = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::EC2::SecurityGroupIngress"
        and r["Properties"]["GroupId"] == {"Fn::GetAtt": [host_group, "GroupId"]}
    ]
    assert [(i["FromPort"], i["ToPort"], i["SourceSecurityGroupId"]) for i in ingress] == [
        (8443, 8443, {"Fn::GetAtt": [node_group, "GroupId"]})
    ]


def test_only_the_cluster_s_signing_agent_role_is_the_identity_the_parent_server_accepts(
    cluster_and_vault,
):
    """Not the node role (any process on a node once held it): the role only the node role may
    assume, which the nodes' root signing agents assume (issue 20)."""
    stack, cluster, _, template = cluster_and_vault
    (launch_template,) = [
        r
        for r in template["Resources"].values()
        if r["Type"] == "AWS::EC2::LaunchTemplate"
        and r["Properties"]["LaunchTemplateData"].get("EnclaveOptions")
    ]
    user_data = json.dumps(launch_template["Properties"]["LaunchTemplateData"]["UserData"])
    allowed = user_data.split("CDK_TRN_ALLOWED_ROLE_ARNS='", 1)[1].split("'", 1)[0]
    node_role = stack.get_logical_id(cluster.role.node.default_child)
    signer_role = stack.get_logical_id(cluster.signer_role.node.default_child)
    assert json.dumps({"Fn::GetAtt": [signer_role, "Arn"]}) in allowed
    assert node_role not in allowed
    trust = template["Resources"][signer_role]["Properties"]["AssumeRolePolicyDocument"]
    assert [s["Principal"] for s in trust["Statement"]] == [
        {"AWS": {"Fn::GetAtt": [node_role, "Arn"]}}
    ]
    assert not template["Resources"][signer_role]["Properties"].get("Policies")
    assert not [
        r
        for r in template["Resources"].values()
        if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
        and {"Ref": signer_role} in r["Properties"].get("Roles", [])
    ]


def test_cluster_with_vault_has_no_cfn_lint_error_or_warning(cluster_and_vault):
    assert lint_findings(cluster_and_vault[3], REGION) == []


def test_vault_creates_the_clusters_url_parameter_and_its_hosts_alone_write_it(cluster_and_vault):
    stack, cluster, vault, template = cluster_and_vault
    parameters = {
        k: r["Properties"]
        for k, r in template["Resources"].items()
        if r["Type"] == "AWS::SSM::Parameter"
        and r["Properties"]["Name"] == cluster.vault_url_parameter
    }
    ((parameter_id, parameter),) = parameters.items()
    assert parameter["Type"] == "String" and parameter["Value"] == VAULT_URL_PENDING
    writes = [
        st
        for r in template["Resources"].values()
        if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
        for st in r["Properties"]["PolicyDocument"]["Statement"]
        if "ssm:PutParameter" in json.dumps(st["Action"])
        and cluster.vault_url_parameter.lstrip("/") in json.dumps(st["Resource"])
    ]
    assert [w["Sid"] for w in writes] == ["PublishVaultUrl"]
    host_role = stack.get_logical_id(vault.host_role.node.default_child)
    (write_policy,) = [
        r
        for r in template["Resources"].values()
        if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
        and "PublishVaultUrl" in json.dumps(r["Properties"]["PolicyDocument"])
    ]
    assert write_policy["Properties"]["Roles"] == [{"Ref": host_role}]
    # The hosts start only once the parameter exists (a host must not create it first).
    hosts = stack.get_logical_id(vault.auto_scaling_group.node.default_child)
    assert parameter_id in template["Resources"][hosts]["DependsOn"]
    (launch_template,) = [
        r
        for r in template["Resources"].values()
        if r["Type"] == "AWS::EC2::LaunchTemplate"
        and r["Properties"]["LaunchTemplateData"].get("EnclaveOptions")
    ]
    user_data = json.dumps(launch_template["Properties"]["LaunchTemplateData"]["UserData"])
    assert f"CDK_TRN_URL_PARAMETERS={cluster.vault_url_parameter}\\n" in user_data


def test_a_client_without_a_cluster_name_gets_a_parameter_under_the_vaults_path():
    import aws_cdk as cdk
    from aws_cdk import aws_ec2 as ec2
    from aws_cdk import aws_iam as iam

    stack = cdk.Stack(cdk.App(), "Plain", env=cdk.Environment(region=REGION))
    network = TrainingNetwork.from_attributes(
        stack,
        "Network",
        vpc_id="vpc-0123456789abcdef0",
        subnet_id="subnet-0123456789abcdef0",
        availability_zone="use2-az3",
        vpc_cidr_block="10.0.0.0/16",
    )
    group = ec2.SecurityGroup(stack, "Clients", vpc=network.vpc)
    role = iam.Role(stack, "ClientRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))

    class PlainClient:
        connections = ec2.Connections(security_groups=[group])

    PlainClient.role = role  # type: ignore[attr-defined]
    vault = EnclaveKeyVault(
        stack,
        "Vault",
        network=network,
        clients=[PlainClient()],
        image=prebuilt_image(stack),
    )
    assert vault.url_parameter_names[0].startswith("/cdk-trn/enclave/")
    template = assertions.Template.from_stack(stack)
    template.has_resource_properties(
        "AWS::SSM::Parameter", {"Name": vault.url_parameter_names[0], "Type": "String"}
    )
