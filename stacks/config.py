"""The default app's configuration: read from CDK context (cdk.json, overridden by ``-c``).

Every value is validated here with a message that names the context key, before any construct
is created.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from constructs import Node

from cdk_trn.acceptance.image import NeuronTrainingImage
from cdk_trn.catalog import validate_hourly_price
from cdk_trn.errors import invalid


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise invalid(key, value, "true or false")


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise invalid(key, value, "an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise invalid(key, value, "an integer")


def _ids(key: str, value: Any) -> tuple[str, ...]:
    return tuple(part.strip() for part in _str(key, value).split(",") if part.strip())


def _price(key: str, value: Any) -> float:
    """A price in US dollars per instance-hour: a number above 0 (``-c hourlyPrice=35.76``)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise invalid(
                key, value, "a number of US dollars per instance-hour, such as 35.76"
            ) from None
    return validate_hourly_price(key, value)


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(key, value, "a non-empty string")
    return value


#: Stack names are ``<prefix>-storage`` etc. and the cluster is named ``<prefix>-cluster``
#: (lower-case, at most 39 characters), so the prefix is lower-case and at most 31 characters.
_PREFIX = re.compile(r"[a-z][a-z0-9-]{0,30}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")


def _prefix(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _PREFIX.fullmatch(value) or value.endswith("-"):
        raise invalid(
            key,
            value,
            "1-31 lower-case letters, digits or '-', starting with a letter, not ending in '-'",
        )
    return value


def _region(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _REGION.fullmatch(value):
        raise invalid(key, value, "an AWS Region name such as 'us-east-2'")
    return value


#: Values of the ``scheduler`` context key.
SCHEDULERS = ("slurm", "none")


def _training_image(key: str, value: Any) -> str:
    """A directory with a Dockerfile or an ECR image URI; checked here, at synth."""
    if not isinstance(value, str):
        raise invalid(key, value, "a directory with a Dockerfile or an ECR image URI")
    NeuronTrainingImage.from_reference(value)
    return value


def _scheduler(key: str, value: Any) -> str:
    if not isinstance(value, str) or value not in SCHEDULERS:
        raise invalid(key, value, " or ".join(SCHEDULERS))
    return value


@dataclass(frozen=True)
class AppConfig:
    """What the default app builds. Context keys are in camelCase."""

    prefix: str = "trn"
    region: str = "us-east-2"
    availability_zone: str = "use2-az3"
    instance_type: str = "trn2.48xlarge"
    nodes: int = 2
    capacity: str = "on-demand"
    reservation_id: str | None = None
    #: Several UltraServer blocks (capacity ultraserver-block), comma-separated in context.
    reservation_ids: tuple[str, ...] = ()
    node_os: str = "amazon-linux-2023"
    ami_id: str | None = None
    nat_egress: bool = False
    #: An existing VPC and its node subnet (in ``availability_zone``) instead of a new network:
    #: ``TrainingNetwork.from_attributes``, so its endpoints are the VPC owner's to provide.
    vpc_id: str | None = None
    subnet_id: str | None = None
    #: The existing VPC's IPv4 CIDR: deploy-time functions then allow HTTPS to it only.
    vpc_cidr_block: str | None = None
    fsx_capacity_gib: int = 4800
    fsx_throughput: int = 500
    fsx_efa: bool = False
    acceptance: bool = True
    enclave_vault: bool = True
    #: The cluster's CloudWatch dashboard and alarms (cdk_trn.observability.ClusterDashboard).
    dashboard: bool = True
    scheduler: str = "slurm"
    #: The training image of the scheduler, the acceptance run and users' jobs: a directory with a
    #: Dockerfile (built at deploy) or an ECR image URI. Default: the bundled image.
    training_image: str | None = None
    #: US dollars per node-hour (a capacity block's or negotiated rate); default: the catalog's
    #: sourced on-demand estimate.
    hourly_price: float | None = None
    #: Alarm when every node has been idle this many hours (off by default; needs the dashboard
    #: and Slurm).
    idle_alarm_hours: int | None = None
    #: Opt-in idle scale-in (on-demand only): minutes a node may be idle before it stops.
    idle_scale_in_minutes: int | None = None
    #: Subscribed to the cluster's events topic (node events and alarms), if set.
    alarm_email: str | None = None

    @classmethod
    def from_context(cls, node: Node) -> AppConfig:
        def ctx(key: str) -> Any:
            return node.try_get_context(key)

        values: dict[str, Any] = {}
        conversions = {
            "prefix": ("prefix", _prefix),
            "region": ("region", _region),
            "availabilityZone": ("availability_zone", _str),
            "instanceType": ("instance_type", _str),
            "nodes": ("nodes", _int),
            "capacity": ("capacity", _str),
            "reservationId": ("reservation_id", _str),
            "reservationIds": ("reservation_ids", _ids),
            "nodeOs": ("node_os", _str),
            "amiId": ("ami_id", _str),
            "natEgress": ("nat_egress", _bool),
            "vpcId": ("vpc_id", _str),
            "subnetId": ("subnet_id", _str),
            "vpcCidrBlock": ("vpc_cidr_block", _str),
            "fsxCapacityGiB": ("fsx_capacity_gib", _int),
            "fsxThroughput": ("fsx_throughput", _int),
            "fsxEfa": ("fsx_efa", _bool),
            "acceptance": ("acceptance", _bool),
            "enclaveVault": ("enclave_vault", _bool),
            "dashboard": ("dashboard", _bool),
            "scheduler": ("scheduler", _scheduler),
            "trainingImage": ("training_image", _training_image),
            "hourlyPrice": ("hourly_price", _price),
            "idleAlarmHours": ("idle_alarm_hours", _int),
            "idleScaleInMinutes": ("idle_scale_in_minutes", _int),
            "alarmEmail": ("alarm_email", _str),
        }
        for key, (field, convert) in conversions.items():
            raw = ctx(key)
            if raw is not None and raw != "":
                values[field] = convert(key, raw)
        config = cls(**values)
        config._validate_existing_vpc()
        return config

    def _validate_existing_vpc(self) -> None:
        if (self.vpc_id is None) != (self.subnet_id is None):
            given, missing = ("vpcId", "subnetId") if self.vpc_id else ("subnetId", "vpcId")
            raise invalid(
                missing, None, f"given with {given} (an existing VPC and its node subnet)"
            )
        if self.vpc_cidr_block is not None and self.vpc_id is None:
            raise invalid("vpcCidrBlock", self.vpc_cidr_block, "set only with vpcId and subnetId")
        if self.vpc_id is not None and self.nat_egress:
            raise invalid(
                "natEgress",
                True,
                "false with vpcId (an existing VPC's routes are its owner's: natEgress makes a "
                "new VPC's NAT gateway)",
            )
