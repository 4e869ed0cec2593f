"""Replacement: the node role may mark instances Unhealthy (autoscaling:SetInstanceHealth) in
two ways and no other:

- at boot, after a check a new instance may pass failed (``fail_retryable`` in boot_common.sh), a
  node marks itself Unhealthy so its group replaces it (``TrainiumCluster._allow_boot_replacement``,
  the operations branch): the node cannot name its group (the group waits for the role), so the
  grant is held to groups tagged with the cluster's name, which the node group carries; with it,
  DescribeAutoScalingGroups (read-only, no resource type) for its group's creation time;
- with a SlurmScheduler, a node drained for a hardware reason is replaced: SetInstanceHealth on
  the nodes' own Auto Scaling group, by its name.
"""

from __future__ import annotations

import json

from aws_cdk.assertions import Template

from cdk_trn.scheduler import SlurmScheduler
from cdk_trn_runtime.contract import CLUSTER_TAG
from tests.cdk_trn_runtime.node.test_node_bootstrap import FileSystemStandIn
from tests.support.stacks import cluster_stack


def _autoscaling_statements(template: Template) -> list[dict]:
    found = []
    for policy in template.find_resources("AWS::IAM::ManagedPolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            # The reaper's reads (with ec2:DescribeInstances) have a test of their own below.
            reaper = "autoscaling:DescribeAutoScalingInstances" in actions
            if any(a.startswith("autoscaling:") for a in actions) and not reaper:
                found.append({**statement, "Roles": policy["Properties"]["Roles"]})
    return found


def test_the_controller_reads_groups_and_instances_only_besides_its_grants():
    stack, cluster = cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())
    SlurmScheduler(stack, "Slurm", cluster=cluster)
    template = Template.from_stack(stack)
    reads = [
        statement
        for policy in template.find_resources("AWS::IAM::ManagedPolicy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if "autoscaling:DescribeAutoScalingInstances" in statement["Action"]
    ]
    # The reaper's: which launch template version an instance and its group run.
    assert reads == [
        {
            "Action": [
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribeAutoScalingInstances",
                "ec2:DescribeInstances",
            ],
            "Effect": "Allow",
            "Resource": "*",
        }
    ]


def _canonical(statement: dict) -> str:
    return json.dumps(statement, sort_keys=True)


def _group_arn(name: dict | None) -> dict:
    """The ARN of the group named ``name`` (a Ref), or of every group (None)."""
    prefix = ":autoScalingGroup:*:autoScalingGroupName/"
    tail = [prefix, name] if name is not None else [prefix + "*"]
    return {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                ":autoscaling:us-east-2:",
                {"Ref": "AWS::AccountId"},
            ]
            + tail,
        ]
    }


def _boot_replacement(stack, cluster) -> list[dict]:
    """The statements that let a booting node replace itself, on the node role."""
    roles = [stack.resolve(cluster.role.role_name)]
    return [
        {
            "Sid": "ReplaceItselfAfterARetryableBootFailure",
            "Action": "autoscaling:SetInstanceHealth",
            "Effect": "Allow",
            "Resource": _group_arn(None),
            "Condition": {
                "StringEquals": {f"autoscaling:ResourceTag/{CLUSTER_TAG}": cluster.cluster_name}
            },
            "Roles": roles,
        },
        {
            "Sid": "ReadItsGroupsCreationTime",
            "Action": "autoscaling:DescribeAutoScalingGroups",
            "Effect": "Allow",
            "Resource": "*",
            "Roles": roles,
        },
    ]


def _node_group_tags(stack, cluster, template: Template) -> dict[str, str]:
    group = template.to_json()["Resources"][stack.get_logical_id(cluster.auto_scaling_group)]
    return {t["Key"]: t["Value"] for t in group["Properties"].get("Tags", [])}


def test_node_role_may_set_instance_health_on_its_own_group_and_its_clusters_tagged_groups_only():
    stack, cluster = cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())
    SlurmScheduler(stack, "Slurm", cluster=cluster)
    template = Template.from_stack(stack)
    group = stack.get_logical_id(cluster.auto_scaling_group)
    # The scheduler's replacement of drained nodes: the nodes' own group, by name, unconditioned.
    drained = {
        "Action": "autoscaling:SetInstanceHealth",
        "Effect": "Allow",
        "Resource": _group_arn({"Ref": group}),
        "Roles": [stack.resolve(cluster.role.role_name)],
    }
    assert sorted(_autoscaling_statements(template), key=_canonical) == sorted(
        [*_boot_replacement(stack, cluster), drained], key=_canonical
    )
    # The tag the boot replacement's condition asks for is on the node group.
    assert _node_group_tags(stack, cluster, template)[CLUSTER_TAG] == cluster.cluster_name


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


def test_nodes_without_a_scheduler_may_only_replace_themselves_at_boot():
    stack, cluster = cluster_stack("trn2.48xlarge")
    template = Template.from_stack(stack)
    # No SetInstanceHealth naming a group (nothing drains nodes): only the tag-held boot grant.
    assert sorted(_autoscaling_statements(template), key=_canonical) == sorted(
        _boot_replacement(stack, cluster), key=_canonical
    )
    assert _node_group_tags(stack, cluster, template)[CLUSTER_TAG] == cluster.cluster_name


def test_node_group_collects_its_metrics_every_minute():
    stack, cluster = cluster_stack("trn2.48xlarge")
    props = Template.from_stack(stack).to_json()["Resources"][
        stack.get_logical_id(cluster.auto_scaling_group)
    ]["Properties"]
    assert props["MetricsCollection"] == [{"Granularity": "1Minute"}]
