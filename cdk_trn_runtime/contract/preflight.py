"""The preflight custom resource: what ``cdk_trn.Preflight`` sends, what its handler
(``cdk_trn_runtime.preflight.handler``) parses and answers, and the wait both sides agree on.

Standard library only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cdk_trn_runtime.contract.message import Message, key


class CapacityKind(enum.Enum):
    """Where a cluster's nodes come from (``cdk_trn.Capacity``'s kind; the preflight's
    ``Capacity`` property)."""

    ON_DEMAND = "on-demand"
    RESERVATION = "reservation"
    CAPACITY_BLOCK = "capacity-block"
    ULTRASERVER_BLOCK = "ultraserver-block"

    @property
    def is_block(self) -> bool:
        return self in (CapacityKind.CAPACITY_BLOCK, CapacityKind.ULTRASERVER_BLOCK)


#: How long a preflight may wait for a capacity block to start (the provider's total timeout;
#: CloudFormation gives a custom resource one hour, so our own message reaches the stack events).
WAIT_BUDGET_MINUTES = 55
#: How often a waiting preflight looks at the block again (the provider's query interval).
POLL_SECONDS = 60


@dataclass(frozen=True)
class PreflightProperties(Message):
    """What the deploy asks for: the ``Custom::TrnPreflight`` resource's properties."""

    DESCRIPTION = "preflight properties"

    instance_type: str = key("InstanceType", doc="a catalog instance type")
    availability_zone: str = key(
        "AvailabilityZone", doc="the nodes' AZ, an id (use2-az3) or a name (us-east-2b)"
    )
    nodes: int = key("Nodes", doc="how many nodes the cluster launches")
    vcpus_per_node: int = key("VcpusPerNode", doc="the instance type's vCPUs (the quota's unit)")
    capacity: CapacityKind = key("Capacity")
    reservation_ids: tuple[str, ...] = key(
        "ReservationIds", default=(), doc="the reservations; given exactly unless on-demand"
    )
    wait_for_capacity_block: bool = key("WaitForCapacityBlock", default=False)
    cluster_name: str = key(
        "ClusterName", default="", doc="its own running nodes do not count against the quota"
    )
    endpoint_services: tuple[str, ...] = key(
        "EndpointServices", default=(), doc="short names of the interface endpoint services"
    )
    reservation_group_arn: str = key(
        "ReservationGroupArn", default="", doc="the resource group several blocks are targeted by"
    )
    subnet_id: str | None = key(
        "SubnetId", default=None, doc="the nodes' subnet, which must lie in the AZ (imported ones)"
    )

    def validate(self) -> None:
        if self.nodes < 1:
            raise self.invalid("nodes", "at least 1")
        if self.vcpus_per_node < 1:
            raise self.invalid("vcpus_per_node", "at least 1")
        if (self.capacity is CapacityKind.ON_DEMAND) != (not self.reservation_ids):
            raise self.invalid(
                "reservation_ids", "given exactly when Capacity is not on-demand (reservations)"
            )
        if self.wait_for_capacity_block and not self.capacity.is_block:
            raise self.invalid("wait_for_capacity_block", "true only for a capacity block")


@dataclass(frozen=True)
class PreflightAttributes(Message):
    """What the handler answers (the resource's attributes, ``Fn::GetAtt``)."""

    DESCRIPTION = "preflight attributes"

    summary: str = key("Summary", doc="what passed")
    scale_to_zero_at: str | None = key(
        "ScaleToZeroAt",
        default=None,
        doc="blocks only: when the nodes' group goes to zero, YYYY-MM-DDThh:mm:ssZ (UTC)",
    )
