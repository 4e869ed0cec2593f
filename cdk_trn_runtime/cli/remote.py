"""What ``cdk-trn`` asks the Slurm controller, as invocations of the cluster's SSM documents.

Each ``*_invocation`` returns a document action and its parameter values
(``cdk_trn_runtime/cli/documents.py`` holds the fixed scripts; the cluster stack creates them as
SSM documents, ``cdk_trn.researcher_access``). Every Slurm command runs inside the controller's
container, as the job user, through ``docker exec -u <user> -w <dir> <container> <command>``;
nothing else on the host is touched. Values reach the scripts as data: validated by the
documents' patterns, free-form ones base64, so an argument such as ``; rm -rf /`` reaches
``sbatch`` as one literal argument. ``*_script`` renders an invocation as the controller runs it
(the tests run those against doubles and a real local Slurm).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from cdk_trn_runtime.cli import documents
from cdk_trn_runtime.contract import SHARED_HOMES

#: ``sbatch`` scripts larger than this are refused (a job script is a few lines; data and code
#: belong on the shared file system or in the image).
MAX_SCRIPT_BYTES = 64 * 1024
#: Bytes of a job's output read per SSM command: base64 of this must stay under the 24,000
#: characters of standard output that GetCommandInvocation returns.
LOG_CHUNK_BYTES = documents.LOG_CHUNK_BYTES
#: Exit status of a remote script when the controller container is not running.
EXIT_NO_CONTAINER = documents.EXIT_NO_CONTAINER
#: Exit status when a file the script needs does not exist (the job user's home, a job's output).
EXIT_NO_FILE = documents.EXIT_NO_FILE
#: ``squeue`` columns: job id, partition, name, user, state, time used, time limit, nodes, and the
#: node list (running) or the reason it waits (pending).
QUEUE_FORMAT = documents.QUEUE_FORMAT
#: ``sinfo -N`` columns: node, partition, state (``drained``, ``draining``, ``idle``...), CPUs,
#: memory (MB), features (instance type, efa, UltraServer), when the reason was set, the reason.
NODE_FORMAT = documents.NODE_FORMAT
#: Job states in which a job may still write output (``scontrol show job``'s ``JobState``).
ACTIVE_JOB_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "SPECIAL_EXIT",
    }
)
_JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")
_LOG_HEADER = re.compile(
    r"^cdk-trn-log state=(?P<state>[A-Z_]*) size=(?P<size>-?[0-9]+) "
    r"start=(?P<start>[0-9]+) path=(?P<path>.*)$"
)


@dataclass(frozen=True)
class Controller:
    """Where Slurm runs: the controller instance, its container and the job user's paths."""

    instance_id: str
    container: str
    job_user: str
    shared_root: str
    slurm_cluster: str
    #: The TrainiumCluster's name: the SSM documents are named after it.
    cluster_name: str = ""
    #: Where ``submit --code`` uploads code archives (the stack's CodeBucket output).
    code_bucket: str = ""

    @property
    def home(self) -> str:
        """The job user's home on the shared file system: scripts and default job output."""
        return str(PurePosixPath(self.shared_root) / SHARED_HOMES / self.job_user)

    @property
    def jobs_dir(self) -> str:
        """Where ``cdk-trn submit`` puts the scripts it submits."""
        return str(PurePosixPath(self.home) / "jobs")


def job_id(value: str) -> str:
    """``value`` if it is a Slurm job id (``123`` or an array task ``123_4``), else ValueError."""
    if not _JOB_ID.match(value):
        raise ValueError(f"job must be a Slurm job id such as 1234 or 1234_5, got {value!r}")
    return value


