"""``destroy_on_delete``: every stateful construct retains its keys, log groups and data by
default and deletes them only when the opt-out is named, with the same semantics everywhere."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from cdk_trn import (
    Capacity,
    Preflight,
    SlurmScheduler,
    TrainingBuckets,
    TrainingFileSystem,
    TrainingNetwork,
    TrainiumCluster,
)
from cdk_trn.errors import CdkTrnError

#: Resources a construct creates that hold state (data, keys, logs).
STATEFUL = ("AWS::KMS::Key", "AWS::Logs::LogGroup", "AWS::S3::Bucket", "AWS::FSx::FileSystem")


def _user_stack(destroy_on_delete: bool) -> Template:
    stack = cdk.Stack(cdk.App(), "Mine", env=cdk.Environment(region="us-east-2"))
    opt = {"destroy_on_delete": destroy_on_delete}
    network = TrainingNetwork(stack, "Net", availability_zone="use2-az3", **opt)
    buckets = TrainingBuckets(stack, "Data", **opt)
    fsx = TrainingFileSystem(stack, "Fsx", network=network, storage_capacity_gib=1200, **opt)
    cluster = TrainiumCluster(stack, "Cluster", network=network, file_system=fsx, **opt)
    SlurmScheduler(stack, "Slurm", cluster=cluster, **opt)
    buckets.grant_read_write(cluster.role)
    return Template.from_stack(stack)


def _policies(template: Template) -> dict[str, set[str]]:
    by_kind: dict[str, set[str]] = {}
    for resource in template.to_json()["Resources"].values():
        if resource["Type"] in STATEFUL:
            by_kind.setdefault(resource["Type"], set()).add(
                resource.get("DeletionPolicy", "Delete")
            )
    return by_kind


def test_by_default_every_stateful_resource_of_a_user_stack_is_retained():
    policies = _policies(_user_stack(destroy_on_delete=False))
    assert set(policies) == set(STATEFUL)
    assert {kind: p for kind, p in policies.items() if p != {"Retain"}} == {
        # The events topic's key and the munge key's: nothing of value is lost with them.
        "AWS::KMS::Key": {"Retain", "Delete"},
    }


def test_with_destroy_on_delete_nothing_of_a_user_stack_is_retained():
    policies = _policies(_user_stack(destroy_on_delete=True))
    assert all(p == {"Delete"} for p in policies.values()), policies


def test_destroy_on_delete_must_be_a_bool():
    stack = cdk.Stack(cdk.App(), "Mine", env=cdk.Environment(region="us-east-2"))
    network = TrainingNetwork(stack, "Net", availability_zone="use2-az3")
    with pytest.raises(CdkTrnError, match="destroy_on_delete must be True or False"):
        Preflight(
            stack,
            "Preflight",
            network=network,
            instance_type="trn2.48xlarge",
            nodes=2,
            capacity=Capacity.on_demand(),
            destroy_on_delete="yes",  # type: ignore[arg-type]
        )
