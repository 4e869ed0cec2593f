"""``cdk-trn cost`` on the local Slurm cluster: a two-node job runs, then the command reads the
cluster's own job completion log (``JobCompLoc``, written by Slurm's jobcomp/filetxt) and costs it
at --hourly-price 10, with the idle node-hours from the nodes' records (``scontrol``).

Needs root and the packages slurm-wlm and munge (``.ci/run`` installs them)."""

from __future__ import annotations

import json
import subprocess
import sys

from cdk_trn_runtime import contract
from tests.cdk_trn_runtime.slurm.twin.harness import NEEDS_ROOT_AND_SLURM, REPO, wait

pytestmark = NEEDS_ROOT_AND_SLURM


def test_a_two_node_job_is_costed_from_the_clusters_job_completion_log(cluster):
    submit = cluster.as_job_user(
        "sbatch",
        "--wait",
        "-N2",
        "-J",
        "cost probe",
        f"--chdir={cluster.job_dir}",
        "--parsable",
        "--wrap",
        "srun -N2 sleep 2",
    )
    result = subprocess.run(submit, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    log = cluster.layout.shared / contract.SHARED_JOB_LOGS / "jobcomp.log"
    wait(
        "the job's completion record",
        lambda: log.exists() and f"JobId={job} " in log.read_text(),
        60,
    )

    costed = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdk_trn_runtime.cli",
            "cost",
            "--jobcomp",
            str(log),
            "--hourly-price",
            "10",
            "--format",
            "json",
        ],
        env={**cluster.env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert costed.returncode == 0, costed.stderr
    document = json.loads(costed.stdout)  # stdout is only JSON
    [row] = [r for r in document["jobs"] if r["job_id"] == job]
    assert row["name"] == "cost probe" and row["nodes"] == 2
    assert row["elapsed_s"] >= 2
    assert row["node_hours"] > 0
    assert row["cost_usd"] == round(row["node_hours"] * 10, 2)
    totals = document["totals"]
    assert totals["jobs"] >= 1 and totals["node_hours"] >= row["node_hours"]
    assert totals["hourly_price"] == 10.0
    # Both nodes' records say when they booted: the idle time is known.
    assert document["idle_node_hours"] is not None and document["idle_node_hours"] >= 0
