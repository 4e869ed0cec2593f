"""``cdk-trn cost``: what each job cost, who spent it, and the node-hours that sat idle.

From a job completion log on disk (``--jobcomp FILE``: the local cluster, or a copy) or, on a
deployed cluster, through the stack's read-only SSM document ``contract.job_completions_document``
(named by the cluster stack output ``contract.OUTPUT_DOC_JOB_COMPLETIONS``), which pages through
the controller's log and lists the running jobs. The arithmetic is ``cdk_trn_runtime.cost``'s.
``--format json`` writes only JSON on stdout; notes go to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from cdk_trn_runtime import contract, cost
from cdk_trn_runtime.cli.aws import (
    DELIVERY_TIMEOUT_SECONDS,
    POLL_FACTOR,
    POLL_FIRST_SECONDS,
    POLL_MAX_SECONDS,
    Aws,
    CliError,
    controller_instance,
    stack_outputs,
)

#: Completion-log lines per document page: a line is at most 1,024 bytes (the plugin's buffer),
#: and GetCommandInvocation returns at most 24,000 characters of output.
PAGE_LINES = 20
#: Running jobs listed (first page only).
RUNNING_LINES = 40
#: Seconds one page may take on the controller.
PAGE_TIMEOUT_SECONDS = 60
_PAGE = re.compile(r"^cdk-trn-jobcomp now=(?P<now>\S+) next=(?P<next>\d+) done=(?P<done>[01])$")
_SQUEUE_MARK = "cdk-trn-squeue"


def _price(value: str) -> float:
    try:
        price = float(value)
    except ValueError:
        price = float("nan")
    if not 0 < price < 10_000:
        raise argparse.ArgumentTypeError(
            f"hourly price must be US dollars per node-hour above 0, got {value!r}"
        )
    return price


def _since(value: str) -> dt.datetime:
    try:
        return cost.parse_since(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        type=_since,
        default=None,
        help="jobs that ran at or after DATE (YYYY-MM-DD[THH:MM[:SS]], the controller's time); "
        "default: the whole log",
    )
    parser.add_argument("--by", choices=("job", "user"), default="job", help="rows per job or user")
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        dest="output",
        help="a table (default), or only JSON on stdout",
    )
    parser.add_argument(
        "--jobcomp",
        type=Path,
        default=None,
        metavar="FILE",
        help="read this job completion log instead of the deployed cluster's (running jobs and "
        "node boot times from the local squeue/scontrol when they answer)",
    )
    parser.add_argument(
        "--hourly-price",
        type=_price,
        default=None,
        metavar="P",
        help="US dollars per node-hour (default: the stack's NodeHourlyPrice output)",
    )


# --- the SSM document's side -----------------------------------------------------------------


def job_completions_commands(shared_root: str, job_user: str) -> list[str]:
    """The commands of the read-only document ``contract.job_completions_document`` (run as root by
    ``aws:runShellScript`` on the controller; ``{{ Since }}`` and ``{{ Offset }}`` are its
    parameters, which the document restricts to ``^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8})?$``
    and ``^[0-9]{1,9}$``). Prints ``cdk-trn-jobcomp now=.. next=.. done=..`` (the controller's
    local time, which the log's times are in), up to ``PAGE_LINES`` log lines after line Offset
    that ended at or after Since, and on the first page ``cdk-trn-squeue`` and the running jobs.
    Reads only; the running jobs are listed by the job user in the controller's container."""
    q = shlex.quote
    log = f"{shared_root}/{contract.SHARED_JOB_LOGS}/jobcomp.log"
    container = contract.SLURM_CONTROLLER_CONTAINER
    return [
        "set -eu",
        f"log={q(log)}",
        "since='{{ " + contract.DOC_PARAM_SINCE + " }}'",
        "offset='{{ " + contract.DOC_PARAM_OFFSET + " }}'",
        'case "$offset" in ""|*[!0-9]*) echo "Offset must be a number" >&2; exit 2;; esac',
        'case "$since" in *[!0-9T:-]*) echo "Since must be YYYY-MM-DDTHH:MM:SS" >&2; exit 2;; esac',
        "now=$(date +%Y-%m-%dT%H:%M:%S)",
        'if [ -r "$log" ]; then',
        f'  awk -v start="$offset" -v since="$since" -v max={PAGE_LINES} -v now="$now" \'',
        "    BEGIN { n = 0 }",
        "    NR <= start { next }",
        '    { e = ""; if (match($0, / EndTime=[^ ]+/)) e = substr($0, RSTART + 9, RLENGTH - 9)',
        '      if (since == "" || e >= since || e == "Unknown") { body[++n] = $0 }',
        "      if (n >= max) { exit } }",
        '    END { print "cdk-trn-jobcomp now=" now " next=" NR " done=" (n < max ? 1 : 0)',
        '          for (i = 1; i <= n; i++) print body[i] }\' "$log"',
        "else",
        '  echo "cdk-trn-jobcomp now=$now next=0 done=1"',
        "fi",
        'if [ "$offset" = 0 ]; then',
        f'  echo "{_SQUEUE_MARK}"',
        f"  docker exec -u {q(job_user)} {q(container)} squeue -h -t RUNNING,COMPLETING "
        f"-o {q(cost.SQUEUE_FORMAT)} | head -n {RUNNING_LINES} || true",
        "fi",
    ]


@dataclass(frozen=True)
class Page:
    now: dt.datetime
    next_offset: int
    done: bool
    lines: list[str]
    squeue: str


def parse_page(stdout: str) -> Page:
    lines = stdout.splitlines()
    header = _PAGE.match(lines[0]) if lines else None
    now = cost.parse_time(header["now"]) if header else None
    if header is None or now is None:
        raise CliError(
            "the job-completions document answered something else than a page: "
            + (stdout[:200] or "nothing")
        )
    body, squeue = lines[1:], ""
    if _SQUEUE_MARK in body:
        at = body.index(_SQUEUE_MARK)
        body, squeue = body[:at], "\n".join(body[at + 1 :])
    return Page(now, int(header["next"]), header["done"] == "1", body, squeue)


def _run_document(
    aws: Aws, document: str, instance_id: str, since: str, offset: int
) -> tuple[str, str]:
    try:
        sent = aws.ssm.send_command(
            InstanceIds=[instance_id],
            DocumentName=document,
            Parameters={
                contract.DOC_PARAM_SINCE: [since],
                contract.DOC_PARAM_OFFSET: [str(offset)],
            },
            TimeoutSeconds=DELIVERY_TIMEOUT_SECONDS,
            Comment="cdk-trn cost",
        )
    except ClientError as error:
        raise CliError(f"cannot run the SSM document {document}: {error}") from None
    command_id = str(sent["Command"]["CommandId"])
    deadline = aws.monotonic() + PAGE_TIMEOUT_SECONDS + DELIVERY_TIMEOUT_SECONDS
    wait = POLL_FIRST_SECONDS
    while True:
        aws.sleep(wait)
        wait = min(wait * POLL_FACTOR, POLL_MAX_SECONDS)
        try:
            got = aws.ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "InvocationDoesNotExist":
                raise CliError(f"cannot read SSM command {command_id}: {error}") from None
        else:
            status = str(got.get("Status", ""))
            if status == "Success":
                return str(got.get("StandardOutputContent", "")), status
            if status in ("Failed", "Cancelled", "TimedOut", "DeliveryTimedOut"):
                raise CliError(
                    f"the job-completions document {status}: "
                    + str(got.get("StandardErrorContent", "")).strip()[:500]
                )
        if aws.monotonic() >= deadline:
            raise CliError(f"no answer from the controller (SSM command {command_id})", 124)


def _group_activities(aws: Aws, group: str) -> list[dict[str, Any]]:
    activities: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"AutoScalingGroupName": group}
    try:
        while True:
            response = aws.autoscaling.describe_scaling_activities(**kwargs)
            activities += response.get("Activities", [])
            if not response.get("NextToken"):
                return activities
            kwargs["NextToken"] = response["NextToken"]
    except ClientError as error:
        raise CliError(f"cannot read the node group's activities: {error}") from None


