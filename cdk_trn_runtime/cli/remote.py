"""The shell scripts ``cdk-trn`` runs on the Slurm controller, built by pure functions.

Each function returns the text of one POSIX ``sh`` script that SSM's ``AWS-RunShellScript`` runs as
root on the controller instance. Every Slurm command runs inside the controller's container, as
the job user, through ``docker exec -u <user> -w <dir> <container> <command>``; nothing else on
the host is touched. Every value that comes from the user or the stack is quoted with
:func:`shlex.quote`, so an argument such as ``; rm -rf /`` reaches ``sbatch`` as one literal
argument.

All the Slurm-side logic (which command, which format, how a job's output file is found) lives in
these strings, so the same scripts can be run against a real local Slurm by replacing ``docker``
with a command that runs its arguments directly.
"""

from __future__ import annotations

import base64
import re
import shlex
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from cdk_trn_runtime.contract import SHARED_HOMES, SLURM_DRAIN_REASON_PREFIX

#: ``sbatch`` scripts larger than this are refused (a job script is a few lines; data and code
#: belong on the shared file system or in the image).
MAX_SCRIPT_BYTES = 64 * 1024
#: Bytes of a job's output read per SSM command: base64 of this must stay under the 24,000
#: characters of standard output that GetCommandInvocation returns.
LOG_CHUNK_BYTES = 16 * 1024
#: Exit status of a remote script when the controller container is not running.
EXIT_NO_CONTAINER = 69
#: Exit status when a file the script needs does not exist (the job user's home, a job's output).
EXIT_NO_FILE = 66
#: ``squeue`` columns: job id, partition, name, user, state, time used, time limit, nodes, and the
#: node list (running) or the reason it waits (pending).
QUEUE_FORMAT = "%.12i %.10P %.24j %.10u %.12T %.11M %.11l %.6D %R"
#: ``sinfo -N`` columns: node, partition, state (``drained``, ``draining``, ``idle``...), CPUs,
#: memory (MB), features (instance type, efa, UltraServer), when the reason was set, the reason.
NODE_FORMAT = "%-18N %-10P %-12T %5c %9m %-40f %-19H %E"
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


def _preamble(controller: Controller) -> str:
    q = shlex.quote
    return textwrap.dedent(
        f"""\
        set -eu
        container={q(controller.container)}
        user={q(controller.job_user)}
        running=$(docker inspect --format '{{{{.State.Running}}}}' "$container" 2>/dev/null || true)
        if [ "$running" != true ]; then
          echo "cdk-trn: the Slurm controller container $container is not running on this" \\
            "instance (see: docker ps -a; journalctl -u docker)" >&2
          exit {EXIT_NO_CONTAINER}
        fi
        """
    )


def submit_script(
    controller: Controller,
    script: bytes,
    file_name: str,
    sbatch_args: Sequence[str] = (),
    script_args: Sequence[str] = (),
) -> str:
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
    q = shlex.quote
    path = str(PurePosixPath(controller.jobs_dir) / file_name)
    requeue = [] if {"--requeue", "--no-requeue"} & set(sbatch_args) else ["--requeue"]
    sbatch = ["sbatch", "--parsable", *requeue, *sbatch_args]
    encoded = base64.encodebytes(script).decode("ascii").rstrip("\n")
    return (
        _preamble(controller)
        + textwrap.dedent(
            f"""\
            home={q(controller.home)}
            jobs={q(controller.jobs_dir)}
            path={q(path)}
            if ! docker exec -u "$user" -w / "$container" test -d "$home"; then
              echo "cdk-trn: the job user's home $home does not exist in $container" >&2
              exit {EXIT_NO_FILE}
            fi
            docker exec -i -u "$user" -w / "$container" \\
              sh -c 'mkdir -p "$1" && set -C && base64 -d > "$2"' sh "$jobs" "$path" \\
              <<'CDK_TRN_JOB_SCRIPT'
            """
        )
        + encoded
        + "\nCDK_TRN_JOB_SCRIPT\n"
        + 'docker exec -u "$user" -w "$home" "$container" \\\n  '
        + shlex.join(sbatch)
        + ' "$path"'
        + "".join(" " + q(arg) for arg in script_args)
        + "\n"
    )


