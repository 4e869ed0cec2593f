"""Opt-in idle scale-in through Slurm's power saving: only on on-demand clusters; slurm.conf
suspends idle nodes with the image's programs; the controller may move only its cluster's nodes
between service and Standby and stop or start them; the programs do that through the nodes'
group (test doubles for EC2 and Auto Scaling record the calls)."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from cdk_trn.capacity import Capacity
from cdk_trn.errors import CdkTrnError
from cdk_trn.scheduler import SlurmScheduler
from cdk_trn_runtime.slurm import power
from cdk_trn_runtime.slurm.config import cloud_config, render_slurm_conf
from cdk_trn_runtime.slurm.document import IMAGE_SCRIPTS
from tests.cdk_trn_runtime.node.test_node_bootstrap import FileSystemStandIn
from tests.support.stacks import cluster_stack

CLUSTER = power.Cluster("cdk-trn:cluster", "test-cluster")


def _scheduler(capacity: Capacity | None = None, **props: Any) -> tuple[cdk.Stack, SlurmScheduler]:
    stack, cluster = cluster_stack(
        file_system=FileSystemStandIn(), capacity=capacity or Capacity.on_demand()
    )
    return stack, SlurmScheduler(stack, "Slurm", cluster=cluster, **props)


@pytest.mark.parametrize(
    "capacity",
    [Capacity.reservation("cr-0123456789abcdef0"), Capacity.capacity_block("cr-0123456789abcdef0")],
    ids=["reservation", "capacity-block"],
)
def test_idle_scale_in_is_refused_on_capacity_that_is_paid_anyway(capacity):
    with pytest.raises(
        CdkTrnError, match=r"Test/Slurm: idle_scale_in must be unset on .* capacity"
    ):
        _scheduler(capacity, idle_scale_in=cdk.Duration.minutes(30))


def test_idle_scale_in_out_of_range_is_refused():
    with pytest.raises(CdkTrnError, match=r"Test/Slurm: idle_scale_in must be 5 to 1440 minutes"):
        _scheduler(idle_scale_in=cdk.Duration.minutes(2))


def test_without_the_opt_in_nothing_scales_in():
    stack, scheduler = _scheduler()
    assert "power_save" not in scheduler.slurm_cluster_document()
    group = Template.from_stack(stack).find_resources(
        "AWS::AutoScaling::AutoScalingGroup", {"Properties": {"MaxSize": "2"}}
    )
    [(_, nodes)] = group.items()
    assert nodes["Properties"]["MinSize"] == "2"


@pytest.fixture(scope="module")
def opted_in() -> tuple[SlurmScheduler, Template]:
    stack, scheduler = _scheduler(idle_scale_in=cdk.Duration.minutes(30))
    return scheduler, Template.from_stack(stack)


def test_the_opt_in_lets_the_group_shrink_and_deploys_keep_its_size(opted_in):
    scheduler, template = opted_in
    [(_, nodes)] = template.find_resources(
        "AWS::AutoScaling::AutoScalingGroup", {"Properties": {"MaxSize": "2"}}
    ).items()
    assert nodes["Properties"]["MinSize"] == "0" and nodes["Properties"]["DesiredCapacity"] == "2"
    assert nodes["UpdatePolicy"]["AutoScalingScheduledAction"] == {
        "IgnoreUnmodifiedGroupSizeProperties": True
    }
    document = scheduler.slurm_cluster_document()
    assert document["power_save"]["idle_seconds"] == 1800


def test_the_controller_may_stop_and_start_only_this_clusters_nodes(opted_in):
    scheduler, template = opted_in
    [policy] = [
        p["Properties"]
        for p in template.find_resources("AWS::IAM::ManagedPolicy").values()
        if "suspend and resume idle nodes" in p["Properties"].get("Description", "")
    ]
    statements = {
        tuple(sorted(s["Action"])) if isinstance(s["Action"], list) else (s["Action"],): s
        for s in policy["PolicyDocument"]["Statement"]
    }
    standby = statements[("autoscaling:EnterStandby", "autoscaling:ExitStandby")]
    assert "autoScalingGroupName/" in json.dumps(standby["Resource"])
    start_stop = statements[("ec2:StartInstances", "ec2:StopInstances")]
    assert start_stop["Condition"] == {
        "StringEquals": {"aws:ResourceTag/cdk-trn:cluster": scheduler.cluster.cluster_name}
    }
    assert statements[("ec2:DescribeInstances",)]["Resource"] == "*"


def test_slurm_conf_suspends_idle_nodes_with_the_image_programs():
    document = {
        "controller_host": "ctl",
        "controller_addr": "cdk-trn-slurmctld",
        "shared_root": "/fsx",
        "node_cpus": 192,
        "node_real_memory_mib": 1000,
        "max_node_count": 2,
        "cluster_name": "trn",
        "slurmctld_port": 6817,
        "slurmd_port": 6818,
        "node_features": ["trn2.48xlarge"],
        "partition": "trn",
        "state_save_location": "/fsx/slurm/state",
        "max_nodes_per_job": 2,
        "srun_port_range": [60001, 63000],
        "power_save": {"idle_seconds": 1800, "cluster_tag": ["k", "v"], "region": "us-east-2"},
    }
    conf = render_slurm_conf(cloud_config(document))
    assert "SuspendTime=1800\n" in conf
    assert f"SuspendProgram={IMAGE_SCRIPTS}/power_suspend.sh\n" in conf
    assert f"ResumeProgram={IMAGE_SCRIPTS}/power_resume.sh\n" in conf
    del document["power_save"]
    assert "Suspend" not in render_slurm_conf(cloud_config(document))


class _Ec2Double:
    """Test double of the EC2 client: instances by private address, their state after start."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def describe_instances(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(("describe_instances", kw))
        if "InstanceIds" in kw:
            return {
                "Reservations": [
                    {
                        "Instances": [
                            {"InstanceId": i, "State": {"Name": "running"}}
                            for i in kw["InstanceIds"]
                        ]
                    }
                ]
            }
        value = kw["Filters"][0]["Values"][0]
        known = {"10.0.1.23": "i-0aaaaaaaaaaaaaaaa", "i-0bbbbbbbbbbbbbbbb": "i-0bbbbbbbbbbbbbbbb"}
        ids = [known[value]] if value in known else []
        tags = [{"Key": "aws:autoscaling:groupName", "Value": "nodes"}]
        return {"Reservations": [{"Instances": [{"InstanceId": i, "Tags": tags} for i in ids]}]}

    def stop_instances(self, **kw: Any) -> None:
        self.calls.append(("stop_instances", kw))

    def start_instances(self, **kw: Any) -> None:
        self.calls.append(("start_instances", kw))


