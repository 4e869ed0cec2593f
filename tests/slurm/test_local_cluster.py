"""A real Slurm cluster on this machine (``cdk_trn_runtime.slurm.local``): munged, slurmctld and
two slurmd schedule real jobs; the training example runs across both nodes with torchrun and
resumes from its checkpoint; the health check drains a node that lost a Neuron device; a killed
slurmd is noticed and ``up`` brings the node back.

Needs root and the packages slurm-wlm and munge (``.ci/run`` installs them). The cluster lives in
a temp directory; teardown stops it with ``local down`` and checks, by pid, that no daemon it
started is left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cdk_trn_runtime.slurm import local

REPO = Path(__file__).resolve().parents[2]
TRAIN_SBATCH = REPO / "examples" / "slurm" / "train.sbatch"
DAEMON_NAMES = {"munged", "slurmctld", "slurmd"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="slurmd needs root (CI runs as root)"),
]


@dataclass
class Cluster:
    layout: local.Layout
    env: dict[str, str]
    job_user: str
    started: set[int] = field(default_factory=set)

    def up(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "cdk_trn_runtime.slurm.local", "up", "--dir", str(self.root)],
            capture_output=True,
            text=True,
            env=_python_env(),
            timeout=180,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"export SLURM_CONF={self.layout.conf}\n"
        self.record_pids()

    @property
    def root(self) -> Path:
        return self.layout.root

    def record_pids(self) -> None:
        for daemon in local.DAEMONS:
            pid = local._alive(self.layout.pid_file(daemon))
            if pid is not None:
                self.started.add(pid)

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)

    def node_state(self, node: str) -> str:
        result = self.run("sinfo", "-h", "-n", node, "-o", "%T")
        return result.stdout.strip()

    def node_reason(self, node: str) -> str:
        return self.run("sinfo", "-h", "-n", node, "-o", "%E").stdout.strip()


def _python_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _wait(what: str, check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.5)
    return time.monotonic() - start


def _daemon_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    state = stat[stat.rindex(")") + 2]
    return name in DAEMON_NAMES and state not in "ZX"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    assert shutil.which("slurmctld") and shutil.which("munged"), (
        "install the packages slurm-wlm and munge (.ci/run does)"
    )
    # Not pytest's tmp_path: munged needs its socket directory's parents traversable by all.
    root = Path(tempfile.mkdtemp(prefix="cdk-trn-slurm-"))
    root.chmod(0o755)
    layout = local.Layout(root)
    env = {**os.environ, "SLURM_CONF": str(layout.conf)}
    env.pop("SLURM_JOB_ID", None)
    handle = Cluster(layout, env, job_user="")
    try:
        handle.up()
        handle.job_user = json.loads(layout.state_file.read_text())["job_user"]
        yield handle
    finally:
        handle.record_pids()
        down = subprocess.run(
            [sys.executable, "-m", "cdk_trn_runtime.slurm.local", "down", "--dir", str(root)],
            capture_output=True,
            text=True,
            env=_python_env(),
            timeout=120,
        )
        left = sorted(pid for pid in handle.started if _daemon_running(pid))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        assert down.returncode == 0, down.stderr
        assert handle.started, "the fixture recorded no daemon it started"
        assert not left, f"daemons left running after down: {left}"


def test_sinfo_shows_both_nodes_idle(cluster):
    result = cluster.run("sinfo", "-h", "-N", "-o", "%N %T")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split("\n")[:-1]) == ["n1 idle", "n2 idle"]


def test_srun_runs_a_task_on_each_node(cluster):
    result = cluster.run("srun", "-N2", "--ntasks-per-node=1", "printenv", "SLURMD_NODENAME")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == ["n1", "n2"]


def _submit_training(cluster: Cluster, steps: int, checkpoints: Path) -> str:
    workdir = cluster.layout.shared / "home" / cluster.job_user
    workdir = workdir if cluster.job_user != "root" else cluster.layout.shared
    submit = ["sbatch", "--wait", "-N2", f"--chdir={workdir}", "--parsable", str(TRAIN_SBATCH)]
    if cluster.job_user != "root":
        submit = ["runuser", "-u", cluster.job_user, "--", *submit]
    env = {
        **cluster.env,
        "TRAIN_STEPS": str(steps),
        "CHECKPOINT_EVERY": "2",
        "CHECKPOINT_DIR": str(checkpoints),
        # Not the port the job id picks: another local cluster on this host (the other test
        # module's, under xdist, or another checkout's) numbers its jobs alike.
        "TRAIN_MASTER_PORT": str(local._free_ports(1)[0]),
    }
    result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900, cwd="/")
    job = result.stdout.strip().split(";")[0]
    log = workdir / f"train-{job}.out"
    output = log.read_text() if log.exists() else "(no log)"
    assert result.returncode == 0, f"{result.stderr}\n{output}"
    return output


def _done(output: str) -> re.Match[str]:
    lines = [line for line in output.splitlines() if line.startswith("train: done ")]
    assert len(lines) == 1, output
    match = re.fullmatch(
        r"train: done step=(\d+) loss_first=([\d.]+) loss_last=([\d.]+) checkpoint=(\S+)", lines[0]
    )
    assert match, lines[0]
    return match


def test_training_job_trains_across_both_nodes_checkpoints_and_resumes(cluster):
    checkpoints = cluster.layout.shared / "checkpoints" / "test-train"
    first = _submit_training(cluster, steps=2, checkpoints=checkpoints)
    assert "restart=0" in first
    assert "procs_per_node=1" in first
    done = _done(first)
    assert done.group(1) == "2"
    assert float(done.group(3)) < float(done.group(2)), done.group(0)
    assert Path(done.group(4)) == checkpoints / "step-00000002"
    assert (Path(done.group(4)) / "state.pt").is_file()
    assert (checkpoints / "latest").read_text() == "step-00000002\n"

    second = _submit_training(cluster, steps=4, checkpoints=checkpoints)
    assert f"train: resumed step=2 from={checkpoints / 'step-00000002'}" in second
    resumed = _done(second)
    assert resumed.group(1) == "4"
    assert (checkpoints / "latest").read_text() == "step-00000004\n"


def test_missing_neuron_device_drains_the_node_and_jobs_go_to_the_other(cluster):
    device = cluster.layout.node_root("n1") / "dev" / "neuron1"
    device.unlink()
    try:
        _wait(
            "n1 drained by the health check",
            lambda: "drain" in cluster.node_state("n1"),
            timeout=60,
        )
        assert cluster.node_reason("n1") == "cdk-trn: neuron devices 1 of 2"
        result = cluster.run("srun", "-N1", "printenv", "SLURMD_NODENAME", timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["n2"]
    finally:
        device.touch()
        cluster.run("scontrol", "update", "nodename=n1", "state=resume")
    _wait("n1 idle again", lambda: cluster.node_state("n1") == "idle", timeout=60)


def test_killed_slurmd_is_noticed_and_up_replaces_it(cluster):
    pid_file = cluster.layout.pid_file("slurmd-n2")
    pid = local._alive(pid_file)
    assert pid is not None
    others = {
        d: local._alive(cluster.layout.pid_file(d)) for d in local.DAEMONS if d != "slurmd-n2"
    }
    os.kill(pid, signal.SIGKILL)
    noticed = _wait(
        "n2 marked down", lambda: cluster.node_state("n2").startswith("down"), timeout=60
    )
    assert noticed < 30, f"a dead slurmd was noticed after {noticed:.0f}s"
    cluster.up()
    new = local._alive(pid_file)
    assert new is not None and new != pid
    # up left the running daemons alone.
    assert {d: local._alive(cluster.layout.pid_file(d)) for d in others} == others
    _wait("n2 idle again", lambda: cluster.node_state("n2") == "idle", timeout=60)
    result = cluster.run("srun", "-N2", "hostname", timeout=120)
    assert result.returncode == 0, result.stderr
