"""Any torchrun script on the local cluster (issue 25, must-hold 3): a researcher's plain PyTorch
FSDP2 script (examples/train_fsdp2.py, no cdk-trn import), copied into the job user's home, runs
across both nodes with ``sbatch -N2 examples/slurm/torchrun.sbatch my_train.py --steps 20``; and
``sbatch -N2 examples/slurm/train.sbatch``, which launches through the same module
(cdk_trn_runtime.launch), still ends with its ``train: done`` line.

On the twin (tests/cdk_trn_runtime/slurm/twin/harness.py). Needs root and the packages slurm-wlm
and munge.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.cdk_trn_runtime.slurm.twin.harness import (
    NEEDS_ROOT_AND_SLURM,
    REPO,
    TRAIN_SBATCH,
    Cluster,
    wait,
)

pytestmark = NEEDS_ROOT_AND_SLURM

TORCHRUN_SBATCH = REPO / "examples" / "slurm" / "torchrun.sbatch"
FSDP2_SCRIPT = REPO / "examples" / "train_fsdp2.py"
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def _state(cluster: Cluster, job: str) -> str:
    match = re.search(r"JobState=(\S+)", cluster.run("scontrol", "show", "job", job).stdout)
    return match.group(1) if match else ""


def _submit(cluster: Cluster, env: dict[str, str], *argv: str) -> str:
    command = cluster.as_job_user(
        "sbatch", "-N2", "--parsable", f"--chdir={cluster.job_dir}", *argv
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def _finish(cluster: Cluster, job: str, log: Path) -> str:
    wait(f"job {job} finished", lambda: _state(cluster, job) in FINISHED, timeout=600)
    output = log.read_text() if log.exists() else "(no log)"
    assert _state(cluster, job) == "COMPLETED", output
    return output


def test_a_plain_fsdp2_script_runs_on_both_nodes(cluster):
    script = cluster.job_dir / "my_train.py"
    shutil.copyfile(FSDP2_SCRIPT, script)
    script.chmod(0o644)
    assert "cdk_trn" not in script.read_text()
    env = {**cluster.env, "TRAIN_MASTER_PORT": str(cluster.rendezvous_port())}
    job = _submit(cluster, env, str(TORCHRUN_SBATCH), "my_train.py", "--steps", "20")
    output = _finish(cluster, job, cluster.job_dir / f"torchrun-{job}.out")

    assert f"launch: job={job} nodes=2 " in output
    # One torchrun per node, node ranks 0 and 1, one rank each: a world of two.
    assert re.search(r"launch: node 0 \(\S+\) procs_per_node=1", output), output
    assert re.search(r"launch: node 1 \(\S+\) procs_per_node=1", output), output
    [done] = re.findall(r"^fsdp2: done .*$", output, flags=re.MULTILINE)
    fields = dict(item.split("=") for item in done.split()[2:])
    assert fields["steps"] == "20" and fields["world"] == "2"
    assert float(fields["loss_last"]) < float(fields["loss_first"])


def test_train_sbatch_still_ends_with_its_done_line(cluster):
    checkpoints = cluster.layout.shared / "checkpoints" / "test-torchrun-job"
    env = cluster.train_env(steps=6, checkpoint_every=3, checkpoints=checkpoints)
    job = _submit(cluster, env, str(TRAIN_SBATCH))
    output = _finish(cluster, job, cluster.job_dir / f"train-{job}.out")
    [done] = re.findall(r"^train: done .*$", output, flags=re.MULTILINE)
    assert re.fullmatch(
        r"train: done step=6 loss_first=\d+\.\d{4} loss_last=\d+\.\d{4} checkpoint=\S+step-0+6"
        # the fields after checkpoint= (throughput, and tokens per dollar when a price is known)
        r" tokens_per_s=[\d.]+(?: tokens_per_usd=\d+)?",
        done,
    ), done
    assert "launch: job=" in output
