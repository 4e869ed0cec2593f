"""The Slurm launcher: the controller (the one InService instance of its group, tagged with the
cluster) gets the stack's Slurm document, which submits the suite as one Slurm job (or only
drains nodes); and which nodes of the group run an earlier launch template version."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from botocore.exceptions import ClientError

from cdk_trn_runtime.acceptance.common import (
    DELIVERY_TIMEOUT_SECONDS,
    AcceptanceRunError,
    Clients,
    Node,
    RunProps,
    _error_code,
    _error_message,
)
from cdk_trn_runtime.contract import CLUSTER_TAG
from cdk_trn_runtime.contract.acceptance import RUN_NODES_LINE, SlurmCommand

LOG = logging.getLogger(__name__)


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
    props: RunProps,
    run_id: str,
    region: str,
    addresses: Sequence[str] = (),
    *,
    drain: Sequence[str] = (),
    drain_for: str = "replace",
) -> dict[str, list[str]]:
    """The Slurm document's parameters of a run: on any idle nodes of the partition, or on
    exactly the nodes at ``addresses`` (after an image refresh); with ``drain``, a drain-only
    command for the nodes at those addresses (``drain_for``: why)."""
    return SlurmCommand(
        region=region,
        run_id=run_id,
        nodes=len(addresses) or props.nodes,
        procs_per_node=props.procs_per_node,
        rendezvous_port=props.rendezvous_port,
        neuron_comm_port=props.neuron_comm_port,
        compile_cache_dir=props.compile_cache_dir,
        expected_neuron_devices=props.expected_neuron_devices,
        expected_efa_devices=props.expected_efa_devices,
        suite_args=props.suite_args,
        execution_timeout=props.run_timeout_seconds,
        partition=props.partition or "",
        job_user=props.job_user or "",
        controller_container=props.controller_container or "",
        runs_dir=props.runs_dir or "",
        results_uri=props.results_uri(run_id),
        drain_addresses=",".join(drain),
        drain_for=drain_for,
        node_addresses=",".join(addresses),
    ).command_parameters()


def drain_in_slurm(
    clients: Clients, props: RunProps, run_id: str, hosts: Sequence[str]
) -> Node | None:
    """Before nodes below threshold are replaced: a drain-only command to the controller, so that
    no job starts on them meanwhile, which reports each node's state and jobs after the drain
    (only a node Slurm reports drained without a job is then replaced). None when it could not
    be sent (then nothing is replaced)."""
    try:
        controller = discover_controller(clients, props)
        response = clients.ssm.send_command(
            InstanceIds=[controller.instance_id],
            DocumentName=props.document_name,
            Parameters=slurm_command_parameters(props, run_id, clients.region, drain=hosts),
            TimeoutSeconds=DELIVERY_TIMEOUT_SECONDS,
            Comment=f"cdk-trn acceptance {run_id}: drain nodes to replace"[:100],
        )
    except (AcceptanceRunError, ClientError) as error:
        LOG.warning("could not drain %s in Slurm: %s", ", ".join(hosts), error)
        return None
    return Node(
        0,
        controller.instance_id,
        controller.private_ip,
        response["Command"]["CommandId"],
        kind="controller",
    )


def parse_run_nodes(output: str) -> set[str] | None:
    """The run's node addresses from the Slurm document's output: the first
    :data:`~cdk_trn_runtime.contract.acceptance.RUN_NODES_LINE` (the controller prints it before
    any of the job's own output, so a line the job wrote comes later); None without one."""
    for line in output.splitlines():
        if line.startswith(RUN_NODES_LINE + " "):
            words = line[len(RUN_NODES_LINE) :].split()
            if words in ([], ["-"]):
                return set()
            found = set()
            for address in words[0].split(","):
                try:
                    found.add(str(ipaddress.IPv4Address(address)))
                except ValueError:
                    LOG.warning("ignoring %r in the run's node list", address)
            return found
    return None


def run_nodes(clients: Clients, command: Node) -> set[str]:
    """The addresses of the nodes Slurm allocated to the run's job, as the controller reported
    them after the job; none when it did not (then no node is replaced)."""
    try:
        output = clients.ssm.get_command_invocation(
            CommandId=command.command_id, InstanceId=command.instance_id
        ).get("StandardOutputContent", "")
    except ClientError as error:
        LOG.warning("could not read the run's node list from %s: %s", command.command_id, error)
        return set()
    found = parse_run_nodes(output)
    if found is None:
        LOG.warning("the controller's output names no run nodes (%s)", command.command_id)
    return found or set()


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