def queue_script(controller: Controller) -> str:
    """Every job Slurm knows, in :data:`QUEUE_FORMAT`."""
    return (
        _preamble(controller)
        + f'docker exec -u "$user" -w / "$container" squeue --format={shlex.quote(QUEUE_FORMAT)}\n'
    )


def status_script(controller: Controller) -> str:
    """Node states with drain reasons (``sinfo -N``), the nodes the cdk-trn health checks
    drained (reasons starting with ``SLURM_DRAIN_REASON_PREFIX``; a hardware reason also replaces
    the node), then the running jobs."""
    prefix = shlex.quote(" " + SLURM_DRAIN_REASON_PREFIX)
    return _preamble(controller) + textwrap.dedent(
        f"""\
        echo "NODES"
        docker exec -u "$user" -w / "$container" sinfo -N --format={shlex.quote(NODE_FORMAT)}
        echo
        echo "DRAINED BY HEALTH CHECKS"
        reasons=$(docker exec -u "$user" -w / "$container" sinfo --list-reasons --noheader \\
          --format='%N %E')
        printf '%s\\n' "$reasons" | grep -F -- {prefix} || echo "none"
        echo
        echo "RUNNING JOBS"
        docker exec -u "$user" -w / "$container" \\
          squeue --states=RUNNING --format={shlex.quote(QUEUE_FORMAT)}
        """
    )


def log_chunk_script(
    controller: Controller, job: str, *, offset: int | None, lines: int | None
) -> str:
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
    q = shlex.quote
    if offset is not None:
        start = f"start={offset}"
    elif lines is not None:
        start = textwrap.dedent(
            f"""\
            start=0
            if [ "$size" -gt 0 ]; then
              tail_bytes=$(docker exec -u "$user" -w / "$container" tail -n {lines} "$out" | wc -c)
              start=$((size - tail_bytes))
            fi"""
        )
    else:
        start = "start=0"
    return (
        _preamble(controller)
        + textwrap.dedent(
            f"""\
        home={q(controller.home)}
        job={q(job)}
        state=
        if info=$(docker exec -u "$user" -w / "$container" scontrol show job "$job" \\
          2>/dev/null); then
          out=$(printf '%s\\n' "$info" | sed -n 's/^[[:space:]]*StdOut=//p' | head -n 1)
          state=$(printf '%s\\n' "$info" | sed -n 's/.*JobState=\\([A-Z_]*\\).*/\\1/p' | head -n 1)
        else
          out="$home/slurm-$job.out"
        fi
        size=$(docker exec -u "$user" -w / "$container" \\
          sh -c 'if [ -f "$1" ]; then wc -c < "$1"; else echo -1; fi' sh "$out")
        size=$((size))
        """
        )
        + start
        + textwrap.dedent(
            f"""
        echo "cdk-trn-log state=$state size=$size start=$start path=$out"
        if [ "$size" -gt "$start" ]; then
          docker exec -u "$user" -w / "$container" \\
            sh -c 'tail -c +"$2" "$1" | head -c "$3" | base64' sh "$out" "$((start + 1))" \\
            {LOG_CHUNK_BYTES}
        fi
        """
        )
    )


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


def shell_command(controller: Controller) -> str:
    """The command an interactive SSM session runs: a login shell in the controller's
    container, as the job user, in their home."""
    return shlex.join(
        [
            "docker",
            "exec",
            "-it",
            "-u",
            controller.job_user,
            "-w",
            controller.home,
            controller.container,
            "bash",
            "-l",
        ]
    )


def parse_job_id(stdout: str) -> str:
    """The job id ``sbatch --parsable`` printed (``<id>`` or ``<id>;<cluster>``)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    candidate = lines[-1].split(";", 1)[0] if lines else ""
    if not candidate.isdigit():
        raise ValueError(f"sbatch printed no job id: {stdout.strip()[:200]!r}")
    return candidate