def script_file_name(local_name: str, timestamp: str) -> str:
    """``<timestamp>-<basename>``, the basename reduced to characters safe in any path."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", PurePosixPath(local_name).name).lstrip(".") or "job"
    return f"{timestamp}-{base}"


def _documents(controller: Controller) -> dict[str, documents.Document]:
    return documents.command_documents(
        container=controller.container,
        job_user=controller.job_user,
        shared_root=controller.shared_root,
        code_bucket=controller.code_bucket,
    )


#: What ``cdk-trn`` sends: a document's action and its parameter values.
Invocation = tuple[str, dict[str, str]]


def render(controller: Controller, invocation: Invocation) -> str:
    """The script the controller runs for ``invocation`` (what SSM makes of the document)."""
    action, values = invocation
    return documents.render(_documents(controller)[action], values)


def _nul_terminated(values: Sequence[str]) -> str:
    return base64.b64encode("".join(f"{v}\0" for v in values).encode()).decode("ascii")


def submit_invocation(
    script: bytes,
    file_name: str,
    sbatch_args: Sequence[str] = (),
    script_args: Sequence[str] = (),
    *,
    code_key: str = "",
) -> Invocation:
    """Write ``script`` to ``<home>/jobs/<file_name>`` as the job user, then ``sbatch`` it.

    ``sbatch --parsable`` prints the job id. Jobs are submitted with ``--requeue`` (a job whose
    node fails is queued again and resumes from its checkpoint) unless ``sbatch_args`` says
    ``--requeue`` or ``--no-requeue`` itself. ``sbatch`` runs in the job user's home, so the
    default output file is ``<home>/slurm-<job>.out``.
    """
    if len(script) > MAX_SCRIPT_BYTES:
        raise ValueError(f"script is {len(script)} bytes, more than {MAX_SCRIPT_BYTES}")
    if "/" in file_name or file_name in ("", ".", ".."):
        raise ValueError(f"file_name must be a plain file name, got {file_name!r}")
    for arg in (*sbatch_args, *script_args):
        if "\0" in arg:
            raise ValueError("arguments cannot hold a NUL character")
    requeue = [] if {"--requeue", "--no-requeue"} & set(sbatch_args) else ["--requeue"]
    return (
        "submit",
        {
            "Script": base64.b64encode(script).decode("ascii"),
            "FileName": file_name,
            "SbatchArgs": _nul_terminated([*requeue, *sbatch_args]),
            "ScriptArgs": _nul_terminated(script_args),
            "CodeKey": code_key,
        },
    )


def submit_script(
    controller: Controller,
    script: bytes,
    file_name: str,
    sbatch_args: Sequence[str] = (),
    script_args: Sequence[str] = (),
) -> str:
    """:func:`submit_invocation` as the controller runs it."""
    return render(controller, submit_invocation(script, file_name, sbatch_args, script_args))


def queue_script(controller: Controller) -> str:
    """Every job Slurm knows, in :data:`QUEUE_FORMAT`."""
    return render(controller, ("queue", {}))


def status_script(controller: Controller) -> str:
    """Node states with drain reasons (``sinfo -N``), the nodes the cdk-trn health checks
    drained (reasons starting with ``SLURM_DRAIN_REASON_PREFIX``; a hardware reason also replaces
    the node), then the running jobs."""
    return render(controller, ("status", {}))


def cancel_invocation(job: str) -> Invocation:
    return ("cancel", {"JobId": job_id(job)})


def log_chunk_invocation(job: str, *, offset: int | None, lines: int | None) -> Invocation:
    """One piece of a job's output file, and the job's state.

    The output file is the job's ``StdOut`` from ``scontrol show job``; a job Slurm no longer
    knows (finished more than ``MinJobAge`` ago) is looked for at ``<home>/slurm-<job>.out``, where
    ``cdk-trn submit`` puts it by default. The first line is a header::

        cdk-trn-log state=<JobState or empty> size=<bytes, -1 if absent> start=<byte> path=<path>

    and the rest is base64 of at most :data:`LOG_CHUNK_BYTES` bytes from ``start``. ``start`` is
    ``offset`` when given, else the start of the file's last ``lines`` lines (``None``: the whole
    file).
    """
    job = job_id(job)
    if offset is not None and offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if lines is not None and lines < 1:
        raise ValueError(f"lines must be >= 1, got {lines}")
    return (
        "logs",
        {
            "JobId": job,
            "Offset": "" if offset is None else str(offset),
            # An offset decides alone.
            "Lines": "all" if lines is None or offset is not None else str(lines),
        },
    )


def log_chunk_script(
    controller: Controller, job: str, *, offset: int | None, lines: int | None
) -> str:
    """:func:`log_chunk_invocation` as the controller runs it."""
    return render(controller, log_chunk_invocation(job, offset=offset, lines=lines))


@dataclass(frozen=True)
class LogChunk:
    """What one :func:`log_chunk_script` run reported."""

    state: str
    size: int
    start: int
    path: str
    data: bytes

    @property
    def active(self) -> bool:
        """Whether the job may still write output."""
        return self.state in ACTIVE_JOB_STATES


def parse_log_chunk(stdout: str) -> LogChunk:
    """The header and data of a :func:`log_chunk_script` run's standard output."""
    header, _, body = stdout.partition("\n")
    match = _LOG_HEADER.match(header)
    if not match:
        raise ValueError(f"unexpected answer from the controller: {header[:200]!r}")
    return LogChunk(
        state=match["state"],
        size=int(match["size"]),
        start=int(match["start"]),
        path=match["path"],
        data=base64.b64decode("".join(body.split())),
    )


def parse_job_id(stdout: str) -> str:
    """The job id ``sbatch --parsable`` printed (``<id>`` or ``<id>;<cluster>``)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    candidate = lines[-1].split(";", 1)[0] if lines else ""
    if not candidate.isdigit():
        raise ValueError(f"sbatch printed no job id: {stdout.strip()[:200]!r}")
    return candidate
