"""Custom-resource handler of ``Preflight``: refuse a deploy that could never get its nodes.

Runs before the nodes' Auto Scaling group. Without it, a wrong AZ, a zero Trainium quota or a
reservation that is not there surfaces as a 45-minute creation-policy timeout with no reason
(FACTS.md "First-deploy traps"); with it the deploy fails within a minute and the status reason
says what is wrong and what to do.

Checks, by capacity:

* on-demand: the instance type is offered in the AZ (``DescribeInstanceTypeOfferings`` by AZ id)
  and the account's On-Demand Trn vCPU quota holds ``nodes x vCPUs`` on top of the Trn vCPUs
  already running or pending in the region (``DescribeInstances``; capacity-block and spot
  instances and this cluster's own nodes do not count against it).
* every interface endpoint service the nodes use is offered in the AZ
  (``DescribeVpcEndpointServices``), when the construct names them.
* reservation, capacity block, UltraServer block: every reservation exists, is for the instance
  type and the AZ, is of the right kind (a capacity block needs market type ``capacity-block``),
  is active (a block that starts later is reported with its start time and, if asked, waited for),
  is not within the last 30 minutes of a block, and together they hold ``nodes`` instances.
  Several UltraServer blocks must all be in the Capacity Reservation resource group the nodes
  target (``GetGroupsForCapacityReservation``). For blocks the result carries
  ``ScaleToZeroAt``: 35 minutes before the earliest block ends (EC2 stops the instances 30
  minutes before the end; 5 more for the group to act), the time of the group's scheduled
  action to zero, so that it does not retry launches into an ended block forever.
  The On-Demand quota is not checked here: an On-Demand Capacity Reservation was admitted
  against that quota when it was created, and a Capacity Block is capacity bought apart from it;
  the reservation's own count is what limits the launch.

Delete makes no AWS call and always succeeds. Served like every cdk-trn custom resource by the
deploy-time driver (``cdk_trn_runtime.deploy_time.driver``): ``on_event`` checks once; waiting for
a block that starts later is ``is_complete`` checking again every poll, within the 55 minutes the
driver waits (CloudFormation gives a custom resource one hour).

The decision functions (``offering_refusal``, ``quota_refusal``, ``reservation_refusals``,
``judge``) are plain Python over API responses; ``check`` makes the AWS calls. Lambda Python
runtime: standard library and boto3 only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

from cdk_trn_runtime.contract import CLUSTER_TAG
from cdk_trn_runtime.contract import preflight as contract
from cdk_trn_runtime.contract.message import MessageError
from cdk_trn_runtime.contract.preflight import (
    CapacityKind,
    PreflightAttributes,
    PreflightProperties,
)
from cdk_trn_runtime.deploy_time.clients import bounded_config

LOG = logging.getLogger(__name__)
LOG.setLevel(logging.INFO)

#: Service Quotas code of "Running On-Demand Trn instances" (vCPUs) for service ``ec2``. Sources:
#: the Service Quotas console's EC2 list and public quota tables that read it back with
#: ``aws service-quotas list-service-quotas --service-code ec2`` (the spot quota for Trn is
#: L-6B0D517C, which does not apply here). New accounts often have 0 (FACTS.md).
TRN_ON_DEMAND_QUOTA_CODE = "L-2C3B7624"
TRN_ON_DEMAND_QUOTA_NAME = "Running On-Demand Trn instances"
#: CloudFormation waits at most one hour for a custom resource; the wait for a capacity block
#: ends earlier so that our own message, not a generic timeout, reaches the stack events.
WAIT_BUDGET = dt.timedelta(minutes=contract.WAIT_BUDGET_MINUTES)
#: EC2 stops a capacity block's instances 30 minutes before the block ends (capacity-blocks docs).
BLOCK_END_MARGIN = dt.timedelta(minutes=30)
#: How often a waiting preflight looks at the block again (the driver's query interval).
POLL_SECONDS = contract.POLL_SECONDS
#: When the nodes' group scales to zero before a block ends: EC2's 30 minutes and 5 for the group.
SCALE_TO_ZERO_BEFORE_END = BLOCK_END_MARGIN + dt.timedelta(minutes=5)
#: A block whose nodes would go to zero sooner than this is refused: the rest of the deploy (the
#: nodes' boot and signals, the acceptance run) takes up to an hour, and CloudFormation writes
#: the scheduled action after the group is complete.
DEPLOY_AHEAD = dt.timedelta(hours=1)
#: Instances that do not count against the On-Demand quota (``Instance.InstanceLifecycle``).
_NOT_ON_DEMAND = frozenset({"spot", "capacity-block"})

#: Reservation states that will become active without the user doing anything.
_NOT_YET_ACTIVE = frozenset({"scheduled", "pending", "payment-pending", "assessing", "delayed"})


class PreflightError(Exception):
    """The event cannot be checked (bad properties); the message is the status reason."""


@dataclass(frozen=True)
class Request:
    """What the deploy asks for (:class:`PreflightProperties`) in the deploying region, with the
    AZ as an id once :func:`check` resolved it."""

    instance_type: str
    availability_zone_id: str
    nodes: int
    vcpus_per_node: int
    capacity: CapacityKind
    reservation_ids: tuple[str, ...]
    wait_for_capacity_block: bool
    region: str
    #: The cluster's name: its own running nodes are not counted as other use of the quota.
    cluster_name: str = ""
    #: Short names of the interface endpoint services the nodes use (``ssm``, ``ecr.dkr``...).
    endpoint_services: tuple[str, ...] = ()
    #: The Capacity Reservation resource group the nodes target (several UltraServer blocks).
    reservation_group_arn: str = ""
    #: The nodes' subnet (given for an imported network, whose AZ nothing else ties to it).
    subnet_id: str = ""

    @classmethod
    def from_properties(cls, props: Mapping[str, Any], region: str) -> Request:
        try:
            sent = PreflightProperties.from_properties(props)
        except MessageError as exc:
            raise PreflightError(f"preflight properties are malformed: {exc}") from None
        return cls(
            instance_type=sent.instance_type,
            availability_zone_id=sent.availability_zone,
            nodes=sent.nodes,
            vcpus_per_node=sent.vcpus_per_node,
            capacity=sent.capacity,
            reservation_ids=sent.reservation_ids,
            wait_for_capacity_block=sent.wait_for_capacity_block,
            region=region,
            cluster_name=sent.cluster_name,
            endpoint_services=sent.endpoint_services,
            reservation_group_arn=sent.reservation_group_arn,
            subnet_id=sent.subnet_id or "",
        )

    @property
    def is_block(self) -> bool:
        return self.capacity.is_block


@dataclass(frozen=True)
class Verdict:
    """The outcome: pass, refuse with ``reason``, or (``wait_until``) wait for a block's start."""

    ok: bool
    reason: str
    wait_until: dt.datetime | None = None
    #: For capacity blocks: when the nodes' group goes to zero (``SCALE_TO_ZERO_BEFORE_END``).
    scale_to_zero_at: dt.datetime | None = None


