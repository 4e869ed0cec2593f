"""Custom-resource handlers of ``AcceptanceRun``: start the suite, wait, judge.

``on_event`` (Create, or Update when the image or run configuration changed) starts the run with
one of two launchers (property ``Launcher``):

- ``slurm`` (a cluster with a ``SlurmScheduler``): finds the controller, the one InService
  instance of the controller's Auto Scaling group, checks its cluster tag and sends it the stack's
  Slurm document, which submits the suite as one Slurm job (``sbatch --parsable -N <nodes>
  --exclusive`` as the job user), waits for it and uploads the results (``submit_suite.sh``).
- ``ssm`` (no scheduler): finds the Auto Scaling group's InService nodes, ranks them the way
  torchrun's c10d rendezvous will (``rank_nodes``), makes node 0 the rendezvous host and sends
  the stack's node document to each node with its rank.

``is_complete`` polls those commands (one, the controller's, with Slurm); when every command
succeeded it reads rank 0's ``summary.json`` from S3, checks it and returns the figures as
``Data``. Both launchers upload the same layout (``<run>/<node index>/rank-<N>.json``), so the
judging is the same. A failed node, a failed threshold, missing
results or the deadline raise :class:`AcceptanceRunError`, which the deploy-time driver
(``cdk_trn_runtime.deploy_time.driver``) turns into
a FAILED response whose reason is our (short) message. Delete makes no AWS call, so it cannot
block a stack delete.

An Update whose launch template changed (an image change) on a Slurm cluster first refreshes the
nodes on the earlier version (``start_refresh``, ``after_drain``): drained in Slurm, the ones
Slurm reports drained without a job marked Unhealthy (their group replaces them), the busy ones
left drained for the controller's reaper; the run then waits for the successors and runs on the
nodes of the current version only.

A pass leaves a marker (``<prefix>_passed/<fingerprint>.json``) naming the run; an Update whose
run properties match a marker reuses that run instead of running again. That is what keeps a
rollback (CloudFormation sends the previous properties as an Update) from repeating a run that
passed, and from failing the rollback if the cluster has since degraded.

Runs in the Lambda Python runtime: standard library and boto3 only. AWS clients come from a
:class:`Clients` value that tests replace with stubbed clients.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from cdk_trn_runtime.contract import (
    ACCEPTANCE_BUSY_EXIT,
    CLUSTER_TAG,
    FIGURE_USD_PER_MILLION_TOKENS,
    NODE_BOOT_MINUTES,
)
from cdk_trn_runtime.contract.acceptance import ACCEPTANCE_NOT_READY_EXIT
from cdk_trn_runtime.cost import usd_per_million_tokens
from cdk_trn_runtime.deploy_time.clients import bounded_config

LOG = logging.getLogger(__name__)
LOG.setLevel(logging.INFO)

SCHEMA_VERSION = 1
#: Properties whose change means a new run (everything else, e.g. the exported figures or the
#: timeout, only changes how a run is waited for or reported).
RUN_PROPERTIES = (
    "AutoScalingGroupName",
    "ClusterName",
    "CompileCacheDir",
    "ConfigHash",
    "ControllerGroupName",
    "DocumentName",
    "ImageUri",
    "Launcher",
    "ResultsBucket",
    "ResultsPrefix",
)
LAUNCHERS = ("slurm", "ssm")
#: Figures the handler derives from the suite's per-device figures (a device is one rank).
#: Derived when the run's price is known (``HourlyPrice``): cost per million tokens.
COST_FIGURE = FIGURE_USD_PER_MILLION_TOKENS
PER_CHIP_FIGURES = {"gemm_bf16_tflops_per_chip": "gemm_bf16_tflops_per_device"}
_RUNNING = frozenset({"Pending", "InProgress", "Delayed", "Cancelling"})
_SUCCESS = "Success"
#: CloudFormation caps a resource's status reason (about 4 KB, and the framework appends a log
#: pointer); one screen of text is what a person reads anyway.
REASON_LIMIT = 1000
#: After one node failed, how long the others get to finish (torchrun stops them) before we judge.
FAILURE_GRACE_SECONDS = 300
#: SendCommand delivery timeout: a node whose agent has not picked the command up by then fails.
DELIVERY_TIMEOUT_SECONDS = 600
_NOT_AVAILABLE = "n/a"
_RUN_ID = r"[a-z0-9][a-z0-9-]{0,62}"
#: Checks a node fails by itself (its own devices and memory) and a new instance may pass. A run
#: whose every failure is one of these, on some nodes but not all, replaces those nodes and runs
#: again instead of failing the deploy. Any other failure (collectives, training, compilation,
#: an error the suite raised, every node failing alike) fails at once: a new node would not fix it.
NODE_LOCAL_CHECKS = frozenset(
    {"gemm_numerics", "gemm_fraction_of_peak", "hbm_copy_correctness", "hbm_fraction_of_peak"}
)
#: Rounds of replacement per run. One round, because a round costs a node's boot plus a second run
#: and CloudFormation gives the whole custom resource one hour; a round is started only when
#: that still fits before the run's deadline (``replacement_fits``).
MAX_REPLACEMENT_ROUNDS = 1
NODE_BOOT_SECONDS = NODE_BOOT_MINUTES * 60
#: ``WhenBusy``: what a run does when the cluster's nodes are busy with users' jobs.
WHEN_BUSY = ("fail", "report")
#: An image refresh (stale nodes replaced before the run) is started only when a node's boot and
#: then a run of this long still fit before the run's deadline (CloudFormation's hour): the run
#: after a refresh gets at least as long as the boot.
REFRESH_RUN_RESERVE_SECONDS = NODE_BOOT_SECONDS
#: At most this many characters of node lists in the result's Data (CloudFormation's response
#: is at most 4 KB).
NODE_LIST_LIMIT = 600


class AcceptanceRunError(Exception):
    """The run failed or cannot start; the message is the CloudFormation status reason."""


@dataclass(frozen=True)
class Check:
    """One threshold the handler re-checks on the summary's figures."""

    figure: str
    minimum: float | None = None
    maximum: float | None = None
    unit: str = ""

    @classmethod
    def from_property(cls, raw: Mapping[str, Any]) -> Check:
        # CloudFormation hands custom resources every scalar as a string.
        return cls(
            figure=str(raw["Figure"]),
            minimum=float(raw["Min"]) if raw.get("Min") not in (None, "") else None,
            maximum=float(raw["Max"]) if raw.get("Max") not in (None, "") else None,
            unit=str(raw.get("Unit", "")),
        )

    def violation(self, value: float) -> str | None:
        if self.minimum is not None and value < self.minimum:
            return f"{self.figure} {_number(value)}{_unit(self.unit)} < min {_number(self.minimum)}"
        if self.maximum is not None and value > self.maximum:
            return f"{self.figure} {_number(value)}{_unit(self.unit)} > max {_number(self.maximum)}"
        return None


