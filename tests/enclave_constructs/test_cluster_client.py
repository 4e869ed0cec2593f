"""The real TrainiumCluster is a vault client: its nodes reach the parent server, its role signs."""

from __future__ import annotations

import json

import pytest
from aws_cdk import assertions

from cdk_trn.enclave.vault import EnclaveKeyVault
from tests.cfn import lint_findings
from tests.enclave_constructs.vault_stacks import REGION, prebuilt_image
from tests.foundation.stacks_for_tests import cluster_stack


@pytest.fixture(scope="module")
def cluster_and_vault():
    stack, cluster = cluster_stack("trn2.48xlarge")
    vault = EnclaveKeyVault(
        stack,
        "Vault",
        vpc=cluster.vpc,
        subnet=cluster.subnet,
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


def test_cluster_node_role_is_the_identity_the_parent_server_accepts(cluster_and_vault):
    stack, cluster, _, template = cluster_and_vault
    (launch_template,) = [
        r
        for r in template["Resources"].values()
        if r["Type"] == "AWS::EC2::LaunchTemplate"
        and r["Properties"]["LaunchTemplateData"].get("EnclaveOptions")
    ]
    user_data = json.dumps(launch_template["Properties"]["LaunchTemplateData"]["UserData"])
    node_role = stack.get_logical_id(cluster.role.node.default_child)
    assert "ALLOWED_ROLE_ARNS='" in user_data
    assert json.dumps({"Fn::GetAtt": [node_role, "Arn"]}) in user_data


def test_cluster_with_vault_has_no_cfn_lint_error_or_warning(cluster_and_vault):
    assert lint_findings(cluster_and_vault[3], REGION) == []
