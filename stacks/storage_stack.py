"""The stateful stack: the network and everything that must outlive a cluster.

Keys, buckets and the FSx for Lustre file system are retained on delete; the cluster stack can be
destroyed and recreated without touching this one.
"""

from __future__ import annotations

import aws_cdk as cdk
from constructs import Construct

from cdk_trn.network import TrainingNetwork
from stacks.config import AppConfig


class StorageStack(cdk.Stack):
    def __init__(self, scope: Construct, id: str, *, config: AppConfig, **kwargs: object) -> None:
        super().__init__(scope, id, **kwargs)  # type: ignore[arg-type]
        self.network = TrainingNetwork(
            self,
            "Network",
            availability_zone=config.availability_zone,
            nat_egress=config.nat_egress,
        )