@dataclass(frozen=True)
class RunProps:
    """The custom resource's properties, parsed."""

    auto_scaling_group_name: str
    cluster_name: str
    nodes: int
    procs_per_node: int
    document_name: str
    image_uri: str
    results_bucket: str
    results_prefix: str
    compile_cache_dir: str
    suite_args: str
    rendezvous_port: int
    neuron_comm_port: int
    expected_neuron_devices: int
    expected_efa_devices: int
    run_timeout_seconds: int
    devices_per_chip: int = 1
    checks: tuple[Check, ...] = ()
    exported_figures: tuple[str, ...] = ()
    #: US dollars per hour of the run's nodes together (nodes x node price), when known.
    hourly_price: float | None = None
    launcher: str = "ssm"
    controller_group_name: str = ""
    partition: str = ""
    job_user: str = ""
    controller_container: str = ""
    runs_dir: str = ""
    #: ``fail`` (the deploy fails at once, saying the nodes are busy) or ``report`` (the deploy
    #: goes on and the resource's ``Passed`` says the run did not run).
    when_busy: str = "fail"

    @property
    def slurm(self) -> bool:
        return self.launcher == "slurm"

    @classmethod
    def from_properties(cls, p: Mapping[str, Any]) -> RunProps:
        def need(key: str) -> Any:
            if key not in p:
                raise AcceptanceRunError(f"resource property {key} is missing")
            return p[key]

        launcher = str(p.get("Launcher", "ssm"))
        if launcher not in LAUNCHERS:
            raise AcceptanceRunError(f"resource property Launcher {launcher!r} is not slurm or ssm")
        slurm = launcher == "slurm"

        def need_slurm(key: str) -> str:
            return str(need(key)) if slurm else str(p.get(key, ""))

        when_busy = str(p.get("WhenBusy", "fail"))
        if when_busy not in WHEN_BUSY:
            raise AcceptanceRunError(f"resource property WhenBusy {when_busy!r} is not fail/report")
        return cls(
            when_busy=when_busy,
            launcher=launcher,
            controller_group_name=need_slurm("ControllerGroupName"),
            partition=need_slurm("Partition"),
            job_user=need_slurm("JobUser"),
            controller_container=need_slurm("ControllerContainer"),
            runs_dir=need_slurm("RunsDir"),
            auto_scaling_group_name=str(need("AutoScalingGroupName")),
            cluster_name=str(need("ClusterName")),
            nodes=int(need("Nodes")),
            procs_per_node=int(need("ProcsPerNode")),
            document_name=str(need("DocumentName")),
            image_uri=str(need("ImageUri")),
            results_bucket=str(need("ResultsBucket")),
            results_prefix=str(need("ResultsPrefix")),
            compile_cache_dir=str(need("CompileCacheDir")),
            suite_args=str(p.get("SuiteArgs", "")),
            rendezvous_port=int(need("RendezvousPort")),
            neuron_comm_port=int(need("NeuronCommPort")),
            expected_neuron_devices=int(need("ExpectedNeuronDevices")),
            expected_efa_devices=int(need("ExpectedEfaDevices")),
            run_timeout_seconds=int(need("RunTimeoutSeconds")),
            devices_per_chip=int(p.get("DevicesPerChip", 1)),
            checks=tuple(Check.from_property(c) for c in p.get("Checks", [])),
            exported_figures=tuple(str(f) for f in p.get("ExportedFigures", [])),
            hourly_price=float(p["HourlyPrice"]) if p.get("HourlyPrice") else None,
        )

    def run_prefix(self, run_id: str) -> str:
        return f"{self.results_prefix}{run_id}/"

    def results_uri(self, run_id: str) -> str:
        return f"s3://{self.results_bucket}/{self.run_prefix(run_id)}"

    def summary_key(self, run_id: str) -> str:
        return f"{self.run_prefix(run_id)}0/summary.json"


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


# --------------------------------------------------------------------------------------------
# on_event


def on_event(
    event: Mapping[str, Any], context: Any = None, *, clients: Clients | None = None
) -> dict[str, Any]:
    """On-event handler (the deploy-time driver's API, the Provider framework's)."""
    request_type = event["RequestType"]
    LOG.info("on_event %s %s", request_type, event.get("LogicalResourceId"))
    if request_type == "Delete":
        # Results stay in the bucket (lifecycle expires them); nothing here may fail a delete.
        return {"PhysicalResourceId": event["PhysicalResourceId"]}

    props = RunProps.from_properties(event["ResourceProperties"])
    if request_type == "Update" and not run_changed(
        event["OldResourceProperties"], event["ResourceProperties"]
    ):
        return _reuse(props, str(event["PhysicalResourceId"]))

    clients = clients or default_clients()
    if request_type == "Update":
        # A rollback sends the previous properties again; a run that passed with exactly these
        # properties is not repeated (and so cannot fail the rollback).
        previous = passed_run(clients, props, run_fingerprint(event["ResourceProperties"]))
        if previous is not None:
            return _reuse(props, previous)
    run_id = make_run_id(event)
    started = clients.clock()
    if props.slurm:
        # The job runs in each node's slurmd container, whose image a node takes at boot: nodes
        # launched before this deploy's launch template still run the previous image. Never test
        # (and report) the old image as the new one: refresh the idle ones first, never
        # terminate a node that runs a job.
        stale = stale_nodes(clients, props) if request_type == "Update" else []
        if stale:
            return start_refresh(clients, props, run_id, started, stale)
        nodes = [send_slurm_command(clients, props, run_id, discover_controller(clients, props))]
    else:
        nodes = send_commands(clients, props, run_id, discover_nodes(clients, props))
    return {
        "PhysicalResourceId": run_id,
        "Data": {"RunId": run_id, "ResultsUri": props.results_uri(run_id)},
        "AcceptanceRun": {
            "RunId": run_id,
            "Reused": False,
            "StartedAt": started,
            "Deadline": started + props.run_timeout_seconds,
            "Nodes": [asdict(n) for n in nodes],
        },
    }


def _reuse(props: RunProps, run_id: str) -> dict[str, Any]:
    return {
        "PhysicalResourceId": run_id,
        "Data": {"RunId": run_id, "ResultsUri": props.results_uri(run_id)},
        "AcceptanceRun": {"RunId": run_id, "Reused": True},
    }


def passed_marker_key(props: RunProps, fingerprint: str) -> str:
    # Run ids start with a letter or digit, so this never collides with a run's prefix.
    return f"{props.results_prefix}_passed/{fingerprint}.json"


def passed_run(clients: Clients, props: RunProps, fingerprint: str) -> str | None:
    """The run id that passed with these run properties, if one did (never raises)."""
    try:
        body = _get_object(clients, props.results_bucket, passed_marker_key(props, fingerprint))
        run_id = json.loads(body)["run_id"] if body is not None else None
    except (ClientError, BotoCoreError, ValueError, KeyError, TypeError) as error:
        LOG.warning("pass marker of %s unreadable: %s", fingerprint, error)
        return None
    return str(run_id) if isinstance(run_id, str) and re.fullmatch(_RUN_ID, run_id) else None


def record_pass(clients: Clients, props: RunProps, fingerprint: str, run_id: str) -> None:
    """Best effort: a marker that lets a rollback to these properties skip the run."""
    try:
        clients.s3.put_object(
            Bucket=props.results_bucket,
            Key=passed_marker_key(props, fingerprint),
            Body=json.dumps({"run_id": run_id, "passed_at": clients.clock()}).encode(),
            ContentType="application/json",
        )
    except (ClientError, BotoCoreError) as error:
        LOG.warning("could not record the pass of %s: %s", run_id, error)


def run_fingerprint(properties: Mapping[str, Any]) -> str:
    relevant = {key: properties.get(key) for key in RUN_PROPERTIES}
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


