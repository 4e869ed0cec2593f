"""The SSM launcher (a cluster without a scheduler): the suite on every InService node of the
group, ranked the way torchrun's rendezvous ranks them, one command per node."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from cdk_trn_runtime.acceptance.commands import cancel_commands
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
from cdk_trn_runtime.contract.acceptance import NodeCommand


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
    ids = in_service_ids(clients, name, "Auto Scaling group")
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


def command_parameters(
    props: RunProps, run_id: str, node: Node, rendezvous: Node, region: str
) -> dict[str, list[str]]:
    return NodeCommand(
        image_uri=props.image_uri,
        region=region,
        run_id=run_id,
        node_rank=node.rank,
        local_address=node.private_ip,
        nodes=props.nodes,
        procs_per_node=props.procs_per_node,
        rendezvous_host=rendezvous.private_ip,
        rendezvous_port=props.rendezvous_port,
        neuron_comm_port=props.neuron_comm_port,
        results_uri=props.results_uri(run_id),
        compile_cache_dir=props.compile_cache_dir,
        expected_neuron_devices=props.expected_neuron_devices,
        expected_efa_devices=props.expected_efa_devices,
        suite_args=props.suite_args,
        execution_timeout=props.run_timeout_seconds,
    ).command_parameters()


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
