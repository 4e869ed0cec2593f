"""Small stacks for the foundation tests: a network and a cluster where the type is offered."""

from __future__ import annotations

import aws_cdk as cdk

from cdk_trn.capacity import Capacity
from cdk_trn.cluster import TrainiumCluster
from cdk_trn.network import TrainingNetwork

#: A region and AZ id that offer each catalog type, and capacity it can launch with.
PLACEMENTS = {
    "trn2.48xlarge": ("us-east-2", "use2-az3", Capacity.on_demand(), 2),
    "trn2u.48xlarge": (
        "us-east-2",
        "use2-az3",
        Capacity.ultraserver_block("cr-0123456789abcdef0"),
        4,
    ),
    "trn2.3xlarge": ("sa-east-1", "sae1-az1", Capacity.on_demand(), 1),
    "trn1.32xlarge": ("us-west-2", "usw2-az4", Capacity.on_demand(), 2),
    "trn1n.32xlarge": ("us-east-1", "use1-az6", Capacity.reservation("cr-0123456789abcdef0"), 2),
}


def cluster_stack(
    instance_type: str = "trn2.48xlarge", *, nodes: int | None = None, **cluster_props
) -> tuple[cdk.Stack, TrainiumCluster]:
    region, az, capacity, default_nodes = PLACEMENTS[instance_type]
    app = cdk.App()
    stack = cdk.Stack(app, "Test", env=cdk.Environment(region=region))
    network = TrainingNetwork(stack, "Network", availability_zone=az)
    cluster_props.setdefault("capacity", capacity)
    cluster = TrainiumCluster(
        stack,
        "Cluster",
        network=network,
        instance_type=instance_type,
        nodes=nodes if nodes is not None else default_nodes,
        **cluster_props,
    )
    return stack, cluster