def rank_nodes(nodes: Sequence[Node]) -> list[Node]:
    """Nodes in the order torchrun's c10d rendezvous gives them group ranks.

    The dynamic rendezvous ranks participants by sorting their descriptors, whose first field is
    the node address (``torch.distributed.elastic.rendezvous.dynamic_rendezvous``,
    ``_mark_rendezvous_complete``); every node passes its private IP as ``--local-addr``. So
    sorting by that string here makes our node rank torch's group rank: global rank 0, the
    rendezvous store and ``NEURON_RT_ROOT_COMM_ID`` all land on node 0.
    """
    ordered = sorted(nodes, key=lambda n: (n.private_ip, n.instance_id))
    return [Node(rank, n.instance_id, n.private_ip, n.command_id) for rank, n in enumerate(ordered)]


def discover_nodes(clients: Clients, props: RunProps) -> list[Node]:
    """The group's InService instances with their private IPs, in rendezvous order."""
    name = props.auto_scaling_group_name
    groups = clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
        "AutoScalingGroups"
    ]
    if not groups:
        raise AcceptanceRunError(f"Auto Scaling group {name} not found")
    ids = sorted(
        i["InstanceId"] for i in groups[0]["Instances"] if i["LifecycleState"] == "InService"
    )
    if len(ids) != props.nodes:
        raise AcceptanceRunError(
            f"Auto Scaling group {name} has {len(ids)} InService instances, expected {props.nodes}"
        )
    described: dict[str, Mapping[str, Any]] = {}
    for page in clients.ec2.get_paginator("describe_instances").paginate(InstanceIds=ids):
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                described[instance["InstanceId"]] = instance
    nodes = []
    for instance_id in ids:
        instance = described.get(instance_id)
        if instance is None or not instance.get("PrivateIpAddress"):
            raise AcceptanceRunError(f"instance {instance_id} has no private IP address")
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        if tags.get(CLUSTER_TAG) != props.cluster_name:
            raise AcceptanceRunError(
                f"instance {instance_id} is not tagged {CLUSTER_TAG}={props.cluster_name}"
            )
        nodes.append(Node(0, instance_id, instance["PrivateIpAddress"]))
    return rank_nodes(nodes)


def discover_controller(clients: Clients, props: RunProps) -> Node:
    """The Slurm controller: the one InService instance of its group, tagged with the cluster."""
    name = props.controller_group_name
    groups = clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
        "AutoScalingGroups"
    ]
    if not groups:
        raise AcceptanceRunError(f"Slurm controller group {name} not found")
    ids = sorted(
        i["InstanceId"] for i in groups[0]["Instances"] if i["LifecycleState"] == "InService"
    )
    if len(ids) != 1:
        raise AcceptanceRunError(
            f"Slurm controller group {name} has {len(ids)} InService instances, expected 1"
        )
    reservations = clients.ec2.describe_instances(InstanceIds=ids)["Reservations"]
    instance = next((i for r in reservations for i in r["Instances"]), None)
    if instance is None or not instance.get("PrivateIpAddress"):
        raise AcceptanceRunError(f"Slurm controller {ids[0]} has no private IP address")
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    if tags.get(CLUSTER_TAG) != props.cluster_name:
        raise AcceptanceRunError(
            f"Slurm controller {ids[0]} is not tagged {CLUSTER_TAG}={props.cluster_name}"
        )
    return Node(0, ids[0], instance["PrivateIpAddress"], kind="controller")


def slurm_command_parameters(
    props: RunProps, run_id: str, region: str, addresses: Sequence[str] = ()
) -> dict[str, list[str]]:
    """The Slurm document's parameters of a run: on any idle nodes of the partition, or on
    exactly the nodes at ``addresses`` (after an image refresh)."""
    return {
        "Region": [region],
        "RunId": [run_id],
        "Nodes": [str(len(addresses) or props.nodes)],
        "ProcsPerNode": [str(props.procs_per_node)],
        "Partition": [props.partition],
        "JobUser": [props.job_user],
        "ControllerContainer": [props.controller_container],
        "RunsDir": [props.runs_dir],
        "RendezvousPort": [str(props.rendezvous_port)],
        "NeuronCommPort": [str(props.neuron_comm_port)],
        "ResultsUri": [props.results_uri(run_id)],
        "CompileCacheDir": [props.compile_cache_dir],
        "ExpectedNeuronDevices": [str(props.expected_neuron_devices)],
        "ExpectedEfaDevices": [str(props.expected_efa_devices)],
        "SuiteArgs": [props.suite_args],
        "ExecutionTimeout": [str(props.run_timeout_seconds)],
        "DrainAddresses": [""],
        "DrainFor": ["replace"],
        "NodeAddresses": [",".join(addresses)],
    }


def drain_in_slurm(clients: Clients, props: RunProps, run_id: str, hosts: Sequence[str]) -> None:
    """Best effort, before the nodes are marked Unhealthy: a drain-only command to the controller
    so that no job starts on them meanwhile (a terminating node leaves Slurm by itself too)."""
    try:
        controller = discover_controller(clients, props)
        clients.ssm.send_command(
            InstanceIds=[controller.instance_id],
            DocumentName=props.document_name,
            Parameters={
                **slurm_command_parameters(props, run_id, clients.region),
                "DrainAddresses": [",".join(hosts)],
            },
            TimeoutSeconds=DELIVERY_TIMEOUT_SECONDS,
            Comment=f"cdk-trn acceptance {run_id}: drain nodes to replace"[:100],
        )
    except (AcceptanceRunError, ClientError) as error:
        LOG.warning("could not drain %s in Slurm: %s", ", ".join(hosts), error)


def send_slurm_command(
    clients: Clients,
    props: RunProps,
    run_id: str,
    controller: Node,
    addresses: Sequence[str] = (),
) -> Node:
    """Send the Slurm document to the controller: it submits, waits for and uploads the job
    (on the nodes at ``addresses`` only, when given)."""
    try:
        response = clients.ssm.send_command(
            InstanceIds=[controller.instance_id],
            DocumentName=props.document_name,
            Parameters=slurm_command_parameters(props, run_id, clients.region, addresses),
            TimeoutSeconds=DELIVERY_TIMEOUT_SECONDS,
            Comment=f"cdk-trn acceptance {run_id} as a Slurm job"[:100],
        )
    except ClientError as error:
        code = _error_code(error) or "error"
        hint = (
            " (is the SSM agent registered? check the SSM VPC endpoints and the controller role)"
            if code == "InvalidInstanceId"
            else ""
        )
        raise AcceptanceRunError(
            f"SendCommand to the Slurm controller {controller.instance_id} failed: {code}{hint}: "
            f"{_error_message(error)}"
        ) from None
    return Node(
        0,
        controller.instance_id,
        controller.private_ip,
        response["Command"]["CommandId"],
        kind="controller",
    )


def command_parameters(
    props: RunProps, run_id: str, node: Node, rendezvous: Node, region: str
) -> dict[str, list[str]]:
    return {
        "ImageUri": [props.image_uri],
        "Region": [region],
        "RunId": [run_id],
        "NodeRank": [str(node.rank)],
        "LocalAddress": [node.private_ip],
        "Nodes": [str(props.nodes)],
        "ProcsPerNode": [str(props.procs_per_node)],
        "RendezvousHost": [rendezvous.private_ip],
        "RendezvousPort": [str(props.rendezvous_port)],
        "NeuronCommPort": [str(props.neuron_comm_port)],
        "ResultsUri": [props.results_uri(run_id)],
        "CompileCacheDir": [props.compile_cache_dir],
        "ExpectedNeuronDevices": [str(props.expected_neuron_devices)],
        "ExpectedEfaDevices": [str(props.expected_efa_devices)],
        "SuiteArgs": [props.suite_args],
        "ExecutionTimeout": [str(props.run_timeout_seconds)],
    }


