"""Auto-resume on the local cluster (issue 12, must-hold 1): a training job started with
``sbatch -N2 --requeue examples/slurm/train.sbatch`` whose node's slurmd is killed after the
first checkpoint is requeued by Slurm; once ``python -m cdk_trn_runtime.slurm.local up`` (what
``make local-cluster`` runs) has brought the node back, the job runs again, resumes from its
latest checkpoint and completes.

Needs root and the packages slurm-wlm and munge. The cluster is the module's own (``cluster``
fixture, tests/slurm/harness.py), stopped with ``local down`` and checked, by pid, to have left
no daemon.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from cdk_trn_runtime.slurm import local
from cdk_trn_runtime.train import checkpoint
from tests.slurm.harness import (
    NEEDS_ROOT_AND_SLURM,
    TRAIN_SBATCH,
    Cluster,
    daemon_running,
    wait,
)

pytestmark = NEEDS_ROOT_AND_SLURM

STEPS = 40
CHECKPOINT_EVERY = 4
#: Slow enough that the run outlasts the ~10 s Slurm takes to notice the dead slurmd (the job's
#: tasks on that node keep running meanwhile), fast enough for a quick test.
STEP_SLEEP = "1"


def _job_state(cluster: Cluster, job: str) -> str:
    result = cluster.run("scontrol", "show", "job", job)
    match = re.search(r"JobState=(\S+)", result.stdout)
    return match.group(1) if match else ""


def _restart_count(cluster: Cluster, job: str) -> int:
    result = cluster.run("scontrol", "show", "job", job)
    match = re.search(r"Restarts=(\d+)", result.stdout)
    return int(match.group(1)) if match else -1


def test_job_on_a_failed_node_is_requeued_and_resumes_after_up_replaces_the_node(cluster):
    workdir = cluster.job_dir
    checkpoints = cluster.layout.shared / "checkpoints" / "test-resume"
    submit = cluster.as_job_user(
        "sbatch", "-N2", "--requeue", "--parsable", f"--chdir={workdir}", str(TRAIN_SBATCH)
    )
    env = {
        **cluster.train_env(STEPS, CHECKPOINT_EVERY, checkpoints),
        "TRAIN_STEP_SLEEP": STEP_SLEEP,
    }
    result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    log = workdir / f"train-{job}.out"

    def output() -> str:
        return log.read_text() if log.exists() else "(no log)"

    try:
        wait("the first checkpoint", lambda: checkpoint.latest(checkpoints) is not None, 300)
        first = checkpoint.latest(checkpoints)
        assert first is not None
        assert _job_state(cluster, job) == "RUNNING", output()

        # The node fails: its slurmd dies (the job's tasks there lose their node).
        pid = local._alive(cluster.layout.pid_file("slurmd-n2"))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait("the killed slurmd gone", lambda: not daemon_running(pid), timeout=10)
        wait("n2 down", lambda: cluster.node_state("n2").startswith("down"), timeout=60)
        wait(
            "the job requeued",
            lambda: _restart_count(cluster, job) == 1 and _job_state(cluster, job) == "PENDING",
            timeout=120,
        )
        assert "train: done" not in output()

        # make local-cluster: up starts the missing slurmd, the node returns to service.
        cluster.up()
        wait(
            f"job {job} completed after the node came back",
            lambda: _job_state(cluster, job) in ("COMPLETED", "FAILED", "CANCELLED"),
            timeout=600,
        )
        text = output()
        assert _job_state(cluster, job) == "COMPLETED", text
    finally:
        if _job_state(cluster, job) not in ("COMPLETED", "FAILED", "CANCELLED", ""):
            cluster.run("scancel", job)

    # Both runs of the job rendezvous on the port this cluster handed it.
    assert text.count(f"master=127.0.0.1:{env['TRAIN_MASTER_PORT']} ") == 2, text
    assert "train.sbatch: job=" + job + " restart=0" in text
    assert "train.sbatch: job=" + job + " restart=1" in text
    resumed = re.findall(r"^train: resumed step=(\d+) from=(\S+)$", text, re.MULTILINE)
    assert len(resumed) == 1, text
    step, path = int(resumed[0][0]), Path(resumed[0][1])
    assert step > 0 and step % CHECKPOINT_EVERY == 0
    assert step >= int(first.name[len("step-") :])
    assert path == checkpoints / checkpoint.checkpoint_name(step)
    done = [line for line in text.splitlines() if line.startswith("train: done ")]
    assert done == [line for line in done if line.startswith(f"train: done step={STEPS} ")]
    assert len(done) == 1, text
    # Resumed, then done, in that order.
    assert text.index(f"train: resumed step={step}") < text.index(done[0])
    assert (checkpoints / "latest").read_text() == f"{checkpoint.checkpoint_name(STEPS)}\n"

    # Each run has its own log, named with its restart count.
    run_logs = {n: workdir / f"train-{job}-restart{n}.out" for n in (0, 1)}
    assert all(p.exists() for p in run_logs.values()), sorted(workdir.iterdir())
    assert "train: done" not in run_logs[0].read_text()
    assert f"train: resumed step={step}" in run_logs[1].read_text()
    assert done[0] in run_logs[1].read_text()
