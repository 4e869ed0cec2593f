"""Small stacks for the storage tests: buckets, a file system and a client security group.

The VPC and subnet are imported by id (no resources, no lookups) so that the template, cfn-lint
and cdk-nag see only the storage constructs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2

from cdk_trn.interfaces import ITrainingNetwork
from cdk_trn.network import TrainingNetwork
from cdk_trn.storage import (
    TrainingBuckets,
    TrainingFileSystem,
    default_data_repository_associations,
)

REGION = "us-east-2"
AZ = "us-east-2a"
VPC_ID = "vpc-0123456789abcdef0"
SUBNET_ID = "subnet-0123456789abcdef0"


@dataclass
class StorageUnderTest:
    app: cdk.App
    stack: cdk.Stack
    buckets: TrainingBuckets
    file_system: TrainingFileSystem
    client_group: ec2.SecurityGroup


def network(stack: cdk.Stack) -> ITrainingNetwork:
    return TrainingNetwork.from_attributes(
        stack, "Network", vpc_id=VPC_ID, subnet_id=SUBNET_ID, availability_zone=AZ
    )


def storage_stack(*, app: cdk.App | None = None, **file_system_props: Any) -> StorageUnderTest:
    """Buckets, a file system with the default associations, and clients allowed from one SG."""
    app = app or cdk.App()
    stack = cdk.Stack(app, "Storage", env=cdk.Environment(region=REGION))
    net = network(stack)
    buckets = TrainingBuckets(stack, "Buckets")
    file_system_props.setdefault(
        "data_repository_associations", default_data_repository_associations(buckets)
    )
    file_system_props.setdefault("encryption_key", buckets.encryption_key)
    fs = TrainingFileSystem(stack, "Fsx", network=net, **file_system_props)
    clients = ec2.SecurityGroup(
        stack, "ClientGroup", vpc=net.vpc, description="Test double of the cluster node group"
    )
    fs.allow_clients(clients)
    return StorageUnderTest(app, stack, buckets, fs, clients)


def unacknowledged_findings(assembly_dir: str) -> list[str]:
    """Violations in the policy-validation report of a synthesized assembly, if it wrote one."""
    report = Path(assembly_dir) / "validation-report.json"
    if not report.exists():
        return []
    data = json.loads(report.read_text())
    return [
        f"{violation['ruleName']} {construct['constructPath']}"
        for plugin in data.get("pluginReports", [])
        for violation in plugin.get("violations", [])
        for construct in violation.get("violatingConstructs", [])
    ]