def cmd_cost(aws: Aws, args: argparse.Namespace) -> int:
    outputs = stack_outputs(aws, args.stack)
    document = outputs.get(contract.OUTPUT_DOC_JOB_COMPLETIONS)
    if not document and outputs.get(contract.OUTPUT_CLUSTER_NAME):
        # A cluster deployed before the scheduler published the output: the document's name
        # derives from the cluster's (contract.researcher_document).
        document = contract.job_completions_document(outputs[contract.OUTPUT_CLUSTER_NAME])
    group = outputs.get(contract.OUTPUT_CONTROLLER_GROUP)
    if not document or not group:
        raise CliError(
            f"stack {args.stack} has no output {contract.OUTPUT_DOC_JOB_COMPLETIONS} (the "
            "read-only job-completions document) or no Slurm controller: deploy a version "
            "with it, or copy the log and use --jobcomp FILE"
        )
    price = args.hourly_price
    if price is None and outputs.get(contract.OUTPUT_NODE_HOURLY_PRICE):
        price = float(outputs[contract.OUTPUT_NODE_HOURLY_PRICE])
    instance = controller_instance(aws, group)
    since = args.since.strftime(cost._TIME_FORMAT) if args.since else ""
    offset, records, running, bad = 0, [], [], 0
    now: dt.datetime | None = None
    while True:
        stdout, _ = _run_document(aws, document, instance, since, offset)
        page = parse_page(stdout)
        now = now or page.now
        found, skipped = cost.parse_jobcomp("\n".join(page.lines))
        records += found
        bad += skipped
        if offset == 0:
            running = cost.parse_squeue(page.squeue)
        if page.done or page.next_offset <= offset:
            break
        offset = page.next_offset
    # The group's times are UTC; the log's are the controller's local time (UTC on the AMI).
    offset_utc = now - dt.datetime.now(dt.UTC).replace(tzinfo=None)
    spans = [
        cost.InService(
            s.node,
            s.start.replace(tzinfo=None) + _round_offset(offset_utc),
            None if s.end is None else s.end.replace(tzinfo=None) + _round_offset(offset_utc),
        )
        for s in cost.parse_group_activities(
            _group_activities(aws, outputs.get(contract.OUTPUT_NODE_GROUP, ""))
        )
    ]
    return report(records + running, now, args, price, spans, bad)