def send_commands(
    clients: Clients, props: RunProps, run_id: str, nodes: Sequence[Node]
) -> list[Node]:
    # One command per node: the node rank is a document parameter, and SSM parameters are per
    # command, not per instance.
    sent: list[Node] = []
    for node in nodes:
        try:
            response = clients.ssm.send_command(
                InstanceIds=[node.instance_id],
                DocumentName=props.document_name,
                Parameters=command_parameters(props, run_id, node, nodes[0], clients.region),
                TimeoutSeconds=DELIVERY_TIMEOUT_SECONDS,
                Comment=f"cdk-trn acceptance {run_id} node {node.rank}"[:100],
            )
        except ClientError as error:
            cancel_commands(clients, sent)
            code = _error_code(error) or "error"
            hint = (
                " (is the SSM agent registered? check the SSM VPC endpoints and the node role)"
                if code == "InvalidInstanceId"
                else ""
            )
            raise AcceptanceRunError(
                f"SendCommand to {node.describe()} failed: {code}{hint}: {_error_message(error)}"
            ) from None
        sent.append(
            Node(node.rank, node.instance_id, node.private_ip, response["Command"]["CommandId"])
        )
    return sent


def cancel_commands(clients: Clients, nodes: Sequence[Node]) -> None:
    """Best effort: a run that already failed should not keep the other nodes busy."""
    for node in nodes:
        if not node.command_id:
            continue
        try:
            clients.ssm.cancel_command(CommandId=node.command_id, InstanceIds=[node.instance_id])
        except (ClientError, BotoCoreError) as error:
            LOG.warning("cancel of %s on %s failed: %s", node.command_id, node.instance_id, error)


# --------------------------------------------------------------------------------------------
# is_complete


def is_complete(
    event: Mapping[str, Any], context: Any = None, *, clients: Clients | None = None
) -> dict[str, Any]:
    """Is-complete handler (the deploy-time driver's API, the Provider framework's)."""
    if event["RequestType"] == "Delete":
        return {"IsComplete": True}
    props = RunProps.from_properties(event["ResourceProperties"])
    state = event.get("AcceptanceRun") or {}
    clients = clients or default_clients()
    run_id = str(state.get("RunId") or event["PhysicalResourceId"])
    if state.get("Reused"):
        return {"IsComplete": True, "Data": reused_figures(clients, props, run_id)}

    if state.get("NotRun"):
        return _report_not_run(props, run_id, str(state["NotRun"]), "nodes not refreshed")
    if (state.get("Refresh") or {}).get("Phase") == "draining":
        return after_drain(clients, props, state)
    if state.get("Replacing"):
        return _after_replacement(clients, props, state)
    run_id = str(state.get("AttemptId") or run_id)
    nodes = [Node(**n) for n in state["Nodes"]]
    now = clients.clock()
    deadline = float(state["Deadline"])
    invocations = command_statuses(clients, props, nodes, float(state["StartedAt"]))
    failed = [n for n in nodes if _is_failed(invocations[n.rank].status)]
    for node in failed:
        # Exit code and end time of the failed ones only: one call per node.
        invocations[node.rank] = command_invocation(clients, node)
    running = [n for n in nodes if invocations[n.rank].status in _RUNNING]
    LOG.info("run %s: %s", run_id, {n.rank: invocations[n.rank].status for n in nodes})

    if failed:
        first_end = min((invocations[n.rank].finished_at or now) for n in failed)
        if running and now - first_end < FAILURE_GRACE_SECONDS and now < deadline:
            return {"IsComplete": False}
        cancel_commands(clients, running)
        codes = {invocations[n.rank].response_code for n in failed}
        if props.slurm and ACCEPTANCE_NOT_READY_EXIT in codes and state.get("Refresh"):
            return _not_ready(clients, props, state, run_id, failed, invocations)
        if props.slurm and ACCEPTANCE_BUSY_EXIT in codes:
            return _busy(clients, props, state, run_id, failed, invocations)
        summary = read_summary(clients, props, run_id)
        if summary is not None and not summary.get("passed", False):
            replacing = _replace_or_none(clients, props, state, summary, nodes, run_id, now)
            if replacing is not None:
                return replacing
            raise AcceptanceRunError(
                failure_reason(
                    run_id,
                    _replaced_first(state)
                    + summary_failures(
                        summary, props, _suite_nodes(nodes), run_id, _run_nodes(props, state)
                    ),
                    props,
                )
            )
        raise AcceptanceRunError(
            failure_reason(
                run_id, [node_failure(clients, n, invocations[n.rank]) for n in failed], props
            )
        )

    if running:
        if now >= deadline:
            cancel_commands(clients, running)
            started = float(state.get("StartedAt", deadline - props.run_timeout_seconds))
            waiting = [f"{n.describe()} {invocations[n.rank].status}" for n in running]
            raise AcceptanceRunError(
                _limit(
                    f"acceptance run {run_id} timed out after {(now - started) / 60:.0f} min "
                    f"(limit {props.run_timeout_seconds / 60:.0f} min) waiting for "
                    + "; ".join(waiting)
                    + f". Partial results: {props.results_uri(run_id)}"
                )
            )
        return {"IsComplete": False}

    summary = read_summary(clients, props, run_id)
    if summary is None:
        raise AcceptanceRunError(
            f"acceptance run {run_id}: every node succeeded but the results are missing: "
            f"s3://{props.results_bucket}/{props.summary_key(run_id)} not found"
        )
    failures = summary_failures(
        summary, props, _suite_nodes(nodes), run_id, _run_nodes(props, state)
    )
    if failures:
        replacing = _replace_or_none(clients, props, state, summary, nodes, run_id, now)
        if replacing is not None:
            return replacing
        raise AcceptanceRunError(failure_reason(run_id, _replaced_first(state) + failures, props))
    record_pass(clients, props, run_fingerprint(event["ResourceProperties"]), run_id)
    data = figures_data(summary, props, run_id)
    if state.get("Replaced"):
        data["ReplacedNodes"] = ",".join(r["InstanceId"] for r in state["Replaced"])
    if state.get("Refresh"):
        data.update(refresh_data(state))
    return {"IsComplete": True, "Data": data}


# --------------------------------------------------------------------------------------------
# nodes below threshold: replaced, and the run repeated, within the resource's hour


def replacement_plan(
    summary: Mapping[str, Any], nodes: int
) -> dict[str, list[dict[str, Any]]] | None:
    """The nodes (by the address the suite names them with) whose failures a new instance may
    fix, and those failures; None when any failure is not node-local, names no node, or every
    node failed (then the cause is not a node)."""
    plan: dict[str, list[dict[str, Any]]] = {}
    for failure in summary.get("failures") or []:
        if not isinstance(failure, Mapping) or failure.get("check") not in NODE_LOCAL_CHECKS:
            return None
        host = str(failure.get("node") or "")
        if not host or host == "unknown":
            return None
        plan.setdefault(host, []).append(dict(failure))
    if not plan or len(plan) >= nodes:
        return None
    return plan


def replacement_fits(started: float, now: float, deadline: float) -> bool:
    """A round (a node's boot, then the run again, as long as this one took) ends by the
    deadline."""
    return now + NODE_BOOT_SECONDS + (now - started) <= deadline


def attempt_run_id(run_id: str, round_: int) -> str:
    return run_id if round_ == 0 else f"{run_id[:59]}-r{round_}"