class _AutoScalingDouble:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def enter_standby(self, **kw: Any) -> None:
        self.calls.append(("enter_standby", kw))

    def exit_standby(self, **kw: Any) -> None:
        self.calls.append(("exit_standby", kw))


def test_suspend_puts_the_nodes_in_standby_lowering_desired_capacity_then_stops_them():
    ec2, asg = _Ec2Double(), _AutoScalingDouble()
    assert power.suspend(ec2, asg, CLUSTER, ["ip-10-0-1-23", "i-0bbbbbbbbbbbbbbbb"]) == 0
    ids = ["i-0aaaaaaaaaaaaaaaa", "i-0bbbbbbbbbbbbbbbb"]
    assert asg.calls == [
        (
            "enter_standby",
            {
                "InstanceIds": ids,
                "AutoScalingGroupName": "nodes",
                "ShouldDecrementDesiredCapacity": True,
            },
        )
    ]
    assert ec2.calls[-1] == ("stop_instances", {"InstanceIds": ids})
    # Only the cluster's instances: the filter names its tag; their group comes from theirs.
    filters = ec2.calls[0][1]["Filters"]
    assert {"Name": "tag:cdk-trn:cluster", "Values": ["test-cluster"]} in filters
    assert {"Name": "private-ip-address", "Values": ["10.0.1.23"]} in filters


def test_resume_starts_waits_for_running_then_returns_to_service():
    ec2, asg = _Ec2Double(), _AutoScalingDouble()
    assert power.resume(ec2, asg, CLUSTER, ["ip-10-0-1-23"], sleep=lambda s: None) == 0
    assert ("start_instances", {"InstanceIds": ["i-0aaaaaaaaaaaaaaaa"]}) in ec2.calls
    assert asg.calls == [
        ("exit_standby", {"InstanceIds": ["i-0aaaaaaaaaaaaaaaa"], "AutoScalingGroupName": "nodes"})
    ]


def test_an_unknown_node_is_left_alone_and_fails():
    ec2, asg = _Ec2Double(), _AutoScalingDouble()
    assert power.suspend(ec2, asg, CLUSTER, ["ip-10-9-9-9"]) == 1
    assert asg.calls == [] and not [c for c in ec2.calls if c[0] == "stop_instances"]
    with pytest.raises(ValueError, match="neither ip-a-b-c-d nor an instance id"):
        power.instance_filter("n1")
