"""The one harness for tests that run the local twin (``cdk_trn_runtime.slurm.local``).

``local_cluster()`` starts a twin (a controller and two dynamic nodes, each in namespaces of its
own on the twin's bridge) in a temp directory with ``local up``, yields a :class:`Cluster`
handle, and on the way out removes it with ``local down``, then checks that nothing it started
is left: no process in the twin's namespaces, no namespace, no bridge or link, no directory, no
munged (and kills what is, failing the test). The module fixture ``cluster``
(tests/cdk_trn_runtime/slurm/twin/conftest.py) gives each test module its own twin.

Each cluster also claims a rendezvous port range of its own: a slice of
``contract.RENDEZVOUS_PORTS`` held with an exclusive ``flock`` on a lock file for the cluster's
lifetime (the kernel drops the lock when the process ends, so a crashed run leaves no claim).
Jobs get their torchrun port from that range (``TRAIN_MASTER_PORT``).

Needs root and the packages slurm-wlm, munge and iproute2 (``.ci/run`` installs them).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from cdk_trn_runtime import contract
from cdk_trn_runtime.slurm import local
from cdk_trn_runtime.slurm.twin import net
from cdk_trn_runtime.slurm.twin.cluster import Twin, _alive

REPO = Path(__file__).resolve().parents[4]
TRAIN_SBATCH = REPO / "examples" / "slurm" / "train.sbatch"
#: Rendezvous ports per local cluster: ten slices of contract.RENDEZVOUS_PORTS (100 ports).
PORTS_PER_CLUSTER = 10
#: Where the port-range claims live; one lock file per slice, shared by every run on this host.
PORT_LOCKS = Path(tempfile.gettempdir()) / "cdk-trn-local-cluster-ports"

#: pytestmark of every module that runs a local cluster.
NEEDS_ROOT_AND_SLURM = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="slurmd needs root (CI runs as root)"),
]


@dataclass
class Cluster:
    layout: local.Layout
    env: dict[str, str]
    job_user: str
    #: This cluster's rendezvous ports; no other local cluster on this host uses them meanwhile.
    ports: range
    _next_port: int = 0

    def local(self, action: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """``python -m cdk_trn_runtime.slurm.local <action>`` on this twin (what
        ``make local-cluster``, ``local-cluster-replace`` and ``local-cluster-down`` run)."""
        return subprocess.run(
            [sys.executable, "-m", "cdk_trn_runtime.slurm.local", action, "--dir", str(self.root)]
            + list(args),
            capture_output=True,
            text=True,
            env=python_env(),
            timeout=timeout,
        )

    def up(self, *args: str) -> None:
        result = self.local("up", *args, timeout=600)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"export SLURM_CONF={self.layout.conf}\n"

    @property
    def root(self) -> Path:
        return self.layout.root

    def twin(self) -> Twin:
        """The twin's record as it is now."""
        return local.Twin(self.root)

    def nodes(self) -> list[str]:
        """The nodes sinfo shows, sorted."""
        return sorted(self.run("sinfo", "-h", "-N", "-o", "%N").stdout.split())

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)

    def node_state(self, node: str) -> str:
        return self.run("sinfo", "-h", "-n", node, "-o", "%T").stdout.strip()

    def node_reason(self, node: str) -> str:
        return self.run("sinfo", "-h", "-n", node, "-o", "%E").stdout.strip()

    def rendezvous_port(self) -> int:
        """The next port of this cluster's range, for one job's TRAIN_MASTER_PORT."""
        port = self.ports[self._next_port % len(self.ports)]
        self._next_port += 1
        return port

    @property
    def job_dir(self) -> Path:
        """Where the job user submits from: its home on the shared directory (root: the shared
        directory itself)."""
        if self.job_user == "root":
            return self.layout.shared
        return self.layout.shared / contract.SHARED_HOMES / self.job_user

    def as_job_user(self, *argv: str) -> list[str]:
        """``argv`` run as the cluster's job user."""
        if self.job_user == "root":
            return list(argv)
        return ["runuser", "-u", self.job_user, "--", *argv]

    def train_env(self, steps: int, checkpoint_every: int, checkpoints: Path) -> dict[str, str]:
        """The environment of one examples/slurm/train.sbatch job, with its own rendezvous port."""
        return {
            **self.env,
            "TRAIN_STEPS": str(steps),
            "CHECKPOINT_EVERY": str(checkpoint_every),
            "CHECKPOINT_DIR": str(checkpoints),
            "TRAIN_MASTER_PORT": str(self.rendezvous_port()),
        }


def python_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def wait(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check()`` held; an AssertionError naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.5)
    return time.monotonic() - start


@contextmanager
def claimed_ports(locks: Path = PORT_LOCKS) -> Iterator[range]:
    """A slice of contract.RENDEZVOUS_PORTS that no other holder on this host has meanwhile."""
    low, high = contract.RENDEZVOUS_PORTS
    locks.mkdir(mode=0o755, parents=True, exist_ok=True)
    for start in range(low, high + 1 - PORTS_PER_CLUSTER + 1, PORTS_PER_CLUSTER):
        handle: IO[str] = (locks / f"{start}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield range(start, start + PORTS_PER_CLUSTER)
        finally:
            handle.close()  # releases the lock
        return
    raise AssertionError(f"every rendezvous port range of {low}-{high} is held ({locks})")


@contextmanager
def local_cluster(prefix: str, *up_args: str) -> Iterator[Cluster]:
    """A running local cluster in a new temp directory named ``<prefix>…``; stopped and checked
    on the way out."""
    assert shutil.which("slurmctld") and shutil.which("munged"), (
        "install the packages slurm-wlm and munge (.ci/run does)"
    )
    assert os.geteuid() == 0, "the twin needs root (CI runs as root)"
    with claimed_ports() as ports:
        # Not pytest's tmp_path: munged needs its socket directory's parents traversable by all.
        root = Path(tempfile.mkdtemp(prefix=prefix))
        root.chmod(0o755)
        layout = local.Layout(root)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(layout.conf)
        handle = Cluster(layout, env, job_user="", ports=ports)
        try:
            handle.up(*up_args)
            handle.job_user = json.loads(layout.state_file.read_text())["job_user"]
            yield handle
        finally:
            _tear_down(handle)


def _tear_down(handle: Cluster) -> None:
    layout = handle.layout
    twin = handle.twin()
    tid, munged = twin.tid, layout.munge / "munged.pid"
    munged_pid = int(munged.read_text().split()[0]) if munged.exists() else None
    down = handle.local("down", timeout=300)
    left: list[str] = []
    for ns in net.twin_namespaces(tid):
        pids = net.netns_pids_by_name(ns)
        left.append(f"namespace {ns} (processes {pids})")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        net.run("ip", "netns", "del", ns, check=False)
    links = net.run("ip", "-br", "link").stdout
    for line in links.splitlines():
        name = line.split()[0].split("@")[0]
        if tid in name:
            left.append(f"link {name}")
            net.run("ip", "link", "del", name, check=False)
    if munged_pid is not None and _alive(munged_pid):
        left.append(f"munged {munged_pid}")
        os.kill(munged_pid, signal.SIGKILL)
    if layout.root.exists():
        left.append(f"directory {layout.root}")
        shutil.rmtree(layout.root, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert not left, f"left after down: {left}: {down.stderr}"
