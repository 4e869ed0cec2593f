"""The cluster document (one function for construct and twin), what a change of it needs from
slurmctld, the controller's apply step, the cloud TaskProlog and the reaper (with command doubles
for scontrol and aws, named as such)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdk_trn_runtime import contract
from cdk_trn_runtime.slurm import apply, document
from cdk_trn_runtime.slurm.config import cloud_config, render_slurm_conf
from cdk_trn_runtime.slurm.twin import aws_double

SCRIPTS = Path(__file__).resolve().parents[3] / "cdk_trn_runtime" / "slurm" / "scripts"


def _doc(nodes: int = 2, **host: object) -> dict[str, object]:
    return document.cluster_document(
        nodes=nodes,
        shared_root="/fsx",
        node_cpus=192,
        node_real_memory_mib=1000,
        node_features=["trn2.48xlarge", "efa"],
        host=host or None,
    )


@pytest.mark.parametrize(("nodes", "count"), [(1, 9), (2, 10), (8, 16), (9, 18), (64, 128)])
def test_max_node_count_leaves_room_for_as_many_replacements_as_nodes_and_at_least_8(nodes, count):
    assert document.max_node_count(nodes) == count


def test_max_node_count_refuses_no_nodes():
    with pytest.raises(ValueError, match="nodes must be a positive integer, got 0"):
        document.max_node_count(0)


def test_host_keys_default_to_the_cloud_and_unknown_ones_are_refused():
    doc = _doc()
    # Every one is sent but cred_expire, left out while unset (Slurm's default, 120 s).
    assert set(document.HOST_DEFAULTS) - set(doc) == {"cred_expire"}
    assert {k: doc.get(k) for k in document.HOST_DEFAULTS} == document.HOST_DEFAULTS
    assert _doc(slurmd_timeout=10)["slurmd_timeout"] == 10
    with pytest.raises(ValueError, match=r"unknown host keys \['bogus'\]"):
        _doc(bogus=1)


def _conf(doc: dict[str, object]) -> str:
    return render_slurm_conf(cloud_config({**doc, "controller_host": "h", "controller_addr": "a"}))


def test_the_twins_host_keys_reach_slurm_conf():
    conf = _conf(
        _doc(
            script_dir="/twin/scripts",
            munge_socket="/twin/munge.socket.2",
            slurmd_spool_dir="/twin/spool/slurmd-%n",
            slurmd_timeout=10,
            cred_expire=30,
        )
    )
    assert "TaskProlog=/twin/scripts/task_prolog.sh\n" in conf
    assert "Prolog=/twin/scripts/prolog.sh\n" in conf
    # cred_expire: also how long a requeued job waits before it starts again.
    assert "AuthInfo=socket=/twin/munge.socket.2,cred_expire=30\n" in conf
    assert "SlurmdSpoolDir=/twin/spool/slurmd-%n\n" in conf
    assert "SlurmdTimeout=10\n" in conf


def test_a_document_without_host_keys_renders_the_cloud_values():
    doc = {k: v for k, v in _doc().items() if k not in document.HOST_DEFAULTS}
    conf = _conf(doc)
    assert f"TaskProlog={document.IMAGE_SCRIPTS}/task_prolog.sh\n" in conf
    assert "SlurmUser=slurm\n" in conf and "AuthInfo" not in conf


def test_a_resize_restarts_slurmctld_other_changes_reconfigure():
    two, three = _conf(_doc(2)), _conf(_doc(3))
    assert document.change_action(None, two) == "restart"
    assert document.change_action(two, two) == "none"
    # MaxNodeCount changes with the node count: reconfigure would be fatal.
    assert document.change_action(two, three) == "restart"
    assert document.change_action(two, _conf(_doc(2, health_check_interval=60))) == "reconfigure"
    assert document.change_action(two, _conf(_doc(2, slurm_user="root"))) == "restart"


def test_apply_writes_the_conf_and_says_what_slurmctld_needs(tmp_path):
    conf = tmp_path / "slurm.conf"
    assert apply.apply(_doc(2), conf, "ip-10-0-0-5", "cdk-trn-slurmctld") == "restart"
    assert "SlurmctldHost=ip-10-0-0-5(cdk-trn-slurmctld)\n" in conf.read_text()
    assert apply.apply(_doc(2), conf, "ip-10-0-0-5", "cdk-trn-slurmctld") == "none"
    assert (
        apply.apply(_doc(2, kill_wait=10), conf, "ip-10-0-0-5", "cdk-trn-slurmctld")
        == "reconfigure"
    )
    assert "KillWait=10\n" in conf.read_text()
    spec = tmp_path / "doc.json"
    spec.write_text(json.dumps(_doc(4)))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdk_trn_runtime.slurm.apply",
            "--document",
            str(spec),
            "--conf",
            str(conf),
            "--controller-host",
            "ip-10-0-0-5",
            "--controller-addr",
            "cdk-trn-slurmctld",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SCRIPTS.parents[2])},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "restart\n"
    assert "MaxNodeCount=12\n" in conf.read_text()


def test_task_prolog_exports_the_node_environment_verbatim(tmp_path):
    env_file = tmp_path / "slurm-node.env"
    env_file.write_text(
        "CDK_TRN_SHARED_ROOT=/fsx\nCDK_TRN_REGION=us-east-2\nCDK_TRN_JOB_PATH=/opt/env/bin\n"
        "NEURON_COMPILE_CACHE_URL='/fsx/neuron cache'\n"
    )
    # The script beside a contract.sh whose SLURM_NODE_ENV_FILE names the test's file.
    package = tmp_path / "cdk_trn_runtime"
    runnable = package / "slurm" / "scripts" / "task_prolog.sh"
    runnable.parent.mkdir(parents=True)
    runnable.write_text((SCRIPTS / "task_prolog.sh").read_text())
    (package / "contract").mkdir()
    (package / "contract" / "contract.sh").write_text(
        (SCRIPTS.parents[1] / "contract" / "contract.sh")
        .read_text()
        .replace(f"='{contract.SLURM_NODE_ENV_FILE}'", f"='{env_file}'")
    )
    out = subprocess.run(
        ["bash", str(runnable)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    ).stdout
    assert out.splitlines() == [
        "export CDK_TRN_SHARED_ROOT=/fsx",
        "export CDK_TRN_REGION=us-east-2",
        "export PATH=/opt/env/bin:/usr/bin:/bin",
        "export NEURON_COMPILE_CACHE_URL=/fsx/neuron cache",
    ]
    assert "file=$CONTRACT_SLURM_NODE_ENV_FILE\n" in (SCRIPTS / "task_prolog.sh").read_text()


def _reaper_doubles(
    tmp_path: Path, nodes: str, instances: dict[str, int], delete_fails: bool = False
) -> dict[str, str]:
    """scontrol and aws doubles: scontrol shows ``nodes`` and logs deletes; aws answers
    describe-instances with the count ``instances`` gives the filtered address."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "nodes").write_text(nodes)
    scontrol = bin_dir / "scontrol-double"
    scontrol.write_text(
        "#!/bin/bash\n# Test double of scontrol.\n"
        f'if [ "$1" = show ]; then cat {tmp_path}/nodes; exit 0; fi\n'
        f'echo "$*" >> {tmp_path}/deleted\n'
        f"exit {1 if delete_fails else 0}\n"
    )
    aws = bin_dir / "aws"
    cases = "".join(f"  *Values={a}\\ *|*Values={a}) echo {n} ;;\n" for a, n in instances.items())
    aws.write_text(
        "#!/bin/bash\n# Test double of aws (ec2 describe-instances only).\n"
        f'echo "$*" >> {tmp_path}/aws-calls\n'
        'case "$*" in\n' + cases + "  *) exit 255 ;;\nesac\n"
    )
    for f in (scontrol, aws):
        f.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CDK_TRN_SCONTROL": str(scontrol),
        "CDK_TRN_REGION": "us-east-2",
        "CDK_TRN_CLUSTER": "c1",
    }