# --- decisions (plain Python over API responses) -----------------------------------------------


def offering_refusal(request: Request, offered_zone_ids: Sequence[str]) -> str | None:
    """``offered_zone_ids``: the region's AZ ids that offer the instance type."""
    if request.availability_zone_id in offered_zone_ids:
        return None
    where = f"AZ {request.availability_zone_id} of {request.region}"
    if offered_zone_ids:
        return (
            f"{request.instance_type} is not offered in {where}. Fix: set availabilityZone to an "
            f"AZ id that offers it: {', '.join(sorted(offered_zone_ids))}."
        )
    return (
        f"{request.instance_type} is not offered in any AZ of {request.region} for on-demand "
        f"launches. Fix: deploy to a region that offers it, or buy a capacity block and pass its "
        "reservation id."
    )


def quota_refusal(request: Request, quota_vcpus: float, running_vcpus: int = 0) -> str | None:
    """The On-Demand Trn vCPU quota must hold every node on top of the Trn vCPUs that already
    run in the region (on-demand capacity only)."""
    needed = request.nodes * request.vcpus_per_node
    free = max(0.0, quota_vcpus - running_vcpus)
    if free >= needed:
        return None
    fits = int(free // request.vcpus_per_node)
    lower = f"set nodes to {fits} or fewer; " if fits >= 1 else ""
    running = (
        f", of which {running_vcpus} are used by Trn instances already running or pending "
        f"(leaving {free:g})"
        if running_vcpus
        else ""
    )
    stop = "stop Trn instances you no longer need; " if running_vcpus else ""
    return (
        f"{request.nodes} x {request.instance_type} need {needed} vCPUs, but the quota "
        f"{TRN_ON_DEMAND_QUOTA_CODE} ({TRN_ON_DEMAND_QUOTA_NAME}) of this account in "
        f"{request.region} is {quota_vcpus:g} vCPUs{running}. Fix: request an increase (aws "
        f"service-quotas request-service-quota-increase --service-code ec2 --quota-code "
        f"{TRN_ON_DEMAND_QUOTA_CODE} --desired-value {needed + running_vcpus} --region "
        f"{request.region}); or {stop}{lower}or use a capacity reservation or block."
    )


def endpoint_refusal(request: Request, offered: Mapping[str, Sequence[str]]) -> str | None:
    """``offered``: each endpoint service's name and the AZ ids it is offered in."""
    missing = sorted(
        name
        for name in request.endpoint_services
        if request.availability_zone_id not in offered.get(_service_name(request, name), ())
    )
    if not missing:
        return None
    return (
        f"the interface endpoint service(s) {', '.join(missing)} are not offered in AZ "
        f"{request.availability_zone_id} of {request.region}, and the nodes reach AWS only "
        "through them. Fix: pick an AZ that offers them ('aws ec2 describe-vpc-endpoint-services "
        f"--service-names {' '.join(_service_name(request, n) for n in missing)} --region "
        f"{request.region}' lists its AvailabilityZoneIds), or give the network a NAT egress."
    )


def _service_name(request: Request, short: str) -> str:
    return f"com.amazonaws.{request.region}.{short}"


def group_refusal(
    request: Request, groups_by_reservation: Mapping[str, Sequence[str]]
) -> str | None:
    """Every reservation must be in the resource group the nodes target."""
    if not request.reservation_group_arn:
        return None
    outside = [
        rid
        for rid in request.reservation_ids
        if request.reservation_group_arn not in groups_by_reservation.get(rid, ())
    ]
    if not outside:
        return None
    return (
        f"{', '.join(outside)} not in the resource group {request.reservation_group_arn} that the "
        "nodes' launch template targets, so EC2 cannot launch into them. Fix: deploy again (the "
        "stack adds them), or check that the blocks are of this account and not in a group of "
        "another type (a group for capacity blocks needs instance-type and "
        "reservation-type=capacity-block)."
    )


def scale_to_zero_at(reservations: Sequence[Mapping[str, Any]]) -> dt.datetime | None:
    """When the nodes' group must go to zero: before the earliest block end."""
    ends = [r["EndDate"] for r in reservations if isinstance(r.get("EndDate"), dt.datetime)]
    return min(ends) - SCALE_TO_ZERO_BEFORE_END if ends else None


def _kind_refusal(request: Request, rid: str, reservation_type: str) -> str | None:
    if request.is_block and reservation_type != "capacity-block":
        return (
            f"{rid} is an On-Demand Capacity Reservation, not a capacity block. Fix: set "
            "capacity to reservation."
        )
    if not request.is_block and reservation_type == "capacity-block":
        return (
            f"{rid} is a capacity block, which launches only with market type capacity-block. "
            f"Fix: set capacity to capacity-block (ultraserver-block for UltraServers)."
        )
    return None


def _state_refusal(
    request: Request, reservation: Mapping[str, Any], now: dt.datetime
) -> str | None:
    rid = reservation["CapacityReservationId"]
    state = reservation.get("State", "unknown")
    end = reservation.get("EndDate")
    if state == "active":
        if request.is_block and isinstance(end, dt.datetime) and now >= end - BLOCK_END_MARGIN:
            return (
                f"{rid} ends at {_utc(end)}; EC2 stops a capacity block's instances 30 minutes "
                "before its end, so nodes cannot launch now. Fix: buy a new block and pass its "
                "reservation id."
            )
        return None
    if state == "scheduled" and request.is_block:
        return None  # judged by when it starts (judge)
    if state in _NOT_YET_ACTIVE:
        return (
            f"{rid} is {state}, not active yet. Fix: deploy again once 'aws ec2 "
            f"describe-capacity-reservations --capacity-reservation-ids {rid} --region "
            f"{request.region}' shows it active."
        )
    new = "buy a new capacity block" if request.is_block else "create a new reservation"
    return f"{rid} is {state} and can no longer launch instances. Fix: {new} and pass its id."


def reservation_refusals(
    request: Request,
    reservations: Sequence[Mapping[str, Any]],
    *,
    now: dt.datetime,
    creating: bool,
) -> list[str]:
    """Everything that keeps these reservations from holding the nodes (besides a later start).

    On Create the reservations must have ``nodes`` instances *available*; on Update the
    cluster's own running nodes already use some, so their *total* must hold ``nodes``.
    """
    refusals: list[str] = []
    for reservation in reservations:
        rid = reservation["CapacityReservationId"]
        rtype = reservation.get("InstanceType")
        zone = reservation.get("AvailabilityZoneId")
        if rtype != request.instance_type:
            refusals.append(
                f"{rid} reserves {rtype}, not {request.instance_type}. Fix: set instanceType to "
                f"{rtype}, or pass a reservation for {request.instance_type}."
            )
        if zone != request.availability_zone_id:
            refusals.append(
                f"{rid} is in AZ {zone}, not {request.availability_zone_id}. Fix: set "
                f"availabilityZone to {zone} (the nodes' subnet must be in the reservation's AZ)."
            )
        kind = _kind_refusal(request, rid, str(reservation.get("ReservationType", "default")))
        if kind:
            refusals.append(kind)
        state = _state_refusal(request, reservation, now)
        if state:
            refusals.append(state)
    total = sum(int(r.get("TotalInstanceCount", 0)) for r in reservations)
    usable = sum(
        int(r.get("AvailableInstanceCount", 0))
        if creating and r.get("State") == "active"
        else int(r.get("TotalInstanceCount", 0))
        for r in reservations
    )
    if usable < request.nodes:
        ids = ", ".join(r["CapacityReservationId"] for r in reservations)
        in_use = f" ({total - usable} of {total} are in use)" if usable < total else ""
        refusals.append(
            f"{ids} can hold {usable} x {request.instance_type}{in_use}, fewer than nodes = "
            f"{request.nodes}. Fix: set nodes to {usable} or fewer, free the instances running "
            "in the reservation, or add a reservation."
        )
    return refusals


def judge(
    request: Request,
    reservations: Sequence[Mapping[str, Any]],
    *,
    now: dt.datetime,
    deadline: dt.datetime,
    creating: bool,
) -> Verdict:
    """The verdict on reservations/blocks, including one that starts later."""
    refusals = reservation_refusals(request, reservations, now=now, creating=creating)
    if refusals:
        return Verdict(False, " ".join(refusals))
    zero_at = scale_to_zero_at(reservations) if request.is_block else None
    if zero_at is not None and zero_at < now + DEPLOY_AHEAD:
        return Verdict(
            False,
            f"the blocks end at {_utc(zero_at + SCALE_TO_ZERO_BEFORE_END)}, so the nodes' group "
            f"goes to zero at {_utc(zero_at)}, before this deploy could finish (its nodes' boot "
            "and acceptance take up to an hour, and a scheduled action cannot start in the past). "
            "Fix: buy a block that lasts longer and pass its reservation id.",
        )
    starts = [
        (r["CapacityReservationId"], r["StartDate"])
        for r in reservations
        if r.get("State") == "scheduled" and isinstance(r.get("StartDate"), dt.datetime)
    ]
    if not starts:
        if any(r.get("State") == "scheduled" for r in reservations):
            return Verdict(
                False,
                "a capacity block is scheduled without a start date. Fix: "
                "deploy again once it is active.",
            )
        return Verdict(True, _passed(request, reservations), scale_to_zero_at=zero_at)
    rid, start = max(starts, key=lambda item: item[1])
    in_minutes = max(0, int((start - now).total_seconds() // 60))
    when = f"capacity block {rid} starts at {_utc(start)} (in {_duration(in_minutes)})"
    budget = int(WAIT_BUDGET.total_seconds() // 60)
    if not request.wait_for_capacity_block:
        return Verdict(
            False,
            f"{when}; instances cannot launch before. Fix: deploy after {_utc(start)}, or "
            f"construct Preflight with wait_for_capacity_block=True to let the deploy wait for "
            f"a block that starts within {budget} minutes.",
        )
    if start > deadline:
        return Verdict(
            False,
            f"{when}, later than the {budget} minutes a deploy can wait for it (CloudFormation "
            f"gives a custom resource one hour). Fix: deploy again after "
            f"{_utc(start - WAIT_BUDGET)}.",
        )
    return Verdict(False, f"waiting: {when}", wait_until=start, scale_to_zero_at=zero_at)


def _passed(request: Request, reservations: Sequence[Mapping[str, Any]]) -> str:
    where = f"{request.nodes} x {request.instance_type} in {request.availability_zone_id}"
    if not reservations:
        return f"preflight passed: {where} (on-demand)"
    ids = ", ".join(r["CapacityReservationId"] for r in reservations)
    return f"preflight passed: {where} in {ids}"


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(minutes: int) -> str:
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    parts += [f"{hours} h"] if hours else []
    return " ".join([*parts, f"{mins} min"])


# --- AWS calls ----------------------------------------------------------------------------------


@dataclass
class Clients:
    """The AWS clients and the clock the handler uses; tests pass stubbed clients."""

    ec2: Any
    quotas: Any
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))

    @property
    def region(self) -> str:
        return str(self.ec2.meta.region_name)


def default_clients() -> Clients:
    # Bounded so that one is_complete call cannot outlast the driver's hand-over margin.
    config = bounded_config()
    return Clients(
        ec2=boto3.client("ec2", config=config),
        quotas=boto3.client("service-quotas", config=config),
    )


def offered_zone_ids(ec2: Any, instance_type: str) -> list[str]:
    zones: list[str] = []
    paginator = ec2.get_paginator("describe_instance_type_offerings")
    for page in paginator.paginate(
        LocationType="availability-zone-id",
        Filters=[{"Name": "instance-type", "Values": [instance_type]}],
    ):
        zones += [o["Location"] for o in page.get("InstanceTypeOfferings", [])]
    return zones


def trn_quota_vcpus(quotas: Any) -> float:
    """The applied quota value; the AWS default when the account has no applied value."""
    try:
        quota = quotas.get_service_quota(ServiceCode="ec2", QuotaCode=TRN_ON_DEMAND_QUOTA_CODE)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchResourceException":
            raise
        quota = quotas.get_aws_default_service_quota(
            ServiceCode="ec2", QuotaCode=TRN_ON_DEMAND_QUOTA_CODE
        )
    return float(quota["Quota"]["Value"])


def running_trn_vcpus(ec2: Any, cluster_name: str) -> int:
    """vCPUs of the region's running or pending Trn instances that count against the On-Demand
    quota: not spot, not in a capacity block, not nodes of this cluster (an update replaces
    them)."""
    total = 0
    paginator = ec2.get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[
            {"Name": "instance-type", "Values": ["trn*"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    for page in pages:
        for reservation in page.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                if instance.get("InstanceLifecycle") in _NOT_ON_DEMAND:
                    continue
                tags = {t.get("Key"): t.get("Value") for t in instance.get("Tags", [])}
                if cluster_name and tags.get(CLUSTER_TAG) == cluster_name:
                    continue
                cpu = instance.get("CpuOptions") or {}
                total += int(cpu.get("CoreCount", 0)) * int(cpu.get("ThreadsPerCore", 1))
    return total


def endpoint_offerings(ec2: Any, request: Request) -> dict[str, list[str]]:
    """Each named endpoint service and the AZ ids that offer it (absent: not in the region)."""
    names = [_service_name(request, n) for n in request.endpoint_services]
    offered: dict[str, list[str]] = {}
    try:
        response = ec2.describe_vpc_endpoint_services(ServiceNames=names)
    except ClientError as exc:
        if _code(exc) != "InvalidServiceName":
            raise
        # One unknown name fails the whole call: ask one by one.
        for name in names:
            try:
                one = ec2.describe_vpc_endpoint_services(ServiceNames=[name])
            except ClientError as inner:
                if _code(inner) != "InvalidServiceName":
                    raise
                continue
            offered.update(_zones_of(one))
        return offered
    offered.update(_zones_of(response))
    return offered


def _zones_of(response: Mapping[str, Any]) -> dict[str, list[str]]:
    return {
        str(d["ServiceName"]): list(d.get("AvailabilityZoneIds") or [])
        for d in response.get("ServiceDetails", [])
    }


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def groups_of_reservations(ec2: Any, request: Request) -> dict[str, list[str]]:
    """The resource groups (ARNs) each reservation is in."""
    groups: dict[str, list[str]] = {}
    for rid in request.reservation_ids:
        paginator = ec2.get_paginator("get_groups_for_capacity_reservation")
        groups[rid] = [
            str(g["GroupArn"])
            for page in paginator.paginate(CapacityReservationId=rid)
            for g in page.get("CapacityReservationGroups", [])
        ]
    return groups


def describe_reservations(ec2: Any, request: Request) -> list[dict[str, Any]] | str:
    """The reservations, or the refusal when one does not exist."""
    try:
        response = ec2.describe_capacity_reservations(
            CapacityReservationIds=list(request.reservation_ids)
        )
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if str(error.get("Code", "")).startswith("InvalidCapacityReservationId"):
            return (
                f"capacity reservation {', '.join(request.reservation_ids)} not found in "
                f"{request.region} for this account ({error.get('Message', error.get('Code'))}). "
                f"Fix: check the id with 'aws ec2 describe-capacity-reservations --region "
                f"{request.region}'; a capacity block must be bought in this account and region "
                "(or shared with it) before the deploy."
            )
        raise
    found = list(response.get("CapacityReservations", []))
    missing = set(request.reservation_ids) - {r["CapacityReservationId"] for r in found}
    if missing:
        return (
            f"capacity reservation {', '.join(sorted(missing))} not found in {request.region}. "
            "Fix: pass the id of a reservation of this account and region."
        )
    return found


_ZONE_NAME = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d[a-z]$")


def zone_id_of(ec2: Any, zone: str) -> str:
    """The AZ id of ``zone``: ids (``use2-az3``) are the same in every account and pass as they
    are; a name (``us-east-2b``) maps to a different id in each account, so ask EC2."""
    if not _ZONE_NAME.match(zone):
        return zone
    zones = ec2.describe_availability_zones(ZoneNames=[zone]).get("AvailabilityZones", [])
    if not zones:
        raise PreflightError(f"AZ {zone} does not exist in this account and region")
    return str(zones[0]["ZoneId"])


def subnet_refusal(request: Request, subnet_zone_id: str | None) -> str | None:
    """The nodes launch into the subnet's AZ whatever the configuration says: a subnet elsewhere
    would have the preflight judge offerings and reservations of the wrong AZ."""
    if subnet_zone_id is None:
        return (
            f"subnet {request.subnet_id} does not exist in {request.region}: give the subnet "
            "of the network's VPC (-c subnetId=, TrainingNetwork.from_attributes(subnet_id=))"
        )
    if subnet_zone_id != request.availability_zone_id:
        return (
            f"subnet {request.subnet_id} is in AZ {subnet_zone_id}, not "
            f"{request.availability_zone_id}: set the AZ to the subnet's (-c "
            f"availabilityZone={subnet_zone_id}, TrainingNetwork.from_attributes("
            f"availability_zone=...)) or give a subnet in {request.availability_zone_id}"
        )
    return None


def subnet_zone_id(ec2: Any, subnet_id: str) -> str | None:
    """The AZ id of ``subnet_id``, or None when EC2 does not know the subnet."""
    try:
        subnets = ec2.describe_subnets(SubnetIds=[subnet_id]).get("Subnets", [])
    except ClientError as exc:
        if _code(exc) == "InvalidSubnetID.NotFound":
            return None
        raise
    return str(subnets[0]["AvailabilityZoneId"]) if subnets else None


def check(request: Request, clients: Clients, *, creating: bool, deadline: dt.datetime) -> Verdict:
    """Make the AWS calls for ``request`` and judge them."""
    now = clients.now()
    request = dataclasses.replace(
        request, availability_zone_id=zone_id_of(clients.ec2, request.availability_zone_id)
    )
    if request.subnet_id:
        refusal = subnet_refusal(request, subnet_zone_id(clients.ec2, request.subnet_id))
        if refusal:
            return Verdict(False, refusal)
    if request.endpoint_services:
        refusal = endpoint_refusal(request, endpoint_offerings(clients.ec2, request))
        if refusal:
            return Verdict(False, refusal)
    if request.capacity is CapacityKind.ON_DEMAND:
        refusal = offering_refusal(request, offered_zone_ids(clients.ec2, request.instance_type))
        if refusal is None:
            refusal = quota_refusal(
                request,
                trn_quota_vcpus(clients.quotas),
                running_trn_vcpus(clients.ec2, request.cluster_name),
            )
        return Verdict(False, refusal) if refusal else Verdict(True, _passed(request, []))
    reservations = describe_reservations(clients.ec2, request)
    if isinstance(reservations, str):
        return Verdict(False, reservations)
    verdict = judge(request, reservations, now=now, deadline=deadline, creating=creating)
    if verdict.ok and request.reservation_group_arn:
        refusal = group_refusal(request, groups_of_reservations(clients.ec2, request))
        if refusal:
            return Verdict(False, refusal)
    return verdict


# --- the custom-resource handlers (served by cdk_trn_runtime.deploy_time.driver) ----------------

#: Key of the handler's own state in the on-event result (passed to ``is_complete``).
STATE_KEY = "Preflight"


class PreflightRefusal(Exception):
    """The deploy cannot succeed; the message is the status reason, with the fix."""


def _physical_id(event: Mapping[str, Any]) -> str:
    return str(event.get("PhysicalResourceId") or f"{event['LogicalResourceId']}-preflight")


def _judge(event: Mapping[str, Any], clients: Clients, deadline: dt.datetime) -> Verdict:
    """Check the deploy; anything but a verdict (bad properties, a denied call) is re-raised as a
    refusal that says what to fix."""
    try:
        request = Request.from_properties(event["ResourceProperties"], clients.region)
        verdict = check(
            request, clients, creating=event["RequestType"] == "Create", deadline=deadline
        )
    except Exception as exc:  # noqa: BLE001 - any failure must reach CloudFormation with a fix
        LOG.exception("preflight could not check the deploy")
        raise PreflightRefusal(
            f"preflight could not check the deploy: {exc}. Fix: check the preflight function's "
            "permissions and the properties, then deploy again."
        ) from None
    LOG.info("preflight verdict: %s", verdict)
    if not verdict.ok and verdict.wait_until is None:
        raise PreflightRefusal(f"preflight refused the deploy: {verdict.reason}")
    return verdict


def on_event(
    event: Mapping[str, Any], context: Any = None, *, clients: Clients | None = None
) -> dict[str, Any]:
    """Check once; a block that starts within the wait budget is left to ``is_complete``."""
    physical_id = _physical_id(event)
    if event["RequestType"] == "Delete":
        return {"PhysicalResourceId": physical_id}
    clients = clients or default_clients()
    deadline = clients.now() + WAIT_BUDGET
    verdict = _judge(event, clients, deadline)
    state: dict[str, Any] = {"Deadline": deadline.isoformat(), "Passed": verdict.ok}
    data = _data(verdict) if verdict.ok else {}
    return {"PhysicalResourceId": physical_id, "Data": data, STATE_KEY: state}


def _data(verdict: Verdict) -> dict[str, str]:
    """The resource's attributes: the summary and, for blocks, ``ScaleToZeroAt`` in the form
    of ``AWS::AutoScaling::ScheduledAction`` ``StartTime`` (UTC, ``YYYY-MM-DDThh:mm:ssZ``)."""
    zero_at = verdict.scale_to_zero_at
    return PreflightAttributes(
        summary=verdict.reason,
        scale_to_zero_at=None
        if zero_at is None
        else zero_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    ).to_properties()


def is_complete(
    event: Mapping[str, Any], context: Any = None, *, clients: Clients | None = None
) -> dict[str, Any]:
    """Done once the check passed; while waiting for a block, check again."""
    state = event.get(STATE_KEY) or {}
    if event["RequestType"] == "Delete" or state.get("Passed"):
        return {"IsComplete": True}
    clients = clients or default_clients()
    verdict = _judge(event, clients, dt.datetime.fromisoformat(str(state["Deadline"])))
    if verdict.ok:
        return {"IsComplete": True, "Data": _data(verdict)}
    return {"IsComplete": False, "Status": verdict.reason}
