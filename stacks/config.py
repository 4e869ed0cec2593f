"""The default app's configuration: read from CDK context (cdk.json, overridden by ``-c``).

Every value is validated here with a message that names the context key, before any construct
is created.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from constructs import Node

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
    fsx_capacity_gib: int = 4800
    fsx_throughput: int = 500
    fsx_efa: bool = False
    acceptance: bool = True
    enclave_vault: bool = True
    #: The cluster's CloudWatch dashboard and alarms (cdk_trn.observability.ClusterDashboard).
    dashboard: bool = True
    scheduler: str = "slurm"
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
            "fsxCapacityGiB": ("fsx_capacity_gib", _int),
            "fsxThroughput": ("fsx_throughput", _int),
            "fsxEfa": ("fsx_efa", _bool),
            "acceptance": ("acceptance", _bool),
            "enclaveVault": ("enclave_vault", _bool),
            "dashboard": ("dashboard", _bool),
            "scheduler": ("scheduler", _scheduler),
            "alarmEmail": ("alarm_email", _str),
        }
        for key, (field, convert) in conversions.items():
            raw = ctx(key)
            if raw is not None and raw != "":
                values[field] = convert(key, raw)
        return cls(**values)
