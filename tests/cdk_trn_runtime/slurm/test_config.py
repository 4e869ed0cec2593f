"""The slurm.conf generator: what the cloud and the local cluster rely on, and refused input."""

from __future__ import annotations

import dataclasses

import pytest

from cdk_trn_runtime import contract
from cdk_trn_runtime.slurm.config import (
    DynamicNodes,
    SlurmConfig,
    StaticNode,
    dynamic_node_conf,
    render_cgroup_conf,
    render_slurm_conf,
)


def _lines(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, value)
    return out


def cloud(**overrides: object) -> SlurmConfig:
    values: dict[str, object] = dict(
        controller_host="controller",
        shared_root="/fsx",
        cpus=192,
        real_memory_mb=2_000_000,
        dynamic=DynamicNodes(max_node_count=64),
        configless=True,
        prolog="/opt/cdk-trn/slurm/prolog.sh",
        epilog="/opt/cdk-trn/slurm/epilog.sh",
        health_check_program="/opt/cdk-trn/slurm/healthcheck.sh",
    )
    values.update(overrides)
    return SlurmConfig(**values)  # type: ignore[arg-type]


def local(**overrides: object) -> SlurmConfig:
    values: dict[str, object] = dict(
        controller_host="vm",
        controller_address="127.0.0.1",
        shared_root="/tmp/x/shared",
        cpus=2,
        real_memory_mb=1024,
        nodes=(
            StaticNode("n1", hostname="vm", address="127.0.0.1", port=17001),
            StaticNode("n2", hostname="vm", address="127.0.0.1", port=17002),
        ),
        features=("local",),
        slurmd_spool_dir="/tmp/x/spool/slurmd-%n",
        proctrack="proctrack/linuxproc",
        task_plugin="task/none",
        slurmd_timeout=10,
    )
    values.update(overrides)
    return SlurmConfig(**values)  # type: ignore[arg-type]


def test_whole_node_scheduling_with_requeue_and_return_to_service():
    conf = render_slurm_conf(cloud())
    keys = _lines(conf)
    assert keys["SelectType"] == "select/cons_tres"
    assert "OverSubscribe=EXCLUSIVE" in conf.splitlines()[-1]
    assert keys["ReturnToService"] == "1"
    assert keys["JobRequeue"] == "1"
    assert "nohold_on_prolog_fail" in keys["SchedulerParameters"]


def test_state_and_job_completion_log_live_on_the_shared_file_system():
    keys = _lines(render_slurm_conf(cloud()))
    assert keys["StateSaveLocation"] == f"/fsx/{contract.SHARED_SLURM_STATE}"
    assert keys["JobCompType"] == "jobcomp/filetxt"
    assert keys["JobCompLoc"] == f"/fsx/{contract.SHARED_JOB_LOGS}/jobcomp.log"


def test_cloud_uses_dynamic_configless_nodes_and_parallelcluster_timeouts():
    conf = render_slurm_conf(cloud())
    keys = _lines(conf)
    assert keys["MaxNodeCount"] == "64"
    assert keys["SlurmctldParameters"] == "enable_configless"
    assert keys["SlurmdTimeout"] == "180"
    assert keys["SlurmctldPort"] == str(contract.SLURMCTLD_PORT)
    assert "PartitionName=trn Nodes=ALL " in conf
    assert "NodeName=" not in conf


def test_node_scripts_are_wired_with_alloc_prolog():
    keys = _lines(render_slurm_conf(cloud()))
    assert keys["PrologFlags"] == "Alloc"
    assert keys["Prolog"] == "/opt/cdk-trn/slurm/prolog.sh"
    assert keys["Epilog"] == "/opt/cdk-trn/slurm/epilog.sh"
    assert keys["HealthCheckProgram"] == "/opt/cdk-trn/slurm/healthcheck.sh"
    assert keys["HealthCheckInterval"] == "300"


def test_local_nodes_share_a_host_on_their_own_ports_with_short_timeout():
    conf = render_slurm_conf(local())
    assert (
        "NodeName=n1 NodeHostname=vm NodeAddr=127.0.0.1 Port=17001 CPUs=2 RealMemory=1024 "
        "Feature=local State=UNKNOWN" in conf
    )
    assert "NodeName=n2 NodeHostname=vm NodeAddr=127.0.0.1 Port=17002" in conf
    keys = _lines(conf)
    assert keys["SlurmctldHost"] == "vm(127.0.0.1)"
    assert keys["SlurmdTimeout"] == "10"
    assert keys["MessageTimeout"] == "10"
    assert keys["SlurmdSpoolDir"] == "/tmp/x/spool/slurmd-%n"
    assert keys["ProctrackType"] == "proctrack/linuxproc"
    assert "PartitionName=trn Nodes=n1,n2 " in conf


def test_munge_socket_goes_to_auth_info():
    keys = _lines(render_slurm_conf(local(munge_socket="/tmp/x/munge/munge.socket.2")))
    assert keys["AuthInfo"] == "socket=/tmp/x/munge/munge.socket.2"


def test_cgroup_conf_only_with_cgroup_plugins():
    assert "ConstrainCores=yes" in (render_cgroup_conf(cloud()) or "")
    assert render_cgroup_conf(local()) is None


def test_dynamic_node_conf_carries_features():
    conf = dynamic_node_conf(192, 2_000_000, ("trn2.48xlarge", "efa", "us-abc123"))
    assert conf == "CPUs=192 RealMemory=2000000 Feature=trn2.48xlarge,efa,us-abc123"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cluster_name": "bad name"}, "cluster_name must be"),
        ({"controller_host": "host\nSlurmUser=root"}, "controller_host must be"),
        ({"prolog": "relative/prolog.sh"}, "prolog must be an absolute path"),
        ({"prolog": "/opt/x #comment"}, "prolog must be an absolute path"),
        ({"shared_root": "/fsx/../etc"}, "shared_root must be"),
        ({"features": ("efa,x",)}, "features must be"),
        ({"cpus": 0}, "cpus must be an integer from 1"),
        ({"slurmd_timeout": True}, "slurmd_timeout must be an integer"),
        ({"auth": "auth/none"}, "auth must be auth/munge or auth/slurm"),
        ({"configless": False}, "set configless=True"),
        ({"nodes": (StaticNode("n1"),)}, "exactly one of them"),
        ({"dynamic": DynamicNodes(0)}, "dynamic.max_node_count must be"),
        ({"extra_scheduler_parameters": ("a b",)}, "extra_scheduler_parameters must be"),
    ],
)
def test_bad_input_is_refused_with_the_field_named(change, message):
    with pytest.raises(ValueError, match=message):
        cloud(**change)


def test_two_nodes_on_one_address_and_port_are_refused():
    nodes = (StaticNode("n1", address="127.0.0.1"), StaticNode("n2", address="127.0.0.1"))
    with pytest.raises(ValueError, match="need a port each"):
        local(nodes=nodes)


def test_duplicate_node_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        local(nodes=(StaticNode("n1", port=1), StaticNode("n1", port=2)))


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        cloud().cpus = 3  # type: ignore[misc]
