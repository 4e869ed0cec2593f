"""What training costs: per-job cost from Slurm's job completion log, idle node-hours, and tokens
per dollar. Pure functions over text and numbers; standard library only.

* The job completion log is what Slurm's ``jobcomp/filetxt`` plugin writes (``JobCompType`` and
  ``JobCompLoc`` in ``cdk_trn_runtime.slurm.config``): one line per finished job,
  ``JobId=.. UserId=user(uid) GroupId=.. Name=.. JobState=.. Partition=.. TimeLimit=..
  StartTime=.. EndTime=.. NodeList=.. NodeCnt=.. ProcCnt=.. WorkDir=.. ...`` (Slurm 22.05's
  ``src/plugins/jobcomp/filetxt/jobcomp_filetxt.c``, ``JOB_FORMAT``). Times are the controller's
  local time, ``%Y-%m-%dT%H:%M:%S`` or ``Unknown``.
* Running jobs come from ``squeue`` in :data:`SQUEUE_FORMAT` and are counted up to now.
* A job's node-hours are its node count times its elapsed hours; its cost is
  ``round(node_hours * hourly_price, 2)`` with the node-hours as reported.
* Idle node-hours over a window are the node-hours the nodes were in service (from the Auto
  Scaling group's activity or the nodes' boot times) minus the node-hours jobs held them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cdk_trn_runtime import contract

#: ``squeue -h -t RUNNING,COMPLETING -o`` format of running jobs: id, user, node count, start
#: time, then the name (last: it may contain spaces).
SQUEUE_FORMAT = "%i|%u|%D|%S|%j"
#: Decimal places of the node-hours reported (and priced).
NODE_HOURS_DIGITS = 6

_JOBCOMP = re.compile(
    r"^JobId=(?P<job>\d+) UserId=(?P<user>.*?)\((?P<uid>\d+)\) GroupId=.*?\(\d+\) "
    r"Name=(?P<name>.*?) JobState=(?P<state>[A-Z_]+) Partition=(?P<partition>\S*) "
    r"TimeLimit=\S+ StartTime=(?P<start>\S+) EndTime=(?P<end>\S+) NodeList=(?P<nodelist>\S*) "
    r"NodeCnt=(?P<nodes>\d+) ProcCnt=\d+ WorkDir=.*? SubmitTime=\S+ EligibleTime=\S+"
    r"(?: ArrayJobId=(?P<array_job>\d+) ArrayTaskId=(?P<array_task>\d+))?"
    r"(?: HetJobId=\d+ HetJobOffset=\d+)? DerivedExitCode=\S+ ExitCode=\S+ ?.*$"
)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class JobRecord:
    """One job: finished (from the completion log) or running (from squeue, ``end`` None)."""

    job_id: str
    user: str
    name: str
    state: str
    nodes: int
    start: dt.datetime | None
    end: dt.datetime | None

    def elapsed_s(self, now: dt.datetime) -> int:
        if self.start is None:
            return 0
        end = self.end or now
        return max(0, int((end - self.start).total_seconds()))

    def node_hours(self, now: dt.datetime) -> float:
        return round(self.nodes * self.elapsed_s(now) / 3600.0, NODE_HOURS_DIGITS)

    def node_hours_within(self, since: dt.datetime, until: dt.datetime) -> float:
        """Node-hours the job held its nodes between ``since`` and ``until`` (for idle time)."""
        if self.start is None:
            return 0.0
        start, end = max(self.start, since), min(self.end or until, until)
        return max(0.0, (end - start).total_seconds()) * self.nodes / 3600.0


def parse_time(value: str) -> dt.datetime | None:
    """A Slurm time (``2026-12-06T03:04:05``) as a naive datetime; ``Unknown``/``N/A``: None."""
    try:
        return dt.datetime.strptime(value, _TIME_FORMAT)
    except ValueError:
        return None


def parse_jobcomp_line(line: str) -> JobRecord | None:
    """One line of a ``jobcomp/filetxt`` log; None when it is not such a line."""
    match = _JOBCOMP.match(line.rstrip("\n"))
    if match is None:
        return None
    job = match["job"]
    if match["array_job"] is not None:
        job = f"{match['array_job']}_{match['array_task']}"
    return JobRecord(
        job_id=job,
        user=match["user"],
        name=match["name"],
        state=match["state"],
        nodes=int(match["nodes"]),
        start=parse_time(match["start"]),
        end=parse_time(match["end"]),
    )


def parse_jobcomp(text: str) -> tuple[list[JobRecord], int]:
    """Every record of a completion log, and how many non-empty lines were not records."""
    records: list[JobRecord] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        record = parse_jobcomp_line(line)
        if record is None:
            bad += 1
        else:
            records.append(record)
    return records, bad


def parse_squeue(text: str) -> list[JobRecord]:
    """Running jobs from ``squeue -h -o SQUEUE_FORMAT``."""
    jobs: list[JobRecord] = []
    for line in text.splitlines():
        parts = line.split("|", 4)
        if len(parts) != 5 or not parts[2].isdigit():
            continue
        job_id, user, nodes, start, name = parts
        jobs.append(JobRecord(job_id, user, name, "RUNNING", int(nodes), parse_time(start), None))
    return jobs


def parse_since(value: str) -> dt.datetime:
    """``--since``: ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]`` (the controller's local time)."""
    for layout in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", _TIME_FORMAT):
        try:
            return dt.datetime.strptime(value, layout)
        except ValueError:
            pass
    raise ValueError(f"since must be YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS], got {value!r}")


def select(
    jobs: Iterable[JobRecord], since: dt.datetime | None, now: dt.datetime
) -> list[JobRecord]:
    """The jobs that ran at or after ``since`` (all, without it) and had nodes, by start time;
    a requeued job's earlier runs are separate records of the same id."""
    chosen = [
        job
        for job in jobs
        if job.start is not None and job.nodes > 0 and (since is None or (job.end or now) >= since)
    ]
    return sorted(chosen, key=lambda job: (job.start or now, job.job_id))


def cost_usd(node_hours: float, hourly_price: float | None) -> float | None:
    """``round(node_hours * hourly_price, 2)``; None when the price is unknown."""
    return None if hourly_price is None else round(node_hours * hourly_price, 2)


def job_rows(
    jobs: Sequence[JobRecord], now: dt.datetime, hourly_price: float | None
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for job in jobs:
        node_hours = job.node_hours(now)
        rows.append(
            {
                "job_id": job.job_id,
                "user": job.user,
                "name": job.name,
                "nodes": job.nodes,
                "elapsed_s": job.elapsed_s(now),
                "node_hours": node_hours,
                "cost_usd": cost_usd(node_hours, hourly_price),
            }
        )
    return rows


def user_rows(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Job rows summed per user, the most node-hours first."""
    users: dict[str, dict[str, object]] = {}
    for row in rows:
        user = str(row["user"])
        entry = users.setdefault(user, {"user": user, "jobs": 0, "node_hours": 0.0, "cost_usd": 0})
        entry["jobs"] = int(str(entry["jobs"])) + 1
        entry["node_hours"] = round(
            float(str(entry["node_hours"])) + float(str(row["node_hours"])), NODE_HOURS_DIGITS
        )
        cost = row["cost_usd"]
        entry["cost_usd"] = (
            None
            if cost is None or entry["cost_usd"] is None
            else round(float(str(entry["cost_usd"])) + float(str(cost)), 2)
        )
    return sorted(users.values(), key=lambda u: -float(str(u["node_hours"])))


def totals(rows: Sequence[dict[str, object]], hourly_price: float | None) -> dict[str, object]:
    node_hours = round(sum(float(str(r["node_hours"])) for r in rows), NODE_HOURS_DIGITS)
    costs = [r["cost_usd"] for r in rows]
    return {
        "jobs": len(rows),
        "node_hours": node_hours,
        # The sum of the jobs' rounded costs, so that the column adds up.
        "cost_usd": None
        if hourly_price is None
        else round(sum(float(str(c)) for c in costs if c is not None), 2),
        "hourly_price": hourly_price,
    }


@dataclass(frozen=True)
class InService:
    """One node's time in service: from ``start`` until ``end`` (None: still in service)."""

    node: str
    start: dt.datetime
    end: dt.datetime | None = None


def idle_node_hours(
    in_service: Sequence[InService],
    jobs: Sequence[JobRecord],
    since: dt.datetime,
    until: dt.datetime,
) -> float:
    """Node-hours in service between ``since`` and ``until`` minus the node-hours jobs held in
    that window (never below 0)."""
    served = 0.0
    for span in in_service:
        start, end = max(span.start, since), min(span.end or until, until)
        served += max(0.0, (end - start).total_seconds()) / 3600.0
    held = sum(job.node_hours_within(since, until) for job in jobs)
    return round(max(0.0, served - held), 2)


_NODE_NAME = re.compile(r"(?:^|\s)NodeName=(\S+)")
_NODE_TIME = re.compile(r"\s(BootTime|SlurmdStartTime)=(\S+)")


def parse_node_boot_times(text: str) -> list[InService]:
    """``scontrol show node -o`` (one line per node): each node in service since the later of its
    BootTime and SlurmdStartTime (the node records; several slurmd on one host, as on the local
    cluster, share the host's BootTime; a slurmd restarted on a node counts from its restart, so
    the idle time is never overstated). A node with neither time is skipped."""
    spans: list[InService] = []
    for line in text.splitlines():
        name = _NODE_NAME.search(line)
        times = [t for _, v in _NODE_TIME.findall(line) if (t := parse_time(v)) is not None]
        if name is not None and times:
            spans.append(InService(name[1], max(times)))
    return spans


def parse_group_activities(activities: Sequence[dict[str, object]]) -> list[InService]:
    """The Auto Scaling group's activities (``DescribeScalingActivities``): each instance in
    service from its successful launch (or its return from Standby) until its termination (or
    its move to Standby, where idle scale-in stops it); times as given (UTC)."""
    pattern = re.compile(
        r"^(Launching a new EC2 instance|Moving EC2 instance out of Standby|"
        r"Terminating EC2 instance|Moving EC2 instance to Standby): (i-[0-9a-f]+)"
    )
    events: list[tuple[dt.datetime, str, bool]] = []
    for activity in activities:
        match = pattern.match(str(activity.get("Description", "")))
        if match is None or activity.get("StatusCode") != "Successful":
            continue
        starts = match[1].startswith(("Launching", "Moving EC2 instance out"))
        # In service once the launch completed; out of service as the termination began.
        when = activity.get("EndTime") if starts else activity.get("StartTime")
        when = when or activity.get("StartTime")
        if isinstance(when, dt.datetime):
            events.append((when, match[2], starts))
    spans: list[InService] = []
    open_since: dict[str, dt.datetime] = {}
    for when, instance, starts in sorted(events, key=lambda e: e[0]):
        if starts:
            open_since.setdefault(instance, when)
        elif instance in open_since:
            spans.append(InService(instance, open_since.pop(instance), when))
    spans += [InService(i, start) for i, start in open_since.items()]
    return spans


# --- tokens per dollar ---------------------------------------------------------------------------


def tokens_per_usd(tokens_per_s: float, hourly_price: float) -> float:
    """Tokens one US dollar buys at ``tokens_per_s`` on capacity that costs ``hourly_price`` per
    hour in total (all the nodes of the run)."""
    if hourly_price <= 0:
        raise ValueError(f"hourly_price must be above 0, got {hourly_price!r}")
    return tokens_per_s * 3600.0 / hourly_price


def usd_per_million_tokens(tokens_per_s: float, hourly_price: float) -> float | None:
    """US dollars per million tokens; None when nothing was trained (0 tokens/s)."""
    if tokens_per_s <= 0:
        return None
    return 1_000_000 / tokens_per_usd(tokens_per_s, hourly_price)


def _nodes(env: Mapping[str, str]) -> int:
    for name in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def throughput_fields(tokens: int, seconds: float, env: Mapping[str, str]) -> str:
    """`` tokens_per_s=<t>`` and, when ``contract.ENV_HOURLY_PRICE`` gives the price of one node
    per hour, `` tokens_per_usd=<n>`` for the job's nodes (``SLURM_JOB_NUM_NODES``, else 1): what
    the trainer appends to its ``train: done`` line. Nothing measured (no time): empty."""
    if seconds <= 0 or tokens <= 0:
        return ""
    tokens_per_s = tokens / seconds
    fields = f" tokens_per_s={tokens_per_s:.1f}"
    try:
        price = float(env.get(contract.ENV_HOURLY_PRICE, "") or "nan")
    except ValueError:
        price = float("nan")
    if 0 < price < 10_000:
        fields += f" tokens_per_usd={tokens_per_usd(tokens_per_s, price * _nodes(env)):.0f}"
    return fields
