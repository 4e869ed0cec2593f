"""The node and controller roles: the SSM agent's actions without reading every parameter, and
creation-policy signals limited to their own stack."""

from __future__ import annotations

import functools
import json

from aws_cdk.assertions import Template

from cdk_trn.security import SSM_AGENT_ACTIONS
from tests.support.stacks import cluster_stack


@functools.cache
def _template() -> dict:
    stack, _ = cluster_stack("trn2.48xlarge")
    return Template.from_stack(stack).to_json()


def _statements(template: dict) -> list[dict]:
    statements = []
    for resource in template["Resources"].values():
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            statements += resource["Properties"]["PolicyDocument"]["Statement"]
    return statements


def _actions(statement: dict) -> list[str]:
    actions = statement["Action"]
    return actions if isinstance(actions, list) else [actions]


def test_node_role_uses_no_aws_managed_policy():
    template = _template()
    roles = [r for r in template["Resources"].values() if r["Type"] == "AWS::IAM::Role"]
    node_roles = [
        r for r in roles if "Trainium training nodes" in r["Properties"].get("Description", "")
    ]
    assert node_roles
    assert all("ManagedPolicyArns" not in r["Properties"] for r in node_roles)
    assert "AmazonSSMManagedInstanceCore" not in json.dumps(template)


def test_ssm_agent_policy_has_the_agent_actions_and_no_parameter_reads_on_every_parameter():
    template = _template()
    [agent] = [
        r
        for r in template["Resources"].values()
        if r["Type"] == "AWS::IAM::ManagedPolicy"
        and "SSM agent" in r["Properties"].get("Description", "")
    ]
    [statement] = agent["Properties"]["PolicyDocument"]["Statement"]
    assert set(_actions(statement)) == set(SSM_AGENT_ACTIONS)
    assert {"ssmmessages:OpenDataChannel", "ssm:UpdateInstanceInformation"} <= set(
        SSM_AGENT_ACTIONS
    )
    assert len(agent["Properties"]["Roles"]) == 1
    for st in _statements(template):
        if {"ssm:GetParameter", "ssm:GetParameters"} & set(_actions(st)):
            assert st["Resource"] != "*", st


def test_signal_resource_is_limited_to_the_nodes_own_stack():
    signals = [
        st for st in _statements(_template()) if "cloudformation:SignalResource" in _actions(st)
    ]
    assert signals
    assert all(st["Resource"] == {"Ref": "AWS::StackId"} for st in signals)


def test_nodes_may_read_their_clusters_vault_url_parameter_and_no_other():
    stack, cluster = cluster_stack("trn2.48xlarge")
    template = Template.from_stack(stack).to_json()
    (read,) = [st for st in _statements(template) if st.get("Sid") == "ReadEnclaveVaultUrl"]
    assert _actions(read) == ["ssm:GetParameter"]
    assert cluster.vault_url_parameter == f"/cdk-trn/{cluster.cluster_name}/vault-url"
    arn = stack.resolve(read["Resource"])
    assert arn == {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                f":ssm:{stack.region}:",
                {"Ref": "AWS::AccountId"},
                f":parameter/cdk-trn/{cluster.cluster_name}/vault-url",
            ],
        ]
    }
    assert "*" not in json.dumps(arn)


def _boot_statements(template: dict, action: str) -> list[dict]:
    return [s for s in _statements(template) if action in _actions(s)]


def test_nodes_read_exactly_their_boot_bundle_object_of_the_assets_bucket():
    stack, cluster = cluster_stack("trn2.48xlarge")
    template = Template.from_stack(stack).to_json()
    object_arn = stack.resolve(cluster.boot.object_arn)
    reads = _boot_statements(template, "s3:GetObject")
    assert [s["Resource"] for s in reads] == [object_arn]
    assert _actions(reads[0]) == ["s3:GetObject"]
    # The object's key is the archive's content hash: the ARN names one object, no wildcard.
    assert "*" not in json.dumps(object_arn)


def test_nodes_write_their_boot_log_only_into_the_clusters_boot_log_group():
    stack, cluster = cluster_stack("trn2.48xlarge")
    template = Template.from_stack(stack).to_json()
    group_arn = stack.resolve(cluster.boot.log_group.log_group_arn)
    [write] = [s for s in _statements(template) if s["Resource"] == group_arn]
    assert set(_actions(write)) == {"logs:CreateLogStream", "logs:PutLogEvents"}
    group_id = stack.get_logical_id(cluster.boot.log_group.node.default_child)
    group = template["Resources"][group_id]
    assert group["DeletionPolicy"] == "Retain"
    assert group["Properties"]["RetentionInDays"] == 365
    assert group["Properties"]["KmsKeyId"] == stack.resolve(cluster.boot_log_key.key_arn)