def _replace_or_none(
    clients: Clients,
    props: RunProps,
    state: Mapping[str, Any],
    summary: Mapping[str, Any],
    nodes: Sequence[Node],
    run_id: str,
    now: float,
) -> dict[str, Any] | None:
    """Start a replacement round for the nodes below threshold, or None when the run must fail:
    not node-local, rounds used up, or no time for a boot and another run."""
    rounds = int(state.get("Round", 0))
    plan = replacement_plan(summary, _run_nodes(props, state))
    if plan is None or rounds >= MAX_REPLACEMENT_ROUNDS:
        return None
    if not replacement_fits(float(state["StartedAt"]), now, float(state["Deadline"])):
        LOG.info("no time for a replacement round before %s", state["Deadline"])
        return None
    instances = instances_of(clients, props, nodes, list(plan))
    if len(instances) != len(plan):
        return None
    if props.slurm:
        drain_in_slurm(clients, props, run_id, list(instances))
    replaced = []
    for host, instance_id in instances.items():
        problems = "; ".join(str(f.get("message") or f.get("check")) for f in plan[host])
        LOG.info("replacing %s (%s): %s", instance_id, host, problems)
        clients.autoscaling.set_instance_health(
            InstanceId=instance_id, HealthStatus="Unhealthy", ShouldRespectGracePeriod=False
        )
        replaced.append({"InstanceId": instance_id, "Host": host, "Problems": problems})
    new_state = {
        **state,
        "Replacing": True,
        "Round": rounds + 1,
        "ReplacingSince": now,
        "Replaced": [*state.get("Replaced", []), *replaced],
        "FailedAttempt": run_id,
    }
    return {
        "IsComplete": False,
        "Status": f"replacing {', '.join(instances.values())} (below threshold in {run_id})",
        "AcceptanceRun": new_state,
    }


def instances_of(
    clients: Clients, props: RunProps, nodes: Sequence[Node], hosts: Sequence[str]
) -> dict[str, str]:
    """Host (private IP) -> instance id, for nodes of this cluster's group only."""
    known = {n.private_ip: n.instance_id for n in nodes if n.kind == "node"}
    found = {h: known[h] for h in hosts if h in known}
    missing = [h for h in hosts if h not in found]
    if missing:
        reservations = clients.ec2.describe_instances(
            Filters=[
                {"Name": "private-ip-address", "Values": missing},
                {"Name": f"tag:{CLUSTER_TAG}", "Values": [props.cluster_name]},
                {
                    "Name": "tag:aws:autoscaling:groupName",
                    "Values": [props.auto_scaling_group_name],
                },
            ]
        )["Reservations"]
        for instance in (i for r in reservations for i in r["Instances"]):
            if instance.get("PrivateIpAddress") in missing:
                found[instance["PrivateIpAddress"]] = instance["InstanceId"]
    return found


def _after_replacement(
    clients: Clients, props: RunProps, state: Mapping[str, Any]
) -> dict[str, Any]:
    """Once the group has the run's nodes InService besides the replaced ones (after an image
    refresh: on the current launch template version) and, for a replacement round, a boot's time
    has passed, run again (a new attempt id); until then, wait. After a refresh the run goes to
    exactly those nodes, and the Slurm document answers "not ready" until each is idle in Slurm
    (the successors' boot), so no boot time is assumed."""
    now = clients.clock()
    deadline = float(state["Deadline"])
    refresh = state.get("Refresh") or {}
    replaced = {
        r["InstanceId"] for r in (*state.get("Replaced", []), *refresh.get("Refreshed", []))
    }
    waiting = f"replaced {', '.join(sorted(replaced))}; waiting for their successors"
    if now >= deadline:
        raise AcceptanceRunError(
            _limit(
                f"acceptance run {state['RunId']}: {waiting} until the deadline. "
                + "; ".join(_replaced_first(state))
            )
        )
    groups = clients.autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[props.auto_scaling_group_name]
    )["AutoScalingGroups"]
    in_service = [
        i["InstanceId"]
        for g in groups
        for i in g["Instances"]
        if i["LifecycleState"] == "InService"
        and i["InstanceId"] not in replaced
        and (not refresh or _version(i) == _version(g))
    ]
    need = _run_nodes(props, state)
    booted = bool(refresh) or now - float(state["ReplacingSince"]) >= NODE_BOOT_SECONDS
    if len(in_service) < need or not booted:
        return {"IsComplete": False, "Status": waiting}
    round_ = int(state.get("Round", 0))
    run_id = attempt_run_id(str(state["RunId"]), round_)
    on: dict[str, str] = {}
    if props.slurm:
        if refresh:
            on = addresses_of(clients, props, sorted(in_service))
        controller = discover_controller(clients, props)
        nodes = [send_slurm_command(clients, props, run_id, controller, list(on.values()))]
    else:
        nodes = send_commands(clients, props, run_id, discover_nodes(clients, props))
    new_state = {
        **state,
        "Replacing": False,
        "AttemptId": run_id,
        "Nodes": [asdict(n) for n in nodes],
    }
    if refresh:
        new_state["Refresh"] = {**refresh, "RanOn": sorted(on)}
        new_state["RunNodes"] = len(on)
    return {
        "IsComplete": False,
        "Status": f"running {run_id} after replacing {', '.join(sorted(replaced))}",
        "AcceptanceRun": new_state,
    }


def _replaced_first(state: Mapping[str, Any]) -> list[str]:
    """What the earlier rounds replaced, with why: the start of a final failure's reason."""
    return [
        f"replaced {r['InstanceId']} ({r['Host']}): {r['Problems']}"
        for r in state.get("Replaced", [])
    ]


def stale_nodes(clients: Clients, props: RunProps) -> list[str]:
    """InService nodes launched from an older version of the group's launch template (an image
    or boot change they have not taken yet)."""
    groups = clients.autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[props.auto_scaling_group_name]
    )["AutoScalingGroups"]
    stale = []
    for group in groups:
        current = str((group.get("LaunchTemplate") or {}).get("Version") or "")
        for instance in group["Instances"]:
            version = str((instance.get("LaunchTemplate") or {}).get("Version") or "")
            if instance["LifecycleState"] == "InService" and current and version != current:
                stale.append(str(instance["InstanceId"]))
    return sorted(stale)


# --------------------------------------------------------------------------------------------
# an image change: nodes on an earlier launch template are refreshed before the run


def refresh_fits(now: float, deadline: float) -> bool:
    """A refresh (a node's boot, then a run of at least as long) ends by the deadline."""
    return now + NODE_BOOT_SECONDS + REFRESH_RUN_RESERVE_SECONDS <= deadline