NODES = (
    "NodeName=ip-10-0-0-1 State=DOWN+DYNAMIC_NORM+NOT_RESPONDING NodeAddr=10.0.0.1 Port=0\n"
    "NodeName=ip-10-0-0-2 State=IDLE+DYNAMIC_NORM NodeAddr=10.0.0.2 Port=0\n"
    "NodeName=ip-10-0-0-3 State=DOWN+DYNAMIC_NORM NodeAddr=10.0.0.3 Port=0\n"
    "NodeName=ip-10-0-0-4 State=IDLE+DYNAMIC_NORM+NOT_RESPONDING NodeAddr=10.0.0.4 Port=0\n"
    "NodeName=static1 State=DOWN NodeAddr=10.0.0.9 Port=0\n"
)


def test_reaper_deletes_dead_dynamic_nodes_whose_instance_is_gone_only(tmp_path):
    # 10.0.0.1 gone; 10.0.0.3's instance still runs; EC2 does not answer for 10.0.0.4.
    env = _reaper_doubles(tmp_path, NODES, {"10.0.0.1": 0, "10.0.0.3": 1})
    done = subprocess.run(
        ["bash", str(SCRIPTS / "reaper.sh")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "deleted").read_text() == "delete nodename=ip-10-0-0-1\n"
    assert "EC2 did not answer for ip-10-0-0-4" in done.stderr
    calls = (tmp_path / "aws-calls").read_text()
    assert "Name=tag:cdk-trn:cluster,Values=c1" in calls and "--region us-east-2" in calls
    assert "10.0.0.2" not in calls and "10.0.0.9" not in calls


def test_reaper_says_when_slurm_still_holds_a_dead_node(tmp_path):
    env = _reaper_doubles(tmp_path, NODES, {"10.0.0.1": 0, "10.0.0.3": 1}, delete_fails=True)
    done = subprocess.run(
        ["bash", str(SCRIPTS / "reaper.sh")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0
    assert "ip-10-0-0-1 (10.0.0.1) is gone but Slurm still holds it" in done.stderr


def test_aws_double_answers_from_live_instances_and_refuses_other_calls(tmp_path, capsys):
    twin = {
        "cluster": "c1",
        "instances": {
            "a": {"address": "10.0.0.1", "holder": os.getpid()},
            "b": {"address": "10.0.0.2", "holder": 999_999_999},
        },
    }
    (tmp_path / "twin.json").write_text(json.dumps(twin))
    os.environ["CDK_TRN_TWIN_DIR"] = str(tmp_path)
    try:

        def count(address: str) -> str:
            argv = [
                "ec2",
                "describe-instances",
                "--region",
                "r",
                "--filters",
                f"Name=private-ip-address,Values={address}",
                "Name=tag:cdk-trn:cluster,Values=c1",
                "--query",
                "length(Reservations[].Instances[])",
                "--output",
                "text",
            ]
            assert aws_double.main(argv) == 0
            return capsys.readouterr().out.strip()

        assert count("10.0.0.1") == "1"
        assert count("10.0.0.2") == "0"  # its holder is gone: terminated
        assert aws_double.main(["s3", "ls"]) == 254
        assert "unsupported call: aws s3 ls" in capsys.readouterr().err
    finally:
        del os.environ["CDK_TRN_TWIN_DIR"]
