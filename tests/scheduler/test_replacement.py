"""Replacement: with a SlurmScheduler, the node role may mark instances Unhealthy in the nodes'
own Auto Scaling group (and no other), so a node drained for a hardware reason is replaced."""

from __future__ import annotations

from aws_cdk.assertions import Template

from cdk_trn.scheduler import SlurmScheduler
from tests.foundation.stacks_for_tests import cluster_stack
from tests.foundation.test_node_bootstrap_run import FileSystemStandIn


def _set_health_statements(template: Template) -> list[dict]:
    found = []
    for policy in template.find_resources("AWS::IAM::ManagedPolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            if any(a.startswith("autoscaling:") for a in actions):
                found.append({**statement, "Roles": policy["Properties"]["Roles"]})
    return found


def test_node_role_may_set_instance_health_on_its_own_group_only():
    stack, cluster = cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())
    SlurmScheduler(stack, "Slurm", cluster=cluster)
    template = Template.from_stack(stack)
    [statement] = _set_health_statements(template)
    assert statement["Action"] == "autoscaling:SetInstanceHealth"
    assert statement["Effect"] == "Allow"
    assert statement["Roles"] == [stack.resolve(cluster.role.role_name)]
    group = stack.get_logical_id(cluster.auto_scaling_group)
    assert statement["Resource"] == {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                ":autoscaling:us-east-2:",
                {"Ref": "AWS::AccountId"},
                ":autoScalingGroup:*:autoScalingGroupName/",
                {"Ref": group},
            ],
        ]
    }


def test_the_nodes_boot_signal_never_waits_for_the_group():
    # The role's own policy (which lets nodes signal, and which the group waits for) must not
    # name the group the nodes belong to; the policy that does is not one the group waits for.
    stack, cluster = cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())
    SlurmScheduler(stack, "Slurm", cluster=cluster)
    group = stack.get_logical_id(cluster.auto_scaling_group)
    resources = Template.from_stack(stack).to_json()["Resources"]
    assert cluster.role.managed_policy is not None
    own = resources[stack.get_logical_id(cluster.role.managed_policy.node.default_child)]
    assert "cloudformation:SignalResource" in str(own) and group not in str(own)
    naming_the_group = [
        k for k, r in resources.items() if r["Type"].startswith("AWS::IAM::") and group in str(r)
    ]
    assert naming_the_group  # the SetInstanceHealth policy
    assert not set(naming_the_group) & set(resources[group]["DependsOn"])


def test_nodes_without_a_scheduler_get_no_set_instance_health():
    stack, _ = cluster_stack("trn2.48xlarge")
    assert _set_health_statements(Template.from_stack(stack)) == []


def test_node_group_collects_its_metrics_every_minute():
    stack, cluster = cluster_stack("trn2.48xlarge")
    props = Template.from_stack(stack).to_json()["Resources"][
        stack.get_logical_id(cluster.auto_scaling_group)
    ]["Properties"]
    assert props["MetricsCollection"] == [{"Granularity": "1Minute"}]
