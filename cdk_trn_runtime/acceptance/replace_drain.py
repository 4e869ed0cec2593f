"""The second step of a replacement round on a Slurm cluster: the nodes below threshold were
drained by a drain-only command to the controller, which reported each node's state and jobs
after the drain (to S3, ``slurm_launcher.read_drain_report``). Only a node Slurm reports drained
without a job is marked Unhealthy (its group replaces it); one that holds a job, or that Slurm
did not report, stays drained and is named in the reason, and the run fails rather than
terminate a node that runs someone's work."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cdk_trn_runtime.acceptance.commands import cancel_commands, command_invocation, node_failure
from cdk_trn_runtime.acceptance.common import (
    _RUNNING,
    _SUCCESS,
    AcceptanceRunError,
    Clients,
    Node,
    RunProps,
)
from cdk_trn_runtime.acceptance.refresh import parse_refresh_report
from cdk_trn_runtime.acceptance.replacement import _replaced_first, replacing_state
from cdk_trn_runtime.acceptance.report import failure_reason
from cdk_trn_runtime.acceptance.slurm_launcher import read_drain_report

LOG = logging.getLogger(__name__)


def after_replace_drain(
    clients: Clients, props: RunProps, state: Mapping[str, Any]
) -> dict[str, Any]:
    """When the drain command has reported: mark the drained idle nodes Unhealthy and wait for
    their successors; when any node stays (busy, or not reported), fail naming it."""
    drain = state["ReplaceDrain"]
    run_id = str(state["FailedAttempt"])
    failures = [str(f) for f in drain.get("Failures", [])]
    command = Node(**drain["Command"])
    now = clients.clock()
    invocation = command_invocation(clients, command)
    if invocation.status in _RUNNING:
        if now < float(state["Deadline"]):
            return {"IsComplete": False, "Status": "draining the nodes below threshold"}
        cancel_commands(clients, [command])
        said = "the controller did not drain the nodes below threshold by the deadline"
        raise AcceptanceRunError(failure_reason(run_id, [said, *failures], props))
    if invocation.status != _SUCCESS:
        said = "draining the nodes below threshold failed: " + node_failure(
            clients, command, invocation
        )
        raise AcceptanceRunError(failure_reason(run_id, [said, *failures], props))
    # The report is in S3 (the command's output is cut at 24,000 characters); without one,
    # Slurm reported no node, and every one stays drained.
    report = parse_refresh_report(read_drain_report(clients, props, run_id, "replace") or "")
    replaced: list[dict[str, Any]] = []
    kept: list[str] = []
    for entry in drain["Nodes"]:
        node = report.get(entry["Host"])
        if node is not None and node.name and node.replaceable:
            replaced.append(entry)
            continue
        if node is None:
            slurm_says = "Slurm did not report it"
        else:
            jobs = f", jobs {','.join(node.jobs)}" if node.jobs else ""
            slurm_says = f"Slurm reports it {node.state}{jobs}"
        kept.append(
            f"{entry['InstanceId']} ({entry['Host']}) below threshold ({entry['Problems']}) not "
            f"replaced: {slurm_says}; left drained in Slurm"
        )
    for entry in replaced:
        LOG.info(
            "replacing %s (%s): drained, no job; %s",
            entry["InstanceId"],
            entry["Host"],
            entry["Problems"],
        )
        clients.autoscaling.set_instance_health(
            InstanceId=entry["InstanceId"], HealthStatus="Unhealthy", ShouldRespectGracePeriod=False
        )
    answer = replacing_state(state, replaced, run_id, now, int(state.get("Round", 1)))
    if kept:
        # The run's nodes are not all replaceable: another run would lack them. Fail, naming
        # what was replaced and what was left drained.
        raise AcceptanceRunError(
            failure_reason(
                run_id, [*_replaced_first(answer["AcceptanceRun"]), *kept, *failures], props
            )
        )
    return answer
