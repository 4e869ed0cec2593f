"""The local twin (``make local-cluster``, ``cdk_trn_runtime.slurm.local``): a controller and
dynamic configless nodes, each in namespaces of its own on the twin's bridge, run the cloud's
configuration, scripts and reaper; jobs of uid 2000 get the node environment through the cloud's
TaskProlog; a lost node's training job is requeued and resumes on the replacement; resizing goes
through the cluster document; a controller restart keeps running jobs; two twins coexist.

One twin for the whole module (``cluster`` fixture, tests/cdk_trn_runtime/slurm/twin/harness.py),
removed with ``local down`` and checked to have left no process, namespace, link or directory.
Needs root and the packages slurm-wlm, munge and iproute2 (``.ci/run`` installs them).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from cdk_trn_runtime.slurm.document import max_node_count
from cdk_trn_runtime.slurm.twin import net
from cdk_trn_runtime.slurm.twin.cluster import _alive
from cdk_trn_runtime.train import checkpoint
from tests.cdk_trn_runtime.slurm.twin.harness import (
    NEEDS_ROOT_AND_SLURM,
    TRAIN_SBATCH,
    Cluster,
    local_cluster,
    wait,
)

pytestmark = NEEDS_ROOT_AND_SLURM

SCRIPTS = Path(__file__).resolve().parents[4] / "cdk_trn_runtime" / "slurm" / "scripts"
ETC_HOSTS = hashlib.sha256(Path("/etc/hosts").read_bytes()).hexdigest()


def _nodes_show(cluster: Cluster) -> dict[str, str]:
    out = cluster.run("scontrol", "show", "node", "--oneliner").stdout
    return {line.split()[0].removeprefix("NodeName="): line for line in out.splitlines() if line}


def _field(line: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", line)
    return match.group(1) if match else ""


def _job(cluster: Cluster, job: str, name: str) -> str:
    return _field(cluster.run("scontrol", "show", "job", job).stdout, name)


def _usable(cluster: Cluster, count: int) -> bool:
    out = cluster.run("sinfo", "-h", "-N", "-o", "%N %t").stdout.split("\n")[:-1]
    return len(out) == count and all(line.split()[1] in ("idle", "alloc", "mix") for line in out)


def _host_addresses() -> str:
    return net.run("ip", "-4", "-o", "addr", "show").stdout


def test_nodes_are_dynamic_named_by_ec2_rule_on_their_own_addresses(cluster):
    nodes = _nodes_show(cluster)
    assert len(nodes) == 2, nodes
    host = _host_addresses()
    twin = cluster.twin()
    for name, line in nodes.items():
        address = _field(line, "NodeAddr")
        assert name == "ip-" + address.replace(".", "-")
        assert "DYNAMIC_NORM" in _field(line, "State") and "IDLE" in _field(line, "State")
        # The address is the node's, inside its namespace, not the host's.
        assert f" {address}/" not in host
        octet = int(address.rsplit(".", 1)[1])
        inside = net.run(
            "ip", "netns", "exec", net.netns_name(twin.tid, octet), "ip", "-4", "-o", "addr"
        )
        assert f" {address}/24" in inside.stdout
        # Its own host name (UTS namespace): what the node's own tasks see.
    result = cluster.run(
        "srun", "-N2", "--ntasks-per-node=1", "bash", "-c", 'echo "$(hostname) $SLURMD_NODENAME"'
    )
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split("\n")[:-1]) == sorted(f"{n} {n}" for n in nodes)


def test_configless_with_headroom_and_the_cloud_scripts(cluster):
    conf = cluster.layout.conf.read_text()
    assert "SlurmctldParameters=enable_configless" in conf
    assert "NodeName=" not in conf
    count = int(_field(conf, "MaxNodeCount"))
    assert count == max_node_count(2) and count > 2
    assert re.search(r"^PartitionName=\S+ .*MaxNodes=2\b", conf, re.MULTILINE)
    for key, script in (
        ("Prolog", "prolog.sh"),
        ("Epilog", "epilog.sh"),
        ("TaskProlog", "task_prolog.sh"),
        ("HealthCheckProgram", "healthcheck.sh"),
    ):
        assert f"\n{key}={SCRIPTS / script}\n" in conf
    # Nodes keep no configuration of their own: slurmd -Z fetched it from the controller.
    for name, instance in cluster.twin().nodes().items():
        cmdline = Path(f"/proc/{instance['pids']['slurmd']}/cmdline").read_bytes().split(b"\0")
        assert b"-Z" in cmdline and b"--conf-server" in cmdline, cmdline
        assert (cluster.layout.spool / f"slurmd-{name}" / "conf-cache" / "slurm.conf").is_file()
    # Nothing shared was touched.
    assert hashlib.sha256(Path("/etc/hosts").read_bytes()).hexdigest() == ETC_HOSTS
    assert "169.254.169.254" not in _host_addresses()


def test_jobs_of_uid_2000_see_the_node_environment(cluster):
    submit = cluster.as_job_user(
        "sbatch",
        "-N1",
        "--wait",
        "--parsable",
        f"--chdir={cluster.job_dir}",
        "--wrap",
        'echo "uid=$(id -u) shared=$CDK_TRN_SHARED_ROOT cache=$NEURON_COMPILE_CACHE_URL" '
        '"python=$(command -v python) "'
        '"torch=$(python -c "import torch; print(torch.__version__)" 2>/dev/null)"',
    )
    result = subprocess.run(
        submit, env=cluster.env, capture_output=True, text=True, timeout=300, cwd="/"
    )
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    out = (cluster.job_dir / f"slurm-{job}.out").read_text()
    shared = cluster.layout.shared
    assert f"uid=2000 shared={shared} cache={shared / 'neuron-compile-cache'} " in out, out
    assert f"python={cluster.layout.jobenv / 'bin' / 'python'} torch=2." in out, out
    # root's --uid=2000 runs as uid 2000 too.
    result = cluster.run(
        "sbatch",
        "--uid=2000",
        "-N1",
        "--wait",
        "--parsable",
        f"--chdir={cluster.job_dir}",
        "--wrap",
        "id -u",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    assert (cluster.job_dir / f"slurm-{job}.out").read_text() == "2000\n"


def test_missing_neuron_device_drains_the_node(cluster):
    name = cluster.nodes()[0]
    device = cluster.layout.device_root(name) / "dev" / "neuron1"
    device.unlink()
    try:
        wait(f"{name} drained", lambda: "drain" in cluster.node_state(name), timeout=60)
        assert cluster.node_reason(name) == "cdk-trn: neuron devices 1 of 2"
    finally:
        device.touch()
        cluster.run("scontrol", "update", f"nodename={name}", "state=resume")
    wait(f"{name} idle again", lambda: cluster.node_state(name) == "idle", timeout=60)


def test_a_controller_restart_keeps_a_running_job(cluster):
    marker = cluster.job_dir / "restart-marker"
    result = cluster.run(
        "sbatch",
        "-N1",
        "--parsable",
        f"--chdir={cluster.job_dir}",
        "--wrap",
        f"while [ ! -e {marker} ]; do sleep 0.5; done; echo finished",
    )
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    wait("the job running", lambda: _job(cluster, job, "JobState") == "RUNNING", timeout=60)
    old = cluster.twin().instances[cluster.twin().state["controller"]]["pids"]["slurmctld"]
    restarted = cluster.local("restart-controller", timeout=120)
    assert restarted.returncode == 0, restarted.stderr
    new = cluster.twin().instances[cluster.twin().state["controller"]]["pids"]["slurmctld"]
    assert new != old and not _alive(old)
    assert _job(cluster, job, "JobState") == "RUNNING"
    marker.touch()
    wait("the job completed", lambda: _job(cluster, job, "JobState") == "COMPLETED", timeout=60)
    assert (cluster.job_dir / f"slurm-{job}.out").read_text() == "finished\n"
    assert _usable(cluster, 2)


def test_resize_goes_through_the_cluster_document(cluster):
    cluster.up("--nodes", "3")
    assert _usable(cluster, 3), cluster.run("sinfo", "-N").stdout
    conf = cluster.layout.conf.read_text()
    assert int(_field(conf, "MaxNodeCount")) == max_node_count(3)
    assert re.search(r"^PartitionName=\S+ .*MaxNodes=3\b", conf, re.MULTILINE)
    result = cluster.run("srun", "-N3", "--ntasks-per-node=1", "hostname", timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == cluster.nodes()
    cluster.up("--nodes", "2")
    assert _usable(cluster, 2), cluster.run("sinfo", "-N").stdout
    assert int(_field(cluster.layout.conf.read_text(), "MaxNodeCount")) == max_node_count(2)
    # up without NODES keeps the count.
    cluster.up()
    assert _usable(cluster, 2)


def test_training_survives_the_loss_of_one_of_its_nodes(cluster):
    # A step a second: the node is lost right after the first checkpoint (step 4), with 20 steps
    # of margin before the job could end by itself.
    steps, every = 24, 4
    workdir = cluster.job_dir
    checkpoints = cluster.layout.shared / "checkpoints" / "test-replace"
    env = {**cluster.train_env(steps, every, checkpoints), "TRAIN_STEP_SLEEP": "1"}
    submit = cluster.as_job_user(
        "sbatch", "-N2", "--parsable", f"--chdir={workdir}", str(TRAIN_SBATCH)
    )
    result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    log = workdir / f"train-{job}.out"

    def output() -> str:
        return log.read_text() if log.exists() else "(no log)"

    try:
        wait("the first checkpoint", lambda: checkpoint.latest(checkpoints) is not None, 300)
        assert _job(cluster, job, "JobState") == "RUNNING", output()
        lost = sorted(
            cluster.run(
                "scontrol", "show", "hostnames", _job(cluster, job, "NodeList")
            ).stdout.split()
        )[-1]
        replaced = cluster.local("replace", "--node", lost, timeout=300)
        assert replaced.returncode == 0, replaced.stderr
        replacement = replaced.stdout.removeprefix("replacement: ").strip()
        assert re.fullmatch(r"ip-\d+-\d+-\d+-\d+", replacement) and replacement != lost
        wait("the job requeued", lambda: _job(cluster, job, "Restarts") == "1", timeout=120)
        wait(
            "the job completed",
            lambda: _job(cluster, job, "JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
            timeout=600,
        )
        text = output()
        assert _job(cluster, job, "JobState") == "COMPLETED", text
    finally:
        if _job(cluster, job, "JobState") not in ("COMPLETED", "FAILED", "CANCELLED", ""):
            cluster.run("scancel", job)
    assert (
        f"train.sbatch: job={job} restart=0" in text
        and f"train.sbatch: job={job} restart=1" in text
    )
    resumed = re.findall(r"^train: resumed step=(\d+) from=(\S+)$", text, re.MULTILINE)
    assert len(resumed) == 1 and int(resumed[0][0]) % every == 0 and int(resumed[0][0]) > 0, text
    assert f"train: done step={steps} " in text
    assert text.index("train: resumed") < text.index("train: done")
    # The lost node's record is reaped: exactly the configured nodes, all usable.
    wait("exactly two usable nodes, no stale record", lambda: _usable(cluster, 2), timeout=300)
    assert lost not in cluster.nodes() and replacement in cluster.nodes()


def test_a_second_twin_booted_by_the_cloud_boot_code_coexists(cluster):
    """The second twin's node runs cdk_trn_runtime/node/node_bootstrap.sh unchanged, with the
    docker, systemctl and aws command doubles and the metadata double in its namespace; its
    teardown checks that down left nothing behind."""
    with local_cluster("cdk-trn-second-twin-", "--nodes", "1", "--boot", "cloud") as second:
        first, other = cluster.twin(), second.twin()
        assert first.state["subnet"] != other.state["subnet"]
        assert set(cluster.nodes()).isdisjoint(second.nodes())
        assert _usable(second, 1) and _usable(cluster, 2)
        [name] = second.nodes()
        console = (second.layout.instance(name) / "console").read_text()
        assert f"slurmd registered as {name} (twin,cpu)" in console and "node ready" in console
        instance_id = other.instances[name]["instance_id"]
        signals = (second.root / "signals").read_text()
        assert f'"instance": "{instance_id}", "status": "SUCCESS"' in signals
        # The node's environment file, written by the cloud's boot code, reaches jobs.
        result = second.run(
            "srun",
            "-N1",
            "bash",
            "-c",
            'echo "$(hostname) $CDK_TRN_SHARED_ROOT $CDK_TRN_INSTANCE_ID"',
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{name} {second.layout.shared} {instance_id}\n"
    # The first twin still runs.
    assert _usable(cluster, 2)