def start_refresh(
    clients: Clients, props: RunProps, run_id: str, started: float, stale: Sequence[str]
) -> dict[str, Any]:
    """Drain the stale nodes in Slurm (a drain-only command to the controller, which reports each
    node's state and jobs after the drain); is_complete then replaces the drained idle ones.
    With ``WhenBusy=fail`` the controller drains none when none is idle (the deploy fails)."""
    deadline = started + props.run_timeout_seconds
    if not refresh_fits(started, deadline):
        return _not_run(
            props,
            run_id,
            f"acceptance run {run_id} not started: {len(stale)} of {props.nodes} nodes "
            f"({', '.join(stale)}) run an earlier launch template version than the one with "
            f"image {props.image_uri}, and refreshing them (a boot of about "
            f"{NODE_BOOT_MINUTES} min, then the run) does not fit the run's "
            f"{props.run_timeout_seconds // 60} min. Fix: raise total_timeout",
        )
    hosts = addresses_of(clients, props, stale)
    controller = discover_controller(clients, props)
    drain_for = "refresh" if props.when_busy == "report" else "refresh-if-idle"
    try:
        response = clients.ssm.send_command(
            InstanceIds=[controller.instance_id],
            DocumentName=props.document_name,
            Parameters={
                **slurm_command_parameters(props, run_id, clients.region),
                "DrainAddresses": [",".join(hosts[i] for i in stale)],
                "DrainFor": [drain_for],
            },
            TimeoutSeconds=DELIVERY_TIMEOUT_SECONDS,
            Comment=f"cdk-trn acceptance {run_id}: drain nodes to refresh"[:100],
        )
    except ClientError as error:
        raise AcceptanceRunError(
            f"SendCommand to the Slurm controller {controller.instance_id} (drain the nodes on "
            f"the earlier launch template) failed: {_error_code(error)}: {_error_message(error)}"
        ) from None
    command = Node(
        0,
        controller.instance_id,
        controller.private_ip,
        response["Command"]["CommandId"],
        kind="controller",
    )
    return {
        "PhysicalResourceId": run_id,
        "Data": {"RunId": run_id, "ResultsUri": props.results_uri(run_id)},
        "AcceptanceRun": {
            "RunId": run_id,
            "Reused": False,
            "StartedAt": started,
            "Deadline": deadline,
            "Refresh": {
                "Phase": "draining",
                "Command": asdict(command),
                "Stale": [{"InstanceId": i, "Host": hosts[i]} for i in stale],
            },
        },
    }


@dataclass(frozen=True)
class SlurmNodeState:
    """One line of the controller's refresh report: a node's state and jobs after the drain."""

    address: str
    name: str
    state: str
    jobs: tuple[str, ...]

    @property
    def replaceable(self) -> bool:
        """Drained (not draining) and without a job: replacing it ends no one's work."""
        return self.state.rstrip("*~#!%$@^-") == "drained" and not self.jobs


def parse_refresh_report(text: str) -> dict[str, SlurmNodeState]:
    """``cdk-trn refresh: <address> <node> <state> <job ids or ->`` lines, by address."""
    found: dict[str, SlurmNodeState] = {}
    for line in text.splitlines():
        words = line.split()
        if words[:2] != ["cdk-trn", "refresh:"] or len(words) != 6:
            continue
        address, name, state, jobs = words[2:]
        found[address] = SlurmNodeState(
            address,
            "" if name == "-" else name,
            state,
            tuple(j for j in jobs.split(",") if j and j != "-"),
        )
    return found


def after_drain(clients: Clients, props: RunProps, state: Mapping[str, Any]) -> dict[str, Any]:
    """When the drain command has reported: mark the drained idle nodes Unhealthy (their group
    replaces them from the current launch template) and wait for their successors; the busy
    ones stay drained and the controller's reaper refreshes each when its jobs end. When none
    could be refreshed, fail at once naming the nodes and their jobs (or report, not run)."""
    refresh = state["Refresh"]
    run_id = str(state["RunId"])
    command = Node(**refresh["Command"])
    now = clients.clock()
    invocation = command_invocation(clients, command)
    if invocation.status in _RUNNING:
        if now >= float(state["Deadline"]):
            cancel_commands(clients, [command])
            raise AcceptanceRunError(
                f"acceptance run {run_id}: the controller did not drain the nodes on the earlier "
                f"launch template by the deadline ({invocation.status})"
            )
        return {"IsComplete": False, "Status": "draining the nodes on the earlier template"}
    if invocation.status != _SUCCESS:
        raise AcceptanceRunError(
            _limit(
                f"acceptance run {run_id}: draining the nodes on the earlier launch template "
                f"failed: {node_failure(clients, command, invocation)}"
            )
        )
    output = clients.ssm.get_command_invocation(
        CommandId=command.command_id, InstanceId=command.instance_id
    ).get("StandardOutputContent", "")
    report = parse_refresh_report(output)
    refreshed: list[dict[str, Any]] = []
    waiting: list[dict[str, Any]] = []
    for stale in refresh["Stale"]:
        node = report.get(stale["Host"])
        entry = {
            **stale,
            "Node": node.name if node else "",
            "State": node.state if node else "unreported",
            "Jobs": list(node.jobs) if node else [],
        }
        if node is not None and node.name and node.replaceable:
            refreshed.append(entry)
        else:
            waiting.append(entry)
    for entry in refreshed:
        LOG.info("refreshing %s (%s): drained, no job", entry["InstanceId"], entry["Node"])
        clients.autoscaling.set_instance_health(
            InstanceId=entry["InstanceId"], HealthStatus="Unhealthy", ShouldRespectGracePeriod=False
        )
    new_refresh = {**refresh, "Phase": "replacing", "Refreshed": refreshed, "Waiting": waiting}
    new_state = {
        **state,
        "Refresh": new_refresh,
        "Replacing": True,
        "ReplacingSince": now,
        "RunNodes": props.nodes - len(waiting),
    }
    if not refreshed:
        reason = (
            f"acceptance run {run_id} not started: the image changed to {props.image_uri} and "
            f"no node on the earlier launch template could be refreshed: "
            f"{_describe_waiting(waiting)}. A deploy never terminates a node that runs a job, "
            "and the run never queues behind users' jobs"
        )
        if props.when_busy == "report":
            return _report_not_run(
                props,
                run_id,
                reason + "; they stay drained and are refreshed as their jobs end",
                "nodes busy",
                new_state,
            )
        raise AcceptanceRunError(
            _limit(
                reason + ". Fix: deploy again between jobs, or set the acceptance run's "
                "when_busy='report' to deploy now and have each node refreshed when its jobs end."
            )
        )
    names = ", ".join(e["InstanceId"] for e in refreshed)
    return {
        "IsComplete": False,
        "Status": f"refreshing {names}; waiting for their successors",
        "AcceptanceRun": new_state,
    }


def refresh_data(state: Mapping[str, Any]) -> dict[str, str]:
    """What a result says about a refresh: the nodes the run ran on, and those still waiting for
    their jobs (drained; the reaper refreshes them)."""
    refresh = state["Refresh"]
    return {
        "RanOn": _bounded(list(refresh.get("RanOn", []))),
        "AwaitingRefresh": _bounded(
            [_describe_node(e) for e in refresh.get("Waiting", [])], separator="; "
        ),
    }


