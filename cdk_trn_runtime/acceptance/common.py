"""What every part of the acceptance handler shares: the error, the AWS clients, a node and its
command, the run id and fingerprint, the parsed properties, and the small text helpers.

Runs in the Lambda Python runtime: standard library and boto3 only.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

from cdk_trn_runtime.contract import NODE_BOOT_MINUTES
from cdk_trn_runtime.contract.acceptance import NOT_AVAILABLE, AcceptanceRunProperties
from cdk_trn_runtime.contract.message import MessageError
from cdk_trn_runtime.deploy_time.clients import bounded_config

#: What the handler calls the run's properties (the contract's message).
RunProps = AcceptanceRunProperties


def parse_properties(properties: Mapping[str, Any]) -> AcceptanceRunProperties:
    """The resource's properties, parsed and checked; a bad one fails the run naming it."""
    try:
        return AcceptanceRunProperties.from_properties(properties)
    except MessageError as error:
        raise AcceptanceRunError(str(error)) from None


_RUNNING = frozenset({"Pending", "InProgress", "Delayed", "Cancelling"})

_SUCCESS = "Success"

#: CloudFormation caps a resource's status reason (about 4 KB, and the framework appends a log
#: pointer); one screen of text is what a person reads anyway.
REASON_LIMIT = 1000

#: After one node failed, how long the others get to finish (torchrun stops them) before we judge.
FAILURE_GRACE_SECONDS = 300

#: SendCommand delivery timeout: a node whose agent has not picked the command up by then fails.
DELIVERY_TIMEOUT_SECONDS = 600

_RUN_ID = r"[a-z0-9][a-z0-9-]{0,62}"

NODE_BOOT_SECONDS = NODE_BOOT_MINUTES * 60


class AcceptanceRunError(Exception):
    """The run failed or cannot start; the message is the CloudFormation status reason."""


@dataclass(frozen=True)
class Node:
    rank: int
    instance_id: str
    private_ip: str
    command_id: str = ""
    #: ``node`` (runs the suite itself) or ``controller`` (submits it to Slurm).
    kind: str = "node"

    def describe(self) -> str:
        if self.kind == "controller":
            return f"the Slurm job (controller {self.instance_id}, {self.private_ip})"
        return f"node {self.rank} ({self.instance_id}, {self.private_ip})"


@dataclass(frozen=True)
class Invocation:
    status: str
    details: str = ""
    response_code: int | None = None
    finished_at: float | None = None


@dataclass
class Clients:
    """The AWS clients and the clock the handlers use; tests pass stubbed clients."""

    ssm: Any
    autoscaling: Any
    ec2: Any
    s3: Any
    clock: Callable[[], float] = field(default=time.time)

    @property
    def region(self) -> str:
        return str(self.ssm.meta.region_name)


def default_clients() -> Clients:
    # Bounded so that one is_complete call cannot outlast the driver's hand-over margin.
    config = bounded_config()
    return Clients(
        ssm=boto3.client("ssm", config=config),
        autoscaling=boto3.client("autoscaling", config=config),
        ec2=boto3.client("ec2", config=config),
        s3=boto3.client("s3", config=config),
    )


def in_service_ids(clients: Clients, group_name: str, what: str) -> list[str]:
    """The InService instances of the Auto Scaling group ``group_name`` (``what`` names it in
    the error when the group does not exist), sorted."""
    groups = clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name])[
        "AutoScalingGroups"
    ]
    if not groups:
        raise AcceptanceRunError(f"{what} {group_name} not found")
    return sorted(
        i["InstanceId"] for i in groups[0]["Instances"] if i["LifecycleState"] == "InService"
    )


def run_fingerprint(properties: Mapping[str, Any]) -> str:
    relevant = {key: properties.get(key) for key in AcceptanceRunProperties.run_keys()}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def run_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return run_fingerprint(old) != run_fingerprint(new)


def make_run_id(event: Mapping[str, Any]) -> str:
    """A run id unique per request, readable, and safe in S3 keys, docker names and torchrun."""
    logical_id = str(event["LogicalResourceId"])
    seed = "|".join(
        (
            str(event["StackId"]),
            logical_id,
            run_fingerprint(event["ResourceProperties"]),
            str(event["RequestId"]),
        )
    )
    digest = hashlib.sha256(seed.encode()).hexdigest()[:12]
    prefix = re.sub(r"[^a-z0-9]", "", logical_id.lower())[:24] or "run"
    return f"{prefix}-{digest}"


def _run_nodes(props: RunProps, state: Mapping[str, Any]) -> int:
    """How many nodes this run has: all of them, or after a refresh those not waiting."""
    return int(state.get("RunNodes") or props.nodes)


def _version(item: Mapping[str, Any]) -> str:
    return str((item.get("LaunchTemplate") or {}).get("Version") or "")


def _is_failed(status: str) -> bool:
    return status != _SUCCESS and status not in _RUNNING


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _number(value: float | None) -> str:
    if value is None:
        return NOT_AVAILABLE
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".4g") if abs(value) < 1 else format(value, ".6g")


def _unit(unit: str) -> str:
    return f" {unit}" if unit else ""


_TELLING_LINE = re.compile(r"Error|FAILED|error:|expected")


def _last_line(text: str, limit: int = 300) -> str:
    """The line of a node's stderr that says most: the last one naming an error, else the last
    one with words (torchrun ends its error report with a banner of '=')."""
    lines = [line.strip() for line in text.splitlines() if re.search(r"[A-Za-z]", line)]
    telling = [line for line in lines if _TELLING_LINE.search(line)]
    chosen = telling[-1] if telling else (lines[-1] if lines else "")
    return chosen[-limit:]


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _error_message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", ""))[:200]


def _limit(text: str) -> str:
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 15] + " ... (truncated)"
