"""Judging a run and what the resource reports: rank 0's summary read from S3 and checked against
the thresholds, the figures (with the derived ones), the failure reason, the ``Data`` of a pass,
of a reused run and of a run that did not run, and the pass markers a rollback reuses."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cdk_trn_runtime.acceptance.common import (
    _RUN_ID,
    REASON_LIMIT,
    AcceptanceRunError,
    Clients,
    Node,
    RunProps,
    _as_number,
    _error_code,
    _limit,
    _number,
    _unit,
)
from cdk_trn_runtime.acceptance.replacement import MAX_REPLACEMENT_ROUNDS, attempt_run_id
from cdk_trn_runtime.contract import FIGURE_USD_PER_MILLION_TOKENS
from cdk_trn_runtime.contract.acceptance import (
    NOT_AVAILABLE,
    SUMMARY_SCHEMA_VERSION,
    AcceptanceReport,
    Check,
)
from cdk_trn_runtime.cost import usd_per_million_tokens

LOG = logging.getLogger(__name__)

#: Figures the handler derives from the suite's per-device figures (a device is one rank).
#: Derived when the run's price is known (``HourlyPrice``): cost per million tokens.
COST_FIGURE = FIGURE_USD_PER_MILLION_TOKENS

PER_CHIP_FIGURES = {"gemm_bf16_tflops_per_chip": "gemm_bf16_tflops_per_device"}

#: At most this many characters of node lists in the result's Data (CloudFormation's response
#: is at most 4 KB).
NODE_LIST_LIMIT = 600


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


def started_data(props: RunProps, run_id: str) -> dict[str, str]:
    """on_event's ``Data``: the run id and where its results go."""
    return AcceptanceReport(run_id=run_id, results_uri=props.results_uri(run_id)).data()


def _reuse(props: RunProps, run_id: str) -> dict[str, Any]:
    return {
        "PhysicalResourceId": run_id,
        "Data": started_data(props, run_id),
        "AcceptanceRun": {"Run": run_id, "Reused": True},
    }


def _not_run(props: RunProps, run_id: str, reason: str) -> dict[str, Any]:
    """on_event's answer for a run that will not start: fail now, or (``WhenBusy=report``) hand
    the reason to is_complete, which completes and reports it."""
    if props.when_busy != "report":
        raise AcceptanceRunError(_limit(reason + ", or set when_busy='report'."))
    return {
        "PhysicalResourceId": run_id,
        "Data": started_data(props, run_id),
        "AcceptanceRun": {"Run": run_id, "Reused": False, "NotRun": reason},
    }


def _report_not_run(
    props: RunProps,
    run_id: str,
    reason: str,
    why: str,
    state: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    LOG.warning(reason)
    report = AcceptanceReport(
        run_id=run_id,
        results_uri=props.results_uri(run_id),
        passed=f"not-run: {why}",
        world_size=NOT_AVAILABLE,
        image_uri=props.image_uri,
    )
    if state is not None and state.get("Refresh"):
        report = refresh_data(report, state)
    figures = {name: NOT_AVAILABLE for name in props.exported_figures}
    return {"IsComplete": True, "Data": report.data(figures)}


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
    version = summary.get("schema_version")
    if version != SUMMARY_SCHEMA_VERSION:
        return [f"summary schema_version {version!r} is not {SUMMARY_SCHEMA_VERSION}"]
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
        violation = check_violation(check, value)
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


def figures_data(
    summary: Mapping[str, Any],
    props: RunProps,
    run_id: str,
    state: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """``Data`` of a run that passed (``state``: what it replaced or refreshed on the way)."""
    figures = run_figures(summary, props)
    report = AcceptanceReport(
        run_id=run_id,
        results_uri=props.results_uri(run_id),
        passed="true",
        world_size=str(summary.get("world_size")),
        image_uri=props.image_uri,
    )
    if state is not None and state.get("Replaced"):
        replaced = ",".join(r["InstanceId"] for r in state["Replaced"])
        report = dataclasses.replace(report, replaced_nodes=replaced)
    if state is not None and state.get("Refresh"):
        report = refresh_data(report, state)
    return report.data(exported_figures(figures, props))


def exported_figures(figures: Mapping[str, float], props: RunProps) -> dict[str, str]:
    return {name: _number(figures.get(name)) for name in props.exported_figures}


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
    report = AcceptanceReport(
        run_id=run_id,
        results_uri=props.results_uri(run_id),
        passed="true" if (summary or {}).get("passed") else NOT_AVAILABLE,
        world_size=str((summary or {}).get("world_size", NOT_AVAILABLE)),
        image_uri=props.image_uri,
    )
    return report.data(exported_figures(run_figures(summary, props), props))


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


def refresh_data(report: AcceptanceReport, state: Mapping[str, Any]) -> AcceptanceReport:
    """What a result says about a refresh: the nodes the run ran on, and those still waiting for
    their jobs (drained; the reaper refreshes them)."""
    refresh = state["Refresh"]
    return dataclasses.replace(
        report,
        ran_on=_bounded(list(refresh.get("Ran", []))),
        awaiting_refresh=_bounded(
            [_describe_node(e) for e in refresh.get("Waiting", [])], separator="; "
        ),
    )


def check_violation(check: Check, value: float) -> str | None:
    """How ``value`` misses ``check``'s limit, or None."""
    if check.minimum is not None and value < check.minimum:
        return f"{check.figure} {_number(value)}{_unit(check.unit)} < min {_number(check.minimum)}"
    if check.maximum is not None and value > check.maximum:
        return f"{check.figure} {_number(value)}{_unit(check.unit)} > max {_number(check.maximum)}"
    return None


def _describe_waiting(waiting: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(_describe_node(e) for e in waiting) or "none reported by Slurm"


def _describe_node(entry: Mapping[str, Any]) -> str:
    jobs = ",".join(entry.get("Jobs", [])) or "none"
    name = entry.get("Node") or f"no Slurm node at {entry['Host']}"
    text = f"{entry['InstanceId']} ({name}, {entry['State']}, jobs {jobs})"
    if entry.get("Undrained"):
        # A controller booted before the reaper's refresh rule: no one would replace it.
        text += (
            " not drained: the controller's reaper has no image-refresh rule; replace the "
            "controller instance, or drain the node by hand when its jobs allow"
        )
    return text


def _bounded(items: Sequence[str], separator: str = ",", limit: int = NODE_LIST_LIMIT) -> str:
    shown: list[str] = []
    for index, item in enumerate(items):
        more = f" (+{len(items) - index} more)"
        if len(separator.join([*shown, item])) + len(more) > limit:
            return separator.join(shown) + more
        shown.append(item)
    return separator.join(shown)