def _describe_waiting(waiting: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(_describe_node(e) for e in waiting) or "none reported by Slurm"


def _describe_node(entry: Mapping[str, Any]) -> str:
    jobs = ",".join(entry.get("Jobs", [])) or "none"
    name = entry.get("Node") or f"no Slurm node at {entry['Host']}"
    return f"{entry['InstanceId']} ({name}, {entry['State']}, jobs {jobs})"


def _bounded(items: Sequence[str], separator: str = ",", limit: int = NODE_LIST_LIMIT) -> str:
    shown: list[str] = []
    for index, item in enumerate(items):
        more = f" (+{len(items) - index} more)"
        if len(separator.join([*shown, item])) + len(more) > limit:
            return separator.join(shown) + more
        shown.append(item)
    return separator.join(shown)


def _version(item: Mapping[str, Any]) -> str:
    return str((item.get("LaunchTemplate") or {}).get("Version") or "")


def _run_nodes(props: RunProps, state: Mapping[str, Any]) -> int:
    """How many nodes this run has: all of them, or after a refresh those not waiting."""
    return int(state.get("RunNodes") or props.nodes)


def addresses_of(clients: Clients, props: RunProps, ids: Sequence[str]) -> dict[str, str]:
    """Instance id -> private IP, for instances of this cluster (checked by its tag)."""
    found: dict[str, str] = {}
    for page in clients.ec2.get_paginator("describe_instances").paginate(InstanceIds=list(ids)):
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                if tags.get(CLUSTER_TAG) != props.cluster_name:
                    raise AcceptanceRunError(
                        f"instance {instance['InstanceId']} is not tagged "
                        f"{CLUSTER_TAG}={props.cluster_name}"
                    )
                if instance.get("PrivateIpAddress"):
                    found[instance["InstanceId"]] = instance["PrivateIpAddress"]
    missing = [i for i in ids if i not in found]
    if missing:
        raise AcceptanceRunError(f"instances {', '.join(missing)} have no private IP address")
    return found


def _not_run(props: RunProps, run_id: str, reason: str) -> dict[str, Any]:
    """on_event's answer for a run that will not start: fail now, or (``WhenBusy=report``) hand
    the reason to is_complete, which completes and reports it."""
    if props.when_busy != "report":
        raise AcceptanceRunError(_limit(reason + ", or set when_busy='report'."))
    return {
        "PhysicalResourceId": run_id,
        "Data": {"RunId": run_id, "ResultsUri": props.results_uri(run_id)},
        "AcceptanceRun": {"RunId": run_id, "Reused": False, "NotRun": reason},
    }


def _report_not_run(
    props: RunProps,
    run_id: str,
    reason: str,
    why: str,
    state: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    LOG.warning(reason)
    data = {
        **{name: _NOT_AVAILABLE for name in props.exported_figures},
        "RunId": run_id,
        "ResultsUri": props.results_uri(run_id),
        "Passed": f"not-run: {why}",
        "WorldSize": _NOT_AVAILABLE,
        "ImageUri": props.image_uri,
    }
    if state is not None and state.get("Refresh"):
        data.update(refresh_data(state))
    return {"IsComplete": True, "Data": data}


def _busy(
    clients: Clients,
    props: RunProps,
    state: Mapping[str, Any],
    run_id: str,
    failed: Sequence[Node] = (),
    invocations: Mapping[int, Invocation] | None = None,
) -> dict[str, Any]:
    """The job would have waited behind users' jobs: never queue. While successors of nodes
    replaced below threshold are still joining, try again; otherwise fail at once or, with
    ``WhenBusy=report``, complete and say so. After an image refresh the run's nodes are named,
    so busy means a user's job took one of them: the reason names it."""
    if (
        state.get("Replaced")
        and not state.get("Refresh")
        and clients.clock() < float(state["Deadline"])
    ):
        return {
            "IsComplete": False,
            "Status": "the replaced nodes' successors are not idle in Slurm yet",
            "AcceptanceRun": {**state, "Replacing": True},
        }
    if state.get("Refresh") and failed and invocations is not None:
        said = "; ".join(node_failure(clients, n, invocations[n.rank]) for n in failed)
        reason = (
            f"acceptance run {run_id} not started: users' jobs took refreshed nodes before the "
            f"run ({said}), and the run never queues behind them. Image: {props.image_uri}."
        )
    else:
        reason = (
            f"acceptance run {run_id} not started: {_run_nodes(props, state)} idle nodes of "
            f"partition {props.partition} were not available (users' jobs hold them), and the "
            f"run never queues behind them. Image: {props.image_uri}."
        )
    if props.when_busy == "report":
        return _report_not_run(props, run_id, reason, "cluster busy", state)
    raise AcceptanceRunError(
        _limit(
            reason + " Fix: deploy again when the nodes are idle, or set the acceptance run's "
            "when_busy='report' to deploy without it."
        )
    )


def _not_ready(
    clients: Clients,
    props: RunProps,
    state: Mapping[str, Any],
    run_id: str,
    failed: Sequence[Node],
    invocations: Mapping[int, Invocation],
) -> dict[str, Any]:
    """A node of the run's list is not idle in Slurm yet (a refreshed node's successor still
    booting): try again until the deadline."""
    if clients.clock() < float(state["Deadline"]):
        return {
            "IsComplete": False,
            "Status": "the refreshed nodes' successors are not idle in Slurm yet",
            "AcceptanceRun": {**state, "Replacing": True},
        }
    said = "; ".join(node_failure(clients, n, invocations[n.rank]) for n in failed)
    raise AcceptanceRunError(
        _limit(
            f"acceptance run {run_id}: the refreshed nodes' successors were not idle in Slurm "
            f"by the deadline ({said}). Image: {props.image_uri}."
        )
    )


def command_statuses(
    clients: Clients, props: RunProps, nodes: Sequence[Node], started: float
) -> dict[int, Invocation]:
    """Status of every node's command from ListCommands: one call per 50 commands, so polling
    stays cheap for large clusters. A command SSM does not list yet counts as Pending."""
    by_id = {n.command_id: n for n in nodes}
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started - 300))
    statuses = {n.rank: Invocation("Pending") for n in nodes}
    pages = clients.ssm.get_paginator("list_commands").paginate(
        Filters=[
            {"key": "DocumentName", "value": props.document_name},
            {"key": "InvokedAfter", "value": since},
        ],
        PaginationConfig={"PageSize": 50},
    )
    for page in pages:
        for command in page["Commands"]:
            node = by_id.get(command.get("CommandId", ""))
            if node is not None:
                statuses[node.rank] = Invocation(
                    command.get("Status", "Pending"), command.get("StatusDetails", "")
                )
    return statuses


def command_invocation(clients: Clients, node: Node) -> Invocation:
    listed = clients.ssm.list_command_invocations(
        CommandId=node.command_id, InstanceId=node.instance_id, Details=True
    )["CommandInvocations"]
    if not listed:
        # SSM lists an invocation a moment after SendCommand returns.
        return Invocation("Pending")
    invocation = listed[0]
    plugins = invocation.get("CommandPlugins") or [{}]
    finished = plugins[-1].get("ResponseFinishDateTime")
    return Invocation(
        status=invocation["Status"],
        details=invocation.get("StatusDetails", ""),
        response_code=plugins[-1].get("ResponseCode"),
        finished_at=finished.timestamp() if finished is not None else None,
    )


def node_failure(clients: Clients, node: Node, invocation: Invocation) -> str:
    text = f"{node.describe()} command {invocation.details or invocation.status}"
    if invocation.response_code is not None and invocation.response_code >= 0:
        text += f", exit code {invocation.response_code}"
    try:
        detail = clients.ssm.get_command_invocation(
            CommandId=node.command_id, InstanceId=node.instance_id
        )
    except ClientError:
        return text
    tail = _last_line(detail.get("StandardErrorContent", ""))
    return f"{text}: {tail}" if tail else text


def read_summary(clients: Clients, props: RunProps, run_id: str) -> dict[str, Any] | None:
    """Rank 0's summary: under node 0 when the ranks came out as planned, else wherever it is."""
    key = props.summary_key(run_id)
    body = _get_object(clients, props.results_bucket, key)
    if body is None:
        found = _find_summary_key(clients, props, run_id)
        if found is None:
            return None
        key = found
        body = _get_object(clients, props.results_bucket, key)
    if body is None:
        return None
    try:
        summary = json.loads(body)
    except ValueError:
        raise AcceptanceRunError(
            f"acceptance run {run_id}: s3://{props.results_bucket}/{key} is not valid JSON"
        ) from None
    if not isinstance(summary, dict):
        raise AcceptanceRunError(
            f"acceptance run {run_id}: s3://{props.results_bucket}/{key} is not a JSON object"
        )
    return summary


