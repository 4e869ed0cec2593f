"""The SSM commands of a run: their status (cheaply, for many nodes), a failed one's exit code and
telling line, and cancelling the rest."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from botocore.exceptions import BotoCoreError, ClientError

from cdk_trn_runtime.acceptance.common import Clients, Invocation, Node, RunProps, _last_line
from cdk_trn_runtime.contract.acceptance import SSM_FILTER_DOCUMENT

LOG = logging.getLogger(__name__)


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
            {"key": SSM_FILTER_DOCUMENT, "value": props.document_name},
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


def cancel_commands(clients: Clients, nodes: Sequence[Node]) -> None:
    """Best effort: a run that already failed should not keep the other nodes busy."""
    for node in nodes:
        if not node.command_id:
            continue
        try:
            clients.ssm.cancel_command(CommandId=node.command_id, InstanceIds=[node.instance_id])
        except (ClientError, BotoCoreError) as error:
            LOG.warning("cancel of %s on %s failed: %s", node.command_id, node.instance_id, error)
