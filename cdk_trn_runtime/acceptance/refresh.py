"""An image change on a Slurm cluster: the nodes on an earlier launch template are refreshed
before the run. Each is drained in Slurm (a drain-only command to the controller, which reports
each node's state and jobs after the drain); the ones Slurm reports drained without a job are
marked Unhealthy, so their group replaces them from the current template; the busy ones stay
drained and the controller's reaper has each replaced when its jobs end. The run then waits for
the successors (``replacement._after_replacement``) and runs on the current version's nodes."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import ClientError

from cdk_trn_runtime.acceptance.commands import cancel_commands, command_invocation, node_failure
from cdk_trn_runtime.acceptance.common import (
    _RUNNING,
    _SUCCESS,
    DELIVERY_TIMEOUT_SECONDS,
    NODE_BOOT_SECONDS,
    AcceptanceRunError,
    Clients,
    Node,
    RunProps,
    _error_code,
    _error_message,
    _limit,
)
from cdk_trn_runtime.acceptance.report import (
    _describe_waiting,
    _not_run,
    _report_not_run,
    started_data,
)
from cdk_trn_runtime.acceptance.slurm_launcher import (
    addresses_of,
    discover_controller,
    slurm_command_parameters,
)
from cdk_trn_runtime.contract import NODE_BOOT_MINUTES

LOG = logging.getLogger(__name__)

#: An image refresh (stale nodes replaced before the run) is started only when a node's boot and
#: then a run of this long still fit before the run's deadline (CloudFormation's hour): the run
#: after a refresh gets at least as long as the boot.
REFRESH_RUN_RESERVE_SECONDS = NODE_BOOT_SECONDS


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
            Parameters=slurm_command_parameters(
                props,
                run_id,
                clients.region,
                drain=[hosts[i] for i in stale],
                drain_for=drain_for,
            ),
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
        "Data": started_data(props, run_id),
        "AcceptanceRun": {
            "Run": run_id,
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
    run_id = str(state["Run"])
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
