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
    in_service_ids,
)
from cdk_trn_runtime.contract import CLUSTER_TAG
from cdk_trn_runtime.contract.acceptance import (
    CONTROL_DIR,
    LIST_SUFFIX,
    REPORT_SUFFIX,
    RUN_NODES_KEY,
    SlurmCommand,
)

LOG = logging.getLogger(__name__)


def discover_controller(clients: Clients, props: RunProps) -> Node:
    """The Slurm controller: the one InService instance of its group, tagged with the cluster."""
    name = props.controller_group_name
    if not name:
        raise AcceptanceRunError("the run's properties name no Slurm controller group")
    ids = in_service_ids(clients, name, "Slurm controller group")
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


#: Stems (under a run's results prefix) of the node lists handed to the controller.
NODE_LIST_STEM = f"{CONTROL_DIR}nodes"


def drain_list_stem(drain_for: str) -> str:
    return f"{CONTROL_DIR}drain-{drain_for}"


def slurm_command_parameters(
    props: RunProps,
    run_id: str,
    region: str,
    *,
    nodes: int = 0,
    node_list: str = "",
    drain_list: str = "",
    drain_for: str = "replace",
) -> dict[str, list[str]]:
    """The Slurm document's parameters of a run: on any idle nodes of the partition, or on
    exactly ``nodes`` nodes listed at ``node_list`` (after an image refresh); with
    ``drain_list``, a drain-only command for the nodes listed there (``drain_for``: why). The
    lists are S3 objects under the run's prefix (:func:`put_list`)."""
    return SlurmCommand(
        region=region,
        run_id=run_id,
        nodes=nodes or props.nodes,
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
        drain_list=drain_list,
        drain_for=drain_for,
        node_list=node_list,
    ).command_parameters()


def put_list(
    clients: Clients, props: RunProps, run_id: str, stem: str, addresses: Sequence[str]
) -> str:
    """Write ``addresses`` (one a line) for the controller under the run's prefix: no SSM
    parameter limit applies (a 1024-node cluster's list is about 14 KB). Returns ``stem``."""
    key = props.control_key(run_id, stem + LIST_SUFFIX)
    try:
        clients.s3.put_object(
            Bucket=props.results_bucket,
            Key=key,
            Body="".join(a + "\n" for a in addresses).encode("ascii"),
            ContentType="text/plain",
        )
    except ClientError as error:
        raise AcceptanceRunError(
            f"could not write the node list s3://{props.results_bucket}/{key}: "
            f"{_error_code(error)}: {_error_message(error)}"
        ) from None
    return stem


def read_drain_report(clients: Clients, props: RunProps, run_id: str, drain_for: str) -> str | None:
    """The drain command's report (``cdk-trn refresh: ...`` lines), None when it is missing."""
    key = props.control_key(run_id, drain_list_stem(drain_for) + REPORT_SUFFIX)
    try:
        body = clients.s3.get_object(Bucket=props.results_bucket, Key=key)["Body"].read()
    except ClientError as error:
        if _error_code(error) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise AcceptanceRunError(
            f"could not read the drain report s3://{props.results_bucket}/{key}: "
            f"{_error_code(error)}: {_error_message(error)}"
        ) from None
    return bytes(body).decode("utf-8", "replace")


def send_drain(
    clients: Clients,
    props: RunProps,
    run_id: str,
    controller: Node,
    hosts: Sequence[str],
    drain_for: str,
) -> str:
    """Write the drain list and send the drain-only command; its command id."""
    stem = put_list(clients, props, run_id, drain_list_stem(drain_for), hosts)
    response = clients.ssm.send_command(
        InstanceIds=[controller.instance_id],
        DocumentName=props.document_name,
        Parameters=slurm_command_parameters(
            props, run_id, clients.region, drain_list=stem, drain_for=drain_for
        ),
        TimeoutSeconds=DELIVERY_TIMEOUT_SECONDS,
        Comment=f"cdk-trn acceptance {run_id}: drain nodes ({drain_for})"[:100],
    )
    return str(response["Command"]["CommandId"])


def drain_in_slurm(
    clients: Clients, props: RunProps, run_id: str, hosts: Sequence[str]
) -> Node | None:
    """Before nodes below threshold are replaced: a drain-only command to the controller, so that
    no job starts on them meanwhile, which reports each node's state and jobs after the drain
    (to S3: :func:`read_drain_report` with ``replace``; only a node Slurm reports drained without
    a job is then replaced). None when it could not be sent (then nothing is replaced)."""
    try:
        controller = discover_controller(clients, props)
        command_id = send_drain(clients, props, run_id, controller, hosts, "replace")
    except (AcceptanceRunError, ClientError) as error:
        LOG.warning("could not drain %s in Slurm: %s", ", ".join(hosts), error)
        return None
    return Node(0, controller.instance_id, controller.private_ip, command_id, kind="controller")


def parse_run_nodes(text: str) -> set[str]:
    """The addresses of :data:`~cdk_trn_runtime.contract.acceptance.RUN_NODES_KEY` (one a line);
    anything else on a line is ignored, and logged."""
    found = set()
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            found.add(str(ipaddress.IPv4Address(line.strip())))
        except ValueError:
            LOG.warning("ignoring %r in the run's node list", line[:80])
    return found


def run_nodes(clients: Clients, props: RunProps, run_id: str) -> set[str]:
    """The addresses of the nodes Slurm allocated to the run's job, as the controller wrote them
    (as root, from Slurm) after the job to the run's ``RUN_NODES_KEY``; none when it did not
    (then no node is replaced)."""
    key = props.control_key(run_id, RUN_NODES_KEY)
    try:
        body = clients.s3.get_object(Bucket=props.results_bucket, Key=key)["Body"].read()
    except ClientError as error:
        LOG.warning(
            "could not read the run's node list s3://%s/%s: %s: %s",
            props.results_bucket,
            key,
            _error_code(error),
            _error_message(error),
        )
        return set()
    return parse_run_nodes(bytes(body).decode("ascii", "replace"))


def send_slurm_command(
    clients: Clients,
    props: RunProps,
    run_id: str,
    controller: Node,
    addresses: Sequence[str] = (),
) -> Node:
    """Send the Slurm document to the controller: it submits, waits for and uploads the job
    (on the nodes at ``addresses`` only, when given: listed in S3 first)."""
    node_list = put_list(clients, props, run_id, NODE_LIST_STEM, addresses) if addresses else ""
    try:
        response = clients.ssm.send_command(
            InstanceIds=[controller.instance_id],
            DocumentName=props.document_name,
            Parameters=slurm_command_parameters(
                props, run_id, clients.region, nodes=len(addresses), node_list=node_list
            ),
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


#: Lifecycle states of a group's instances that can hold (or, resumed by Slurm's power saving,
#: take) a job: one of these on an earlier launch template version is stale.
STALE_STATES = frozenset({"InService", "Standby", "EnteringStandby"})


def stale_nodes(clients: Clients, props: RunProps) -> list[str]:
    """Nodes launched from another version of the group's launch template (an image or boot
    change they have not taken yet; after a rollback, a later one): InService, and also in
    Standby, where idle scale-in keeps stopped nodes that Slurm starts again as they are."""
    groups = clients.autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[props.auto_scaling_group_name]
    )["AutoScalingGroups"]
    stale = []
    for group in groups:
        current = str((group.get("LaunchTemplate") or {}).get("Version") or "")
        for instance in group["Instances"]:
            version = str((instance.get("LaunchTemplate") or {}).get("Version") or "")
            if instance["LifecycleState"] in STALE_STATES and current and version != current:
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
