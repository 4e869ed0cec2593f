"""Who is asking the signing agent, from the kernel and Slurm only: the caller's pid, uid and gid
from the socket (``SO_PEERCRED``), the job that pid belongs to from slurmd
(``scontrol pidinfo``), and that job's user, name, state and nodes from slurmctld
(``scontrol show job -o``)."""

from __future__ import annotations

import re
import shlex
import socket
import struct
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cdk_trn_runtime.provenance.agent_client import AgentError

__all__ = ["SO_PEERCRED_FORMAT", "JobIdentity", "Runner", "Slurm", "peer_credentials"]

_JOB_ID = re.compile(r"JobId=(\d+)")
#: A ``Name=value`` field of ``scontrol show job -o``, at a field boundary.
_FIELD = re.compile(r"(?<!\S)(\w+)=(\S*)")
#: The fields the agent reads. A job sets free text on both sides of them (its name before,
#: its comment after), so one that appears twice is refused rather than guessed at.
_READ = ("JobId", "UserId", "JobName", "JobState", "NodeList")
_USER = re.compile(r"^[^()]*\((\d+)\)$")
SO_PEERCRED_FORMAT = "3i"


@dataclass(frozen=True)
class JobIdentity:
    """What Slurm says about a job."""

    job_id: str
    uid: int
    name: str
    state: str
    nodes: tuple[str, ...]

    @property
    def run_id(self) -> str:
        return self.job_id


Runner = Callable[[Sequence[str]], str]


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=30, check=False, cwd="/"
    )
    if done.returncode != 0:
        raise AgentError(f"{shlex.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


class Slurm:
    """Slurm's own answers, through scontrol (the node's slurmd and the controller)."""

    def __init__(self, node: str, run: Runner = _run) -> None:
        self.node = node
        self._run = run

    def job_of_pid(self, pid: int) -> str:
        """The job slurmd says ``pid`` belongs to; AgentError when none."""
        try:
            out = self._run(["scontrol", "pidinfo", str(pid)])
        except AgentError as exc:
            raise AgentError(f"process {pid} is not part of a Slurm job on this node") from exc
        match = _JOB_ID.search(out)
        if not match:
            raise AgentError(f"process {pid} is not part of a Slurm job on this node")
        return match.group(1)

    def job(self, job_id: str) -> JobIdentity:
        fields: dict[str, str] = {}
        repeated: set[str] = set()
        for name, value in _FIELD.findall(self._run(["scontrol", "show", "job", "-o", job_id])):
            if name in fields:
                repeated.add(name)
            fields.setdefault(name, value)
        ambiguous = [name for name in _READ if name in repeated]
        if ambiguous:
            raise AgentError(
                f"slurm's description of job {job_id} names {', '.join(ambiguous)} more than "
                "once (in the job's name or comment?): refused"
            )
        user = _USER.match(fields.get("UserId", ""))
        if fields.get("JobId") != job_id or not user:
            raise AgentError(f"slurm does not describe job {job_id}")
        hosts = self._run(["scontrol", "show", "hostnames", fields.get("NodeList", "")])
        return JobIdentity(
            job_id=job_id,
            uid=int(user.group(1)),
            name=fields.get("JobName", ""),
            state=fields.get("JobState", ""),
            nodes=tuple(hosts.split()),
        )


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel recorded them."""
    raw = sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(SO_PEERCRED_FORMAT)
    )
    pid, uid, gid = struct.unpack(SO_PEERCRED_FORMAT, raw)
    return pid, uid, gid
