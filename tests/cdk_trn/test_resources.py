"""ManagedPolicyRole: a role's statements and CDK's grants land in a customer-managed policy, never
inline; in the default app every instance and service role is such a role, and nothing boots or
delivers before its policies exist."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Template

from cdk_trn._resources import ManagedPolicyRole

# --- the mechanism ----------------------------------------------------------------------------


def _role_stack() -> tuple[cdk.Stack, ManagedPolicyRole]:
    stack = cdk.Stack(cdk.App(), "Roles", env=cdk.Environment(region="us-east-2"))
    role = ManagedPolicyRole(stack, "Role", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
    return stack, role


def _logical_id(stack: cdk.Stack, construct: Any) -> str:
    return stack.resolve(stack.get_logical_id(construct.node.default_child))


def test_grants_and_added_statements_land_in_one_managed_policy_of_the_role():
    stack, role = _role_stack()
    bucket = s3.Bucket(stack, "Bucket")
    key = kms.Key(stack, "Key")
    bucket.grant_read(role)
    key.grant_decrypt(role)
    role.add_to_policy(iam.PolicyStatement(actions=["sqs:SendMessage"], resources=["arn:q"]))
    template = Template.from_stack(stack).to_json()["Resources"]
    assert [r for r in template.values() if r["Type"] == "AWS::IAM::Policy"] == []
    assert "Policies" not in template[_logical_id(stack, role)]["Properties"]
    [policy] = [r for r in template.values() if r["Type"] == "AWS::IAM::ManagedPolicy"]
    assert policy["Properties"]["Roles"] == [{"Ref": _logical_id(stack, role)}]
    actions = str([s["Action"] for s in policy["Properties"]["PolicyDocument"]["Statement"]])
    assert "s3:GetObject*" in actions and "kms:Decrypt" in actions and "sqs:SendMessage" in actions


def test_a_role_without_statements_has_no_policy():
    stack, role = _role_stack()
    assert role.managed_policy is None
    Template.from_stack(stack).resource_count_is("AWS::IAM::ManagedPolicy", 0)


def test_a_grant_orders_what_it_is_applied_before_after_the_policy():
    stack, role = _role_stack()
    waiting = cdk.CfnResource(stack, "Waiting", type="AWS::SQS::Queue")
    s3.Bucket(stack, "Bucket").grant_read(role).apply_before(waiting)
    assert role.managed_policy is not None
    depends = Template.from_stack(stack).to_json()["Resources"]["Waiting"]["DependsOn"]
    assert _logical_id(stack, role.managed_policy) in depends


def test_a_launch_template_of_the_role_waits_for_its_policy():
    stack, role = _role_stack()
    s3.Bucket(stack, "Bucket").grant_read(role)
    template = ec2.LaunchTemplate(
        stack, "Template", role=role, machine_image=ec2.MachineImage.latest_amazon_linux2023()
    )
    assert role.managed_policy is not None
    resources = Template.from_stack(stack).to_json()["Resources"]
    depends = resources[_logical_id(stack, template)]["DependsOn"]
    assert _logical_id(stack, role.managed_policy) in depends


# --- the default app ------------------------------------------------------------------------


def _resources(default_app: Any) -> dict[str, dict]:
    """The session's default app (tests/support/default_app.py): its resources by stack name."""
    return {name: t["Resources"] for name, t in default_app.templates().items()}


def _owned_roles(default: Any) -> list[tuple[str, ManagedPolicyRole]]:
    return [
        (default.storage_stack.stack_name, default.storage_stack.network.flow_log_role),
        (default.cluster_stack.stack_name, default.cluster.role),
        (default.cluster_stack.stack_name, default.cluster_stack.scheduler.role),
        (default.vault_stack.stack_name, default.vault_stack.vault.host_role),
    ]


def _resource_of(templates: dict[str, dict], stack_name: str, construct: Any) -> tuple[str, dict]:
    logical_id = cdk.Stack.of(construct).resolve(
        cdk.Stack.of(construct).get_logical_id(
            construct if isinstance(construct, cdk.CfnResource) else construct.node.default_child
        )
    )
    return logical_id, templates[stack_name][logical_id]


