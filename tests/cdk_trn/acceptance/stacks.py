"""A cluster stack with an acceptance run, as the construct tests build it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aws_cdk as cdk

from cdk_trn.acceptance import AcceptanceRun
from cdk_trn.cluster import TrainiumCluster
from cdk_trn.network import TrainingNetwork

REGION = "us-east-2"


@dataclass
class RunUnderTest:
    app: cdk.App
    stack: cdk.Stack
    cluster: TrainiumCluster
    run: AcceptanceRun


def run_stack(app: cdk.App | None = None, **run_props: Any) -> RunUnderTest:
    app = app or cdk.App()
    stack = cdk.Stack(app, "Test", env=cdk.Environment(region=REGION))
    network = TrainingNetwork(stack, "Network", availability_zone="use2-az3")
    cluster = TrainiumCluster(stack, "Cluster", network=network, nodes=2)
    run = AcceptanceRun(stack, "Acceptance", cluster=cluster, **run_props)
    return RunUnderTest(app, stack, cluster, run)


def cluster_only(app: cdk.App | None = None) -> tuple[cdk.Stack, TrainiumCluster]:
    app = app or cdk.App()
    stack = cdk.Stack(app, "Test", env=cdk.Environment(region=REGION))
    network = TrainingNetwork(stack, "Network", availability_zone="use2-az3")
    return stack, TrainiumCluster(stack, "Cluster", network=network, nodes=2)