def _round_offset(delta: dt.timedelta) -> dt.timedelta:
    """A time zone's offset from a clock difference (to the quarter hour)."""
    quarter = 15 * 60
    return dt.timedelta(seconds=round(delta.total_seconds() / quarter) * quarter)


# --- on disk ---------------------------------------------------------------------------------


def _local(argv: Sequence[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def cmd_cost_local(args: argparse.Namespace) -> int:
    path: Path = args.jobcomp
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise CliError(f"cannot read the job completion log {path}: {error.strerror}") from None
    records, bad = cost.parse_jobcomp(text)
    now = dt.datetime.now().replace(microsecond=0)
    squeue = _local(["squeue", "-h", "-t", "RUNNING,COMPLETING", "-o", cost.SQUEUE_FORMAT])
    running = cost.parse_squeue(squeue) if squeue is not None else []
    nodes = _local(["scontrol", "-o", "show", "node"])
    spans = cost.parse_node_boot_times(nodes) if nodes is not None else None
    if spans is None:
        print("cdk-trn: no node records (scontrol did not answer): idle unknown", file=sys.stderr)
    return report(records + running, now, args, args.hourly_price, spans, bad)


# --- output ----------------------------------------------------------------------------------


def report(
    jobs: list[cost.JobRecord],
    now: dt.datetime,
    args: argparse.Namespace,
    price: float | None,
    in_service: list[cost.InService] | None,
    bad_lines: int,
) -> int:
    chosen = cost.select(jobs, args.since, now)
    rows = cost.job_rows(chosen, now, price)
    totals = cost.totals(rows, price)
    # Without --since the window starts at the first job or node in service, whichever is first.
    starts = [j.start for j in chosen if j.start] + [s.start for s in in_service or ()]
    window_start = args.since or min(starts, default=None)
    idle = (
        None
        if in_service is None or window_start is None
        else cost.idle_node_hours(in_service, chosen, window_start, now)
    )
    totals["since"] = window_start.strftime(cost._TIME_FORMAT) if window_start else None
    totals["until"] = now.strftime(cost._TIME_FORMAT)
    totals["idle_cost_usd"] = cost.cost_usd(idle, price) if idle is not None else None
    if bad_lines:
        print(f"cdk-trn: skipped {bad_lines} lines that are not job records", file=sys.stderr)
    if price is None:
        print("cdk-trn: no price known: give --hourly-price (costs are null)", file=sys.stderr)
    document: dict[str, object] = {}
    if args.by == "user":
        document["users"] = cost.user_rows(rows)
    else:
        document["jobs"] = rows
    document["totals"] = totals
    document["idle_node_hours"] = idle
    if args.output == "json":
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(format_text(document, price))
    return 0


def _money(value: object) -> str:
    return "unknown" if value is None else f"${float(str(value)):.2f}"


def _elapsed(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def format_text(document: dict[str, Any], price: float | None) -> str:
    lines: list[str] = []
    if "users" in document:
        lines.append(f"{'USER':<16} {'JOBS':>5} {'NODE-HOURS':>12} {'COST':>12}")
        for u in document["users"]:
            lines.append(
                f"{u['user']:<16} {u['jobs']:>5} {u['node_hours']:>12.4f} "
                f"{_money(u['cost_usd']):>12}"
            )
    else:
        lines.append(
            f"{'JOB':<12} {'USER':<12} {'NAME':<24} {'NODES':>5} {'ELAPSED':>10} "
            f"{'NODE-HOURS':>12} {'COST':>12}"
        )
        for j in document["jobs"]:
            lines.append(
                f"{j['job_id']:<12} {j['user']:<12} {j['name'][:24]:<24} {j['nodes']:>5} "
                f"{_elapsed(j['elapsed_s']):>10} {j['node_hours']:>12.4f} "
                f"{_money(j['cost_usd']):>12}"
            )
    t = document["totals"]
    at = f" at {_money(price)}/node-hour" if price is not None else " (no price: --hourly-price)"
    lines.append(
        f"total: {t['jobs']} jobs, {t['node_hours']:.4f} node-hours, "
        f"{_money(t['cost_usd'])}{at}, {t['since'] or 'start'} to {t['until']}"
    )
    idle = document["idle_node_hours"]
    if idle is None:
        lines.append("idle: unknown (no record of the nodes' time in service)")
    else:
        lines.append(
            f"idle: {idle:.2f} node-hours in service without a job ({_money(t['idle_cost_usd'])})"
        )
    return "\n".join(lines) + "\n"
