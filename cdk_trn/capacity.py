"""Capacity: where the nodes' capacity comes from, as a value object.

* ``Capacity.on_demand()``: on-demand instances in a cluster placement group.
* ``Capacity.reservation(id, placement_group_name=...)``: a targeted On-Demand Capacity
  Reservation, launched into the existing cluster placement group it was made in, if any.
* ``Capacity.capacity_block(id)``: an EC2 Capacity Block for ML (market type ``capacity-block``
  plus the targeted reservation, never a placement group: AWS ParallelCluster, eksctl and
  terraform-aws-eks users hit InsufficientInstanceCapacity with one).
* ``Capacity.ultraserver_block(id or [ids])``: Capacity Blocks of Trn2 UltraServers (trn2u.48xlarge
  only; nodes a multiple of 4; each node writes the NEURON_RT_ULTRASERVER_* environment). Several
  UltraServers come as several reservations; the launch template then targets them together
  through a Capacity Reservation resource group in EC2's form for Capacity Blocks (pool
  parameters ``instance-type`` and ``reservation-type=capacity-block``; EC2 user guide,
  cb-group.html; ``cdk_trn.launch_template.capacity_reservation_group``).

A block's instances stop 30 minutes before it ends: ``TrainiumCluster`` schedules its group to
zero before that, at the time its preflight reads from the blocks at deploy time.

There is no CloudFormation resource that buys a capacity block; the user buys it (API
``PurchaseCapacityBlock``) and passes the reservation id it returns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cdk_trn.catalog import INSTANCE_SPECS, InstanceSpec
from cdk_trn.errors import CdkTrnError, invalid
from cdk_trn_runtime.contract.preflight import CapacityKind

_RESERVATION_ID = re.compile(r"^cr-[0-9a-f]{8}([0-9a-f]{9})?$")
_PLACEMENT_GROUP_NAME = re.compile(r"^[\x20-\x7e]{1,255}$")


@dataclass(frozen=True)
class Capacity:
    """Where nodes come from. Build it with the class methods, not the constructor."""

    kind: CapacityKind
    #: The reservations the nodes launch into (several only for UltraServer blocks).
    reservation_ids: tuple[str, ...] = ()
    #: Create a new cluster placement group for the nodes.
    placement_group: bool = True
    #: Launch into this existing placement group (the one a reservation was made in).
    placement_group_name: str | None = None

    @classmethod
    def on_demand(cls) -> Capacity:
        return cls(CapacityKind.ON_DEMAND, (), placement_group=True)

    @classmethod
    def reservation(
        cls, reservation_id: str, *, placement_group_name: str | None = None
    ) -> Capacity:
        """A targeted On-Demand Capacity Reservation.

        :param placement_group_name: the cluster placement group the reservation was made in
            (AWS recommends one for EFA). Default: none. A new group would not hold the
            reservation, so none is created here.
        """
        _check_reservation_id("reservation_id", reservation_id)
        if placement_group_name is not None and not _PLACEMENT_GROUP_NAME.match(
            placement_group_name
        ):
            raise invalid(
                "placement_group_name", placement_group_name, "a placement group name (1-255 chars)"
            )
        return cls(
            CapacityKind.RESERVATION,
            (reservation_id,),
            placement_group=False,
            placement_group_name=placement_group_name,
        )

    @classmethod
    def capacity_block(cls, reservation_id: str, *, placement_group: bool = False) -> Capacity:
        _check_reservation_id("reservation_id", reservation_id)
        if placement_group:
            raise CdkTrnError(
                "placement_group must be False for a capacity block, got True: capacity blocks "
                "are already co-located and a placement group causes InsufficientInstanceCapacity"
            )
        return cls(CapacityKind.CAPACITY_BLOCK, (reservation_id,), placement_group=False)

    @classmethod
    def ultraserver_block(cls, reservation_ids: str | Sequence[str]) -> Capacity:
        """One UltraServer capacity block, or several (one reservation id each), used together."""
        single = isinstance(reservation_ids, str)
        ids = (reservation_ids,) if isinstance(reservation_ids, str) else tuple(reservation_ids)
        if not ids:
            raise invalid("reservation_ids", list(ids), "at least one capacity reservation id")
        for value in ids:
            _check_reservation_id("reservation_id" if single else "reservation_ids", value)
        if len(set(ids)) != len(ids):
            raise invalid("reservation_ids", list(ids), "distinct capacity reservation ids")
        return cls(CapacityKind.ULTRASERVER_BLOCK, ids, placement_group=False)

    @classmethod
    def from_name(
        cls, name: str, reservation_id: str | None = None, reservation_ids: Sequence[str] = ()
    ) -> Capacity:
        """Build from the app's context values (``capacity``, ``reservationId`` and
        ``reservationIds``, the latter only for ``ultraserver-block``)."""
        kinds = {k.value: k for k in CapacityKind}
        if name not in kinds:
            raise invalid("capacity", name, "one of " + ", ".join(kinds))
        kind = kinds[name]
        if reservation_ids:
            if kind is not CapacityKind.ULTRASERVER_BLOCK or reservation_id:
                raise invalid(
                    "reservationIds",
                    ",".join(reservation_ids),
                    "set only with capacity 'ultraserver-block' and without reservationId",
                )
            return cls.ultraserver_block(reservation_ids)
        if kind is CapacityKind.ON_DEMAND:
            if reservation_id:
                raise invalid("reservationId", reservation_id, "unset with capacity 'on-demand'")
            return cls.on_demand()
        if not reservation_id:
            raise invalid(
                "reservationId", reservation_id, f"a reservation id with capacity {name!r}"
            )
        if kind is CapacityKind.RESERVATION:
            return cls.reservation(reservation_id)
        if kind is CapacityKind.CAPACITY_BLOCK:
            return cls.capacity_block(reservation_id)
        return cls.ultraserver_block(reservation_id)

    @property
    def reservation_id(self) -> str | None:
        """The reservation when there is exactly one (several are targeted as a group)."""
        return self.reservation_ids[0] if len(self.reservation_ids) == 1 else None

    @property
    def targets_reservation_group(self) -> bool:
        """Several reservations: launches target a Capacity Reservation resource group."""
        return len(self.reservation_ids) > 1

    @property
    def is_block(self) -> bool:
        return self.kind.is_block

    @property
    def is_ultraserver(self) -> bool:
        return self.kind is CapacityKind.ULTRASERVER_BLOCK

    def validate_for(self, spec: InstanceSpec, nodes: int) -> None:
        """Reject combinations that could never launch."""
        if spec.is_ultraserver and not self.is_ultraserver:
            raise CdkTrnError(
                f"capacity must be an UltraServer capacity block (Capacity.ultraserver_block) for "
                f"{spec.instance_type}, got {self.kind.value}: UltraServers are sold only as "
                "capacity blocks"
            )
        if self.is_ultraserver:
            if not spec.is_ultraserver:
                ultraservers = ", ".join(n for n, s in INSTANCE_SPECS.items() if s.is_ultraserver)
                raise CdkTrnError(
                    f"instance_type must be an UltraServer type ({ultraservers}) with an "
                    f"UltraServer capacity block, got {spec.instance_type!r}"
                )
            size = spec.ultraserver_size or 1
            if nodes % size:
                raise invalid(
                    "nodes",
                    nodes,
                    f"a multiple of {size} (whole UltraServers) for {spec.instance_type}",
                )
        if spec.capacity_block_only and not self.is_block:
            raise CdkTrnError(
                f"capacity must be a capacity block for {spec.instance_type}, got "
                f"{self.kind.value}: this type is sold only as EC2 Capacity Blocks"
            )


def _check_reservation_id(prop: str, value: str) -> None:
    if not isinstance(value, str) or not _RESERVATION_ID.match(value):
        raise invalid(prop, value, "a capacity reservation id such as 'cr-0123456789abcdef0'")


__all__ = ["Capacity", "CapacityKind"]
