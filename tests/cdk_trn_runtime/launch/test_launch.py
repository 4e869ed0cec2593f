"""The launcher both sbatch files call (cdk_trn_runtime.launch), without Slurm: the plan of a job,
each node's rank, ranks per node, environment and torchrun command. Hosts are directories that
stand in for / (their dev/ and sys/). The local-cluster runs are
tests/cdk_trn_runtime/slurm/twin/test_torchrun_job.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cdk_trn_runtime import contract
from cdk_trn_runtime.launch import (
    JobPlan,
    LaunchError,
    master_port,
    neuron_comm_port,
    node_environment,
    node_rank,
    plan_job,
    procs_per_node,
    torchrun_command,
)

REPO = Path(__file__).resolve().parents[3]
JOB = {"SLURM_JOB_ID": "1234", "SLURM_NNODES": "2"}
FIRST, LAST = contract.RENDEZVOUS_PORTS


def addresses(node: str) -> str:
    return {"n1": "10.0.0.11", "n2": "10.0.0.12"}[node]


def trainium_host(tmp_path: Path, efa: int = 16) -> str:
    (tmp_path / "dev").mkdir(parents=True, exist_ok=True)
    for index in range(16):
        (tmp_path / "dev" / f"neuron{index}").write_text("")
    for index in range(efa):
        (tmp_path / "sys" / "class" / "infiniband" / f"rdmap{index}s0").mkdir(parents=True)
    return str(tmp_path)


def test_rendezvous_is_on_the_first_hosts_address_at_a_reserved_port():
    plan = plan_job(JOB, addresses, "n1")
    assert plan == JobPlan(2, "10.0.0.11", FIRST + 1234 % (LAST - FIRST + 1))
    assert FIRST <= plan.master_port <= LAST


def test_train_master_port_overrides_and_must_be_reserved():
    assert master_port(1234, {"TRAIN_MASTER_PORT": str(FIRST + 3)}) == FIRST + 3
    with pytest.raises(LaunchError, match=f"from {FIRST} to {LAST}"):
        master_port(1, {"TRAIN_MASTER_PORT": "8080"})


def test_outside_a_job_the_launcher_says_how_to_submit():
    with pytest.raises(LaunchError, match="sbatch examples/slurm/torchrun.sbatch"):
        plan_job({}, addresses, "n1")


def test_ultraservers_order_ranks_by_server_and_node_id_and_rendezvous_on_the_first():
    hosts = "b 00000000000000aa 1\na 00000000000000aa 0\n"
    plan = plan_job(JOB, addresses, "n1", hosts)
    assert plan.master_addr == "a"
    assert node_rank(plan, {"SLURM_NODEID": "0"}, "b") == (
        1,
        {"NEURON_GLOBAL_TOPOID": "1", "NEURON_GLOBAL_TOPOID0_HOST": "a"},
    )


def test_an_ultraserver_table_missing_a_node_is_refused():
    with pytest.raises(LaunchError, match="1 hosts reported"):
        plan_job(JOB, addresses, "n1", "a 00000000000000aa 0\n")


def test_elsewhere_the_node_rank_is_slurms_node_id():
    assert node_rank(JobPlan(2, "10.0.0.11", FIRST), {"SLURM_NODEID": "1"}, "n2") == (1, {})


def test_one_rank_per_logical_neuron_core_on_trainium(tmp_path):
    root = trainium_host(tmp_path)
    assert procs_per_node({}, root, lambda: 64) == 64
    assert procs_per_node({"TRAIN_PROCS_PER_NODE": "8"}, root, lambda: 64) == 8


def test_one_rank_on_a_cpu_node(tmp_path):
    assert procs_per_node({}, str(tmp_path), lambda: pytest.fail("no neuron-ls on CPU")) == 1


def test_trainium_nodes_get_efa_neuron_and_shared_cache_variables(tmp_path):
    plan = JobPlan(2, "10.0.0.11", FIRST + 10)
    env = node_environment(plan, {"CDK_TRN_SHARED_ROOT": "/fsx"}, trainium_host(tmp_path))
    assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1"
    assert env["MALLOC_ARENA_MAX"] == "128"
    comm = env["NEURON_RT_ROOT_COMM_ID"]
    assert comm == f"10.0.0.11:{neuron_comm_port(FIRST + 10)}"
    assert FIRST <= neuron_comm_port(FIRST + 10) <= LAST
    assert neuron_comm_port(FIRST + 10) != FIRST + 10
    # The acceptance suite's --cache-dir layout under the cluster's compile cache.
    assert env["NEURON_COMPILE_CACHE_URL"] == "/fsx/neuron-compile-cache/neuron"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/fsx/neuron-compile-cache/inductor"


def test_the_jobs_own_settings_win(tmp_path):
    plan = JobPlan(2, "10.0.0.11", FIRST)
    env = node_environment(
        plan,
        {"CDK_TRN_SHARED_ROOT": "/fsx", "NEURON_COMPILE_CACHE_URL": "s3://bucket/cache"},
        trainium_host(tmp_path),
    )
    assert "NEURON_COMPILE_CACHE_URL" not in env


def test_a_cpu_node_without_shared_root_gets_nothing(tmp_path):
    assert node_environment(JobPlan(2, "10.0.0.11", FIRST), {}, str(tmp_path)) == {}


def test_torchrun_gets_the_plan_and_the_script_with_its_arguments():
    command = torchrun_command(
        "/usr/bin/python3", JobPlan(2, "10.0.0.11", 29411), 1, 64, ["train.py", "--steps", "20"]
    )
    assert command == [
        "/usr/bin/python3",
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--node_rank",
        "1",
        "--nproc_per_node",
        "64",
        "--master_addr",
        "10.0.0.11",
        "--master_port",
        "29411",
        "train.py",
        "--steps",
        "20",
    ]


def _launch(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdk_trn_runtime.launch", *argv],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_outside_slurm_the_command_fails_with_a_clear_error(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("")
    done = _launch(str(script), env={})
    assert done.returncode == 2
    assert "launch: error: not in a Slurm job" in done.stderr


def test_a_missing_script_is_named(tmp_path):
    done = _launch("no_such.py", "--steps", "2", env=dict(JOB))
    assert done.returncode == 2
    assert "no training script 'no_such.py'" in done.stderr


def test_the_sbatch_files_call_the_launcher():
    torchrun = (REPO / "examples" / "slurm" / "torchrun.sbatch").read_text()
    train = (REPO / "examples" / "slurm" / "train.sbatch").read_text()
    assert 'exec "${CDK_TRN_PYTHON:-python3}" -m cdk_trn_runtime.launch "$@"' in torchrun
    assert (
        '"${CDK_TRN_PYTHON:-python3}" -m cdk_trn_runtime.launch -m cdk_trn_runtime.train' in train
    )
    assert "torch.distributed.run" not in train + torchrun


def test_the_example_script_imports_nothing_of_cdk_trn():
    text = (REPO / "examples" / "train_fsdp2.py").read_text()
    assert "cdk_trn" not in text
    assert "fully_shard" in text