def _get_object(clients: Clients, bucket: str, key: str) -> bytes | None:
    try:
        return bytes(clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as error:
        if _error_code(error) in ("NoSuchKey", "404", "NotFound", "AccessDenied", "403"):
            return None
        raise


def _find_summary_key(clients: Clients, props: RunProps, run_id: str) -> str | None:
    prefix = props.run_prefix(run_id)
    pages = clients.s3.get_paginator("list_objects_v2").paginate(
        Bucket=props.results_bucket, Prefix=prefix
    )
    try:
        for page in pages:
            for item in page.get("Contents", []):
                if re.fullmatch(re.escape(prefix) + r"[0-9]+/summary\.json", item["Key"]):
                    return str(item["Key"])
    except ClientError as error:
        if _error_code(error) in ("AccessDenied", "403", "NoSuchBucket"):
            return None
        raise
    return None


def summary_failures(
    summary: Mapping[str, Any],
    props: RunProps,
    nodes: Sequence[Node],
    run_id: str,
    run_nodes: int | None = None,
) -> list[str]:
    """Everything wrong with a summary, most specific first; empty when the run passed.
    ``run_nodes``: the run's node count when not all nodes (after an image refresh)."""
    if summary.get("schema_version") != SCHEMA_VERSION:
        return [f"summary schema_version {summary.get('schema_version')!r} is not {SCHEMA_VERSION}"]
    problems: list[str] = []
    if summary.get("run_id") != run_id:
        problems.append(f"summary is of run {summary.get('run_id')!r}, not {run_id}")
    expected_world = (run_nodes or props.nodes) * props.procs_per_node
    if summary.get("world_size") != expected_world:
        problems.append(f"world size {summary.get('world_size')} != expected {expected_world}")
    by_rank = {n.rank: n for n in nodes}
    for failure in summary.get("failures") or []:
        problems.append(_container_failure(failure, by_rank, props.procs_per_node))
    figures = run_figures(summary, props)
    for check in props.checks:
        value = figures.get(check.figure)
        if value is None:
            problems.append(f"{check.figure} missing from the summary")
            continue
        violation = check.violation(value)
        if violation and not any(check.figure in p for p in problems):
            problems.append(violation)
    for name in props.exported_figures:
        if name not in figures and not any(name in p for p in problems):
            problems.append(f"{name} missing from the summary")
    if not summary.get("passed", False) and not problems:
        problems.append("the suite reported passed=false without failures")
    return problems


def run_figures(summary: Mapping[str, Any] | None, props: RunProps) -> dict[str, float]:
    """The summary's numeric figures plus the ones derived here (per chip from per device)."""
    raw = (summary or {}).get("figures") or {}
    figures = {
        str(name): number
        for name, value in (raw.items() if isinstance(raw, Mapping) else [])
        if (number := _as_number(value)) is not None
    }
    for derived, per_device in PER_CHIP_FIGURES.items():
        if derived not in figures and per_device in figures:
            figures[derived] = figures[per_device] * props.devices_per_chip
    tokens_per_s = figures.get("train_tokens_per_s")
    if props.hourly_price and tokens_per_s is not None:
        per_million = usd_per_million_tokens(tokens_per_s, props.hourly_price)
        if per_million is not None:
            figures[COST_FIGURE] = round(per_million, 4)
    return figures


def figures_data(summary: Mapping[str, Any], props: RunProps, run_id: str) -> dict[str, str]:
    figures = run_figures(summary, props)
    data = {name: _number(figures.get(name)) for name in props.exported_figures}
    data.update(
        RunId=run_id,
        ResultsUri=props.results_uri(run_id),
        Passed="true",
        WorldSize=str(summary.get("world_size")),
        ImageUri=props.image_uri,
    )
    return data


def reused_figures(clients: Clients, props: RunProps, run_id: str) -> dict[str, str]:
    """Figures of the previous run when an Update did not change the run (never fails)."""
    summary = None
    # The run's last attempt: after a replacement round the passing run is <run id>-r<round>.
    for round_ in range(MAX_REPLACEMENT_ROUNDS, -1, -1):
        attempt = attempt_run_id(run_id, round_)
        try:
            summary = read_summary(clients, props, attempt)
        except (AcceptanceRunError, ClientError, BotoCoreError) as error:
            LOG.warning("previous summary of %s unreadable: %s", attempt, error)
            summary = None
        if summary is not None:
            run_id = attempt
            break
    figures = run_figures(summary, props)
    data = {name: _number(figures.get(name)) for name in props.exported_figures}
    data.update(
        RunId=run_id,
        ResultsUri=props.results_uri(run_id),
        Passed="true" if (summary or {}).get("passed") else _NOT_AVAILABLE,
        WorldSize=str((summary or {}).get("world_size", _NOT_AVAILABLE)),
        ImageUri=props.image_uri,
    )
    return data


def failure_reason(run_id: str, problems: Sequence[str], props: RunProps) -> str:
    """``acceptance run <id> failed: <problem>; <problem>. Results: s3://...``, within the limit."""
    head = f"acceptance run {run_id} failed: "
    tail = f". Results: {props.results_uri(run_id)}"
    room = REASON_LIMIT - len(head) - len(tail)
    shown: list[str] = []
    for index, problem in enumerate(problems):
        more = f" (+{len(problems) - index} more)"
        candidate = "; ".join([*shown, problem])
        if len(candidate) + len(more) > room and shown:
            return head + "; ".join(shown) + more + tail
        shown.append(problem[: room - len(more)])
    return head + "; ".join(shown) + tail


# --------------------------------------------------------------------------------------------
# small helpers


def _container_failure(failure: Any, nodes: Mapping[int, Node], procs_per_node: int) -> str:
    if not isinstance(failure, Mapping):
        return str(failure)
    check = failure.get("check", "check")
    where = _where(failure, nodes, procs_per_node)
    measured = _as_number(failure.get("measured"))
    threshold = _as_number(failure.get("threshold"))
    unit = str(failure.get("unit", ""))
    if measured is not None and threshold is not None and unit:
        text = f"{check} {_number(measured)} {unit} (threshold {_number(threshold)})"
    else:
        text = f"{check}: {failure.get('message', 'failed')}"
    return f"{text} on {where}" if where else text


def _where(failure: Mapping[str, Any], nodes: Mapping[int, Node], procs_per_node: int) -> str:
    """``node 1 (i-..., 10.0.1.12) rank 67``.

    The document names each node by its private IP (``--node``); ranks are laid out node by node
    in rendezvous order, which is our node order, so the rank finds the node when the name does not.
    """
    rank = failure.get("rank")
    host = str(failure.get("node") or "")
    node = next((n for n in nodes.values() if host and host in (n.private_ip, n.instance_id)), None)
    has_rank = isinstance(rank, int) and not isinstance(rank, bool)
    if node is None and has_rank and procs_per_node > 0:
        node = nodes.get(int(rank) // procs_per_node)  # type: ignore[arg-type]
    where = node.describe() if node else (f"host {host}" if host else "")
    if has_rank:
        where = f"{where} rank {rank}".strip()
    return where


def _suite_nodes(nodes: Sequence[Node]) -> list[Node]:
    """The nodes the suite ran on, as far as we know them: with Slurm, the job's nodes are
    Slurm's choice and the results name each by its address (``--node``)."""
    return [n for n in nodes if n.kind == "node"]


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
        return _NOT_AVAILABLE
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
