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
passed, and from failing the rollback if the cluster has since degraded. On a Slurm cluster the
nodes the failed update refreshed (on another launch template version than the group's, rolled
back) are then drained for refresh, best effort (``refresh_after_rollback``).

One concern per module: ``ssm_launcher`` and ``slurm_launcher`` start a run, ``commands`` polls
its SSM commands, ``refresh`` handles an image change on running nodes, ``replacement`` the
nodes below threshold, ``report`` judges the summary and builds the resource's ``Data``; this
module holds the entry points the construct names (``on_event``, ``is_complete``).

Runs in the Lambda Python runtime: standard library and boto3 only. AWS clients come from a
:class:`~cdk_trn_runtime.acceptance.common.Clients` value that tests replace with stubbed clients.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from cdk_trn_runtime.acceptance.commands import (
    cancel_commands,
    command_invocation,
    command_statuses,
    node_failure,
)
from cdk_trn_runtime.acceptance.common import (
    _RUNNING,
    FAILURE_GRACE_SECONDS,
    AcceptanceRunError,
    Clients,
    Invocation,
    Node,
    RunProps,
    _is_failed,
    _limit,
    _run_nodes,
    default_clients,
    make_run_id,
    parse_properties,
    run_changed,
    run_fingerprint,
)
from cdk_trn_runtime.acceptance.refresh import after_drain, refresh_after_rollback, start_refresh
from cdk_trn_runtime.acceptance.replace_drain import after_replace_drain
from cdk_trn_runtime.acceptance.replacement import (
    _after_replacement,
    _replace_or_none,
    _replaced_first,
)
from cdk_trn_runtime.acceptance.report import (
    _report_not_run,
    _reuse,
    _suite_nodes,
    failure_reason,
    figures_data,
    passed_run,
    read_summary,
    record_pass,
    reused_figures,
    started_data,
    summary_failures,
)
from cdk_trn_runtime.acceptance.slurm_launcher import (
    discover_controller,
    send_slurm_command,
    stale_nodes,
)
from cdk_trn_runtime.acceptance.ssm_launcher import discover_nodes, send_commands
from cdk_trn_runtime.contract import ACCEPTANCE_BUSY_EXIT
from cdk_trn_runtime.contract.acceptance import (
    ACCEPTANCE_NOT_READY_EXIT,
    AcceptanceReport,
    key_of,
)

LOG = logging.getLogger(__name__)
LOG.setLevel(logging.INFO)


def on_event(
    event: Mapping[str, Any], context: Any = None, *, clients: Clients | None = None
) -> dict[str, Any]:
    """On-event handler (the deploy-time driver's API, the Provider framework's)."""
    request_type = event["RequestType"]
    LOG.info("on_event %s %s", request_type, event.get("LogicalResourceId"))
    if request_type == "Delete":
        # Results stay in the bucket (lifecycle expires them); nothing here may fail a delete.
        return {"PhysicalResourceId": event["PhysicalResourceId"]}

    props = parse_properties(event["ResourceProperties"])
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
            reused = _reuse(props, previous)
            if props.slurm:
                # Nodes the failed update refreshed run the rejected image: drained for refresh,
                # best effort (never fails or blocks the rollback).
                awaiting = refresh_after_rollback(clients, props, previous)
                if awaiting:
                    reused["AcceptanceRun"]["AwaitingRefresh"] = awaiting
            return reused
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
        "Data": started_data(props, run_id),
        "AcceptanceRun": {
            "Run": run_id,
            "Reused": False,
            "StartedAt": started,
            "Deadline": started + props.run_timeout_seconds,
            "Commands": [asdict(n) for n in nodes],
        },
    }


def is_complete(
    event: Mapping[str, Any], context: Any = None, *, clients: Clients | None = None
) -> dict[str, Any]:
    """Is-complete handler (the deploy-time driver's API, the Provider framework's)."""
    if event["RequestType"] == "Delete":
        return {"IsComplete": True}
    props = parse_properties(event["ResourceProperties"])
    state = event.get("AcceptanceRun") or {}
    clients = clients or default_clients()
    run_id = str(state.get("Run") or event["PhysicalResourceId"])
    if state.get("Reused"):
        data = reused_figures(clients, props, run_id)
        if state.get("AwaitingRefresh"):
            data[key_of(AcceptanceReport, "awaiting_refresh")] = str(state["AwaitingRefresh"])
        return {"IsComplete": True, "Data": data}

    if state.get("NotRun"):
        return _report_not_run(props, run_id, str(state["NotRun"]), "nodes not refreshed")
    if (state.get("Refresh") or {}).get("Phase") == "draining":
        return after_drain(clients, props, state)
    if state.get("ReplaceDrain"):
        return after_replace_drain(clients, props, state)
    if state.get("Replacing"):
        return _after_replacement(clients, props, state)
    run_id = str(state.get("AttemptId") or run_id)
    nodes = [Node(**n) for n in state["Commands"]]
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
            failures = summary_failures(
                summary, props, _suite_nodes(nodes), run_id, _run_nodes(props, state)
            )
            replacing = _replace_or_none(
                clients, props, state, summary, nodes, run_id, now, failures
            )
            if replacing is not None:
                return replacing
            raise AcceptanceRunError(
                failure_reason(run_id, _replaced_first(state) + failures, props)
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
        replacing = _replace_or_none(clients, props, state, summary, nodes, run_id, now, failures)
        if replacing is not None:
            return replacing
        raise AcceptanceRunError(failure_reason(run_id, _replaced_first(state) + failures, props))
    record_pass(clients, props, run_fingerprint(event["ResourceProperties"]), run_id)
    data = figures_data(summary, props, run_id, state)
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
