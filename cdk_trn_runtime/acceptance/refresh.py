"""An image change on a Slurm cluster: the nodes on an earlier launch template are refreshed
before the run. Each is drained in Slurm (a drain-only command to the controller, which reports
each node's state and jobs after the drain); the ones Slurm reports drained without a job are
marked Unhealthy, so their group replaces them from the current template; the busy ones stay
drained and the controller's reaper has each replaced when its jobs end. The run then waits for
the successors (``replacement._after_replacement``) and runs on the current version's nodes.

Nodes that idle scale-in stopped in Standby are stale too (Slurm would start them as they are):
being idle they are returned to service and marked Unhealthy (Auto Scaling replaces only InService
instances). The node list and the controller's report go through the run's results prefix in
S3. A controller whose installed reaper lacks the refresh rule (booted before it) drains only
idle nodes and says so in the report: the busy ones are named "not drained". A rollback that
reuses a passed run drains the nodes on another version for the reaper (``refresh_after_rollback``,
best effort)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cdk_trn_runtime.acceptance.commands import cancel_commands, command_invocation, node_failure
from cdk_trn_runtime.acceptance.common import (
    _RUNNING,
    _SUCCESS,
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
    read_drain_report,
    send_drain,
    stale_nodes,
)
from cdk_trn_runtime.contract import NODE_BOOT_MINUTES
from cdk_trn_runtime.contract.acceptance import REPORT_NO_REAPER_RULE

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
        command_id = send_drain(
            clients, props, run_id, controller, [hosts[i] for i in stale], drain_for
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
        command_id,
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
                "DrainFor": drain_for,
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

    @property
    def drained(self) -> bool:
        """Drained or draining: no new job lands on it."""
        return self.state.rstrip("*~#!%$@^-") in ("drained", "draining")


def reaper_has_rule(text: str) -> bool:
    """False when the report says the controller's installed reaper lacks the refresh rule (a
    controller booted before it): then busy nodes were left undrained."""
    return REPORT_NO_REAPER_RULE not in text.splitlines()


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
    output = read_drain_report(clients, props, run_id, str(refresh.get("DrainFor", "refresh")))
    if output is None:
        raise AcceptanceRunError(
            f"acceptance run {run_id}: the drain command succeeded but wrote no report at "
            f"{props.results_uri(run_id)}"
        )
    report = parse_refresh_report(output)
    rule = reaper_has_rule(output)
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
        if not rule and node is not None and not node.drained:
            entry["Undrained"] = True
        if node is not None and node.name and node.replaceable:
            refreshed.append(entry)
        else:
            waiting.append(entry)
    lifecycles = _lifecycles(clients, props) if refreshed else {}
    for entry in list(refreshed):
        problem = replace_instance(clients, props, entry["InstanceId"], lifecycles)
        if problem:
            refreshed.remove(entry)
            waiting.append({**entry, "State": problem})
        else:
            LOG.info("refreshing %s (%s): drained, no job", entry["InstanceId"], entry["Node"])
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


def _lifecycles(clients: Clients, props: RunProps) -> dict[str, str]:
    """Instance id -> lifecycle state in the node group."""
    groups = clients.autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[props.auto_scaling_group_name]
    )["AutoScalingGroups"]
    return {i["InstanceId"]: i["LifecycleState"] for g in groups for i in g["Instances"]}


def replace_instance(
    clients: Clients, props: RunProps, instance_id: str, lifecycles: Mapping[str, str]
) -> str:
    """Have the group replace an idle node from its current launch template; "" when asked, else
    why not. Auto Scaling replaces an Unhealthy instance only InService: one that idle scale-in
    stopped in Standby is first returned to service (``ExitStandby``, which raises the desired
    capacity again), then marked Unhealthy, so its successor boots from the current template."""
    lifecycle = lifecycles.get(instance_id, "gone")
    try:
        if lifecycle == "Standby":
            clients.autoscaling.exit_standby(
                InstanceIds=[instance_id], AutoScalingGroupName=props.auto_scaling_group_name
            )
        elif lifecycle != "InService":
            return f"{lifecycle} in its group, not replaced"
        clients.autoscaling.set_instance_health(
            InstanceId=instance_id, HealthStatus="Unhealthy", ShouldRespectGracePeriod=False
        )
    except ClientError as error:
        return f"{lifecycle}, not replaced: {_error_code(error)}: {_error_message(error)}"[:200]
    return ""


def refresh_after_rollback(clients: Clients, props: RunProps, run_id: str) -> str:
    """A rollback reuses the run that passed with these properties, but nodes an image refresh
    replaced during the failed update run the rejected launch template version. Best effort,
    never raising and never waiting (a rollback that fails leaves UPDATE_ROLLBACK_FAILED): the
    nodes on another version than the group's are drained for the controller's reaper, which
    has each replaced once idle (none when the installed reaper lacks the refresh rule), and
    the ones stopped in Standby (idle by definition) are replaced at once. What was done, for
    ``AwaitingRefresh``; "" when every node is on the group's version."""
    try:
        stale = stale_nodes(clients, props)
        if not stale:
            return ""
        hosts = addresses_of(clients, props, stale)
        controller = discover_controller(clients, props)
        send_drain(
            clients, props, run_id, controller, [hosts[i] for i in stale], "refresh-by-reaper"
        )
        lifecycles = _lifecycles(clients, props)
        standby = [i for i in stale if lifecycles.get(i) == "Standby"]
        replaced = [
            i
            for i in _stopped(clients, standby)
            if not replace_instance(clients, props, i, lifecycles)
        ]
    except (AcceptanceRunError, ClientError, BotoCoreError) as error:
        LOG.warning("rollback: nodes on another launch template version not refreshed: %s", error)
        return _limit(
            f"rollback: nodes on another launch template version than the group's were not "
            f"drained for refresh ({error}); replace them by hand"
        )
    draining = [i for i in stale if i not in replaced]
    said = []
    if draining:
        said.append(
            "rollback: drained for refresh (the controller's reaper replaces each once idle, "
            "if it has the refresh rule): " + ",".join(draining)
        )
    if replaced:
        said.append("stopped in Standby, replaced: " + ",".join(replaced))
    return _limit("; ".join(said))


def _stopped(clients: Clients, ids: Sequence[str]) -> list[str]:
    if not ids:
        return []
    reservations = clients.ec2.describe_instances(InstanceIds=list(ids))["Reservations"]
    return sorted(
        i["InstanceId"]
        for r in reservations
        for i in r["Instances"]
        if (i.get("State") or {}).get("Name") == "stopped"
    )