def test_instance_and_service_roles_carry_no_inline_policy(default_app):
    default, templates = default_app.default, _resources(default_app)
    for stack_name, role in _owned_roles(default):
        assert isinstance(role, ManagedPolicyRole)
        role_id, resource = _resource_of(templates, stack_name, role)
        assert "Policies" not in resource["Properties"], role.node.path
        inline = [
            k
            for k, r in templates[stack_name].items()
            if r["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in r["Properties"]["Roles"]
        ]
        assert inline == [], role.node.path
        assert role.managed_policy is not None, role.node.path


def test_every_ec2_and_flow_log_role_of_the_default_app_is_covered(default_app):
    default, templates = default_app.default, _resources(default_app)
    trusted = {
        (stack_name, logical_id)
        for stack_name, resources in templates.items()
        for logical_id, r in resources.items()
        if r["Type"] == "AWS::IAM::Role"
        and any(
            s["Principal"].get("Service") in ("ec2.amazonaws.com", "vpc-flow-logs.amazonaws.com")
            for s in r["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        )
    }
    assert trusted == {
        (s, _resource_of(templates, s, role)[0]) for s, role in _owned_roles(default)
    }


def _depends_on(templates: dict[str, dict], stack_name: str, construct: Any) -> set[str]:
    return set(_resource_of(templates, stack_name, construct)[1].get("DependsOn", []))


def _policy_ids(
    templates: dict[str, dict], stack_name: str, *policies: iam.ManagedPolicy | None
) -> set[str]:
    assert all(p is not None for p in policies)
    return {_resource_of(templates, stack_name, p)[0] for p in policies}


def _child_policy(role: iam.Role, id: str) -> iam.ManagedPolicy:
    policy = role.node.find_child(id)
    assert isinstance(policy, iam.ManagedPolicy)
    return policy


def test_nodes_boot_only_after_their_role_policies_exist(default_app):
    default, templates = default_app.default, _resources(default_app)
    stack = default.cluster_stack.stack_name
    role = default.cluster.role
    boot = _policy_ids(templates, stack, role.managed_policy, _child_policy(role, "SsmAgentPolicy"))
    assert boot <= _depends_on(templates, stack, default.cluster.auto_scaling_group)


def test_the_controller_boots_only_after_its_role_policies_exist(default_app):
    default, templates = default_app.default, _resources(default_app)
    stack = default.cluster_stack.stack_name
    scheduler = default.cluster_stack.scheduler
    role = scheduler.role
    boot = _policy_ids(
        templates,
        stack,
        role.managed_policy,
        _child_policy(role, "SsmAgentPolicy"),
        _child_policy(role, "MetricsPolicy"),
    )
    assert boot <= _depends_on(templates, stack, scheduler.launch_template)


def test_vault_hosts_boot_only_after_their_role_policy_exists(default_app):
    default, templates = default_app.default, _resources(default_app)
    stack = default.vault_stack.stack_name
    vault = default.vault_stack.vault
    boot = _policy_ids(templates, stack, vault.host_role.managed_policy)
    assert boot <= _depends_on(templates, stack, vault.launch_template)


def test_flow_logs_are_delivered_only_after_their_role_policy_exists(default_app):
    default, templates = default_app.default, _resources(default_app)
    stack = default.storage_stack.stack_name
    network = default.storage_stack.network
    [flow_log] = [c for c in network.node.find_all() if isinstance(c, ec2.CfnFlowLog)]
    assert _policy_ids(templates, stack, network.flow_log_role.managed_policy) <= _depends_on(
        templates, stack, flow_log
    )


def test_flow_log_role_trusts_only_this_accounts_flow_logs(default_app):
    default, templates = default_app.default, _resources(default_app)
    network = default.storage_stack.network
    _, role = _resource_of(templates, default.storage_stack.stack_name, network.flow_log_role)
    [statement] = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "vpc-flow-logs.amazonaws.com"}
    assert statement["Condition"]["StringEquals"] == {
        "aws:SourceAccount": {"Ref": "AWS::AccountId"}
    }
    assert "vpc-flow-log/*" in str(statement["Condition"]["ArnLike"]["aws:SourceArn"])


# --- narrowed statements --------------------------------------------------------------------


def _statements_of(
    templates: dict[str, dict], stack_name: str, role: ManagedPolicyRole
) -> list[dict]:
    role_ref = {"Ref": _resource_of(templates, stack_name, role)[0]}
    return [
        s
        for r in templates[stack_name].values()
        if r["Type"] == "AWS::IAM::ManagedPolicy" and role_ref in r["Properties"].get("Roles", [])
        for s in r["Properties"]["PolicyDocument"]["Statement"]
    ]


def _actions(statement: dict) -> list[str]:
    actions = statement["Action"]
    return actions if isinstance(actions, list) else [actions]


def test_nodes_only_get_the_controller_address_and_vault_url_parameters(default_app):
    default, templates = default_app.default, _resources(default_app)
    stack = default.cluster_stack.stack_name
    parameter_reads = [
        s
        for s in _statements_of(templates, stack, default.cluster.role)
        if any(a.startswith("ssm:") and "Parameter" in a for a in _actions(s))
    ]
    # GetParameter only (no GetParameters, history or describe), each on one parameter: the
    # controller's address (boot) and the vault's URL (checkpoint signing).
    assert [_actions(s) for s in parameter_reads] == [["ssm:GetParameter"], ["ssm:GetParameter"]]
    resources = [json.dumps(s["Resource"]) for s in parameter_reads]
    assert all("*" not in r for r in resources)
    assert any(r.endswith(f'{default.cluster.vault_url_parameter}"]]}}') for r in resources)


def test_the_results_uploader_uses_the_results_key_only_through_s3(default_app):
    default, templates = default_app.default, _resources(default_app)
    stack = default.cluster_stack.stack_name
    [kms_statement] = [
        s
        for s in _statements_of(templates, stack, default.cluster_stack.scheduler.role)
        if s.get("Sid") == "EncryptAcceptanceResults"
    ]
    assert kms_statement["Condition"] == {
        "StringEquals": {"kms:ViaService": "s3.us-east-2.amazonaws.com"}
    }


def test_vault_hosts_hold_one_signal_statement_for_their_own_stack(default_app):
    default, templates = default_app.default, _resources(default_app)
    stack = default.vault_stack.stack_name
    signals = [
        s
        for s in _statements_of(templates, stack, default.vault_stack.vault.host_role)
        if "cloudformation:SignalResource" in _actions(s)
    ]
    assert signals == [
        {
            "Action": "cloudformation:SignalResource",
            "Effect": "Allow",
            "Resource": {"Ref": "AWS::StackId"},
        }
    ]
