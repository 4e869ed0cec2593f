"""A real Slurm cluster on this machine (``cdk_trn_runtime.slurm.local``): munged, slurmctld and
two slurmd schedule real jobs; the training example runs across both nodes with torchrun, on this
cluster's own rendezvous port, and resumes from its checkpoint; the health check drains a node
that lost a Neuron device; a killed slurmd is noticed and ``up`` brings the node back.

Needs root and the packages slurm-wlm and munge (``.ci/run`` installs them). The cluster is the
module's own (``cluster`` fixture, tests/slurm/harness.py), stopped with ``local down`` and
checked, by pid, to have left no daemon.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from cdk_trn_runtime.slurm import local
from tests.slurm.harness import NEEDS_ROOT_AND_SLURM, TRAIN_SBATCH, Cluster, wait

pytestmark = NEEDS_ROOT_AND_SLURM


def test_sinfo_shows_both_nodes_idle(cluster):
    result = cluster.run("sinfo", "-h", "-N", "-o", "%N %T")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split("\n")[:-1]) == ["n1 idle", "n2 idle"]


def test_srun_runs_a_task_on_each_node(cluster):
    result = cluster.run("srun", "-N2", "--ntasks-per-node=1", "printenv", "SLURMD_NODENAME")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == ["n1", "n2"]


def _submit_training(cluster: Cluster, steps: int, checkpoints: Path) -> str:
    workdir = cluster.job_dir
    submit = cluster.as_job_user(
        "sbatch", "--wait", "-N2", f"--chdir={workdir}", "--parsable", str(TRAIN_SBATCH)
    )
    env = cluster.train_env(steps, checkpoint_every=2, checkpoints=checkpoints)
    result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900, cwd="/")
    job = result.stdout.strip().split(";")[0]
    log = workdir / f"train-{job}.out"
    output = log.read_text() if log.exists() else "(no log)"
    assert result.returncode == 0, f"{result.stderr}\n{output}"
    # The rendezvous port is the one this cluster handed out, not one derived from the job id.
    assert f"master=127.0.0.1:{env['TRAIN_MASTER_PORT']} " in output
    assert int(env["TRAIN_MASTER_PORT"]) in cluster.ports
    return output


def _done(output: str) -> re.Match[str]:
    lines = [line for line in output.splitlines() if line.startswith("train: done ")]
    assert len(lines) == 1, output
    match = re.fullmatch(
        r"train: done step=(\d+) loss_first=([\d.]+) loss_last=([\d.]+) checkpoint=(\S+)"
        r" tokens_per_s=([\d.]+)(?: tokens_per_usd=\d+)?",
        lines[0],
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
        wait(
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
    wait("n1 idle again", lambda: cluster.node_state("n1") == "idle", timeout=60)


def test_killed_slurmd_is_noticed_and_up_replaces_it(cluster):
    pid_file = cluster.layout.pid_file("slurmd-n2")
    pid = local._alive(pid_file)
    assert pid is not None
    others = {
        d: local._alive(cluster.layout.pid_file(d)) for d in local.DAEMONS if d != "slurmd-n2"
    }
    os.kill(pid, signal.SIGKILL)
    noticed = wait(
        "n2 marked down", lambda: cluster.node_state("n2").startswith("down"), timeout=60
    )
    assert noticed < 30, f"a dead slurmd was noticed after {noticed:.0f}s"
    cluster.up()
    new = local._alive(pid_file)
    assert new is not None and new != pid
    # up left the running daemons alone.
    assert {d: local._alive(cluster.layout.pid_file(d)) for d in others} == others
    wait("n2 idle again", lambda: cluster.node_state("n2") == "idle", timeout=60)
    result = cluster.run("srun", "-N2", "hostname", timeout=120)
    assert result.returncode == 0, result.stderr
