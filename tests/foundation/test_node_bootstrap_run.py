"""Runs node_bootstrap.sh as the cluster renders it, on a fake node: a temp directory stands in
for / (the script's tests-only NODE_BOOTSTRAP_TEST_ROOT) and the command doubles in
``node_command_doubles/`` stand in for curl (IMDSv2), aws, dnf, systemctl, mount and the rest.
Every double appends its argv to a call log the tests read."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2

from cdk_trn.cluster import TrainiumCluster
from cdk_trn.machine_image import NeuronMachineImage, NodeOs
from cdk_trn_runtime.contract import RENDEZVOUS_PORTS
from tests.foundation.stacks_for_tests import cluster_stack

DOUBLES = Path(__file__).parent / "node_command_doubles"
INSTANCE_ID = "i-0123456789abcdef0"
SERVER_ID = "4b1d2c3e5f607182"
#: dnf in the isolated subnet: AL2023's own repository only (the DLAMI's are unreachable).
AL2023_ONLY = ["install", "-y", "--disablerepo=*", "--enablerepo=amazonlinux"]
LUSTRE_TOOLS = ("mount.lustre", "lctl", "lnetctl")
#: Every `docker exec` of the boot runs as root in a root-owned directory (issue 20).
ROOT_IN_ROOT_DIR = ["-u", "root", "-w", "/"]


@dataclass
class FileSystemStandIn:
    """What TrainiumCluster needs of a file system, without an FSx resource behind it."""

    dns_name: str = "fs-0123456789abcdef0.fsx.us-east-2.amazonaws.com"
    mount_name: str = "abcdefgh"
    mount_path: str = "/fsx"
    efa_enabled: bool = False
    clients: list[ec2.IConnectable] = field(default_factory=list)

    def allow_clients(self, clients: ec2.IConnectable) -> None:
        self.clients.append(clients)


@dataclass
class Rendered:
    user_data: str
    stack_name: str
    logical_id: str


def _render(cluster: TrainiumCluster) -> Rendered:
    stack = cdk.Stack.of(cluster)
    return Rendered(
        user_data=cluster._user_data(),
        stack_name=stack.stack_name,
        logical_id=stack.get_logical_id(cluster.auto_scaling_group),
    )


@pytest.fixture(scope="module")
def trn2() -> Rendered:
    return _render(cluster_stack("trn2.48xlarge")[1])


@pytest.fixture(scope="module")
def trn2_with_fsx() -> Rendered:
    return _render(cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())[1])


@pytest.fixture(scope="module")
def trn2_with_efa_fsx() -> Rendered:
    fs = FileSystemStandIn(efa_enabled=True)
    return _render(cluster_stack("trn2.48xlarge", file_system=fs)[1])


@pytest.fixture(scope="module")
def trn2_ubuntu() -> Rendered:
    image = NeuronMachineImage.from_ami_id("ami-0123456789abcdef0", NodeOs.UBUNTU_24_04)
    return _render(cluster_stack("trn2.48xlarge", machine_image=image)[1])


@pytest.fixture(scope="module")
def trn2u() -> Rendered:
    return _render(cluster_stack("trn2u.48xlarge")[1])


@dataclass
class BootResult:
    returncode: int
    output: str
    calls: list[list[str]]
    root: Path

    def calls_to(self, command: str) -> list[list[str]]:
        return [c[1:] for c in self.calls if c[0] == command]

    def signals(self) -> list[list[str]]:
        return [c for c in self.calls_to("aws") if c[:2] == ["cloudformation", "signal-resource"]]

    def statuses(self) -> list[str]:
        return [s[s.index("--status") + 1] for s in self.signals()]

    def messages(self) -> str:
        return "\n".join(" ".join(c) for c in self.calls_to("logger-message"))

    def environment(self) -> dict[str, str]:
        text = (self.root / "etc/cdk-trn/env").read_text()
        return dict(line.split("=", 1) for line in text.splitlines())


class FakeNode:
    """A temp root with Trainium-like /dev and /sys entries, and the command doubles on PATH."""

    def __init__(self, base: Path) -> None:
        self.root = base / "root"
        self.bin = base / "bin"
        self.log = base / "calls.log"
        shutil.copytree(DOUBLES, self.bin)
        for double in self.bin.iterdir():
            double.chmod(0o755)
        for d in ("dev", "etc/profile.d", "sys/class/infiniband", "sys/class/neuron_device"):
            (self.root / d).mkdir(parents=True)
        (self.root / "etc/fstab").write_text("UUID=0000 / xfs defaults 0 0\n")
        self.neuron_devices(16)
        self.efa_devices(16)

    def neuron_devices(self, n: int) -> None:
        for old in (self.root / "dev").glob("neuron*"):
            old.unlink()
        for i in range(n):
            (self.root / "dev" / f"neuron{i}").touch()

    def efa_devices(self, n: int) -> None:
        ib = self.root / "sys/class/infiniband"
        shutil.rmtree(ib)
        for i in range(n):
            (ib / f"rdmap{i}s0").mkdir(parents=True)
        ib.mkdir(exist_ok=True)

    def ultraserver_ids(self, server: str | None, node: str | None, size: int = 4) -> None:
        sysfs = self.root / "sys/class/neuron_device"
        if server is not None:
            (sysfs / f"server_id_{size}").write_text(server + "\n")
        if node is not None:
            (sysfs / f"node_id_{size}").write_text(node + "\n")

    def boot(self, rendered: Rendered, **env: str) -> BootResult:
        script = self.root.parent / "user-data.sh"
        script.write_text(rendered.user_data)
        self.log.write_text("")
        run_env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.root),
            "NODE_BOOTSTRAP_TEST_ROOT": str(self.root),
            "NODE_BOOTSTRAP_TEST_WAIT_SECONDS": "0",
            "DOUBLES_LOG": str(self.log),
            **env,
        }
        result = subprocess.run(
            ["bash", str(script)],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        calls = [line.split() for line in self.log.read_text().splitlines() if line.strip()]
        return BootResult(result.returncode, result.stdout + result.stderr, calls, self.root)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[FakeNode]:
    yield FakeNode(tmp_path)


def _signal(rendered: Rendered, status: str) -> list[str]:
    return [
        "cloudformation",
        "signal-resource",
        "--region",
        "us-east-2",
        "--stack-name",
        rendered.stack_name,
        "--logical-resource-id",
        rendered.logical_id,
        "--unique-id",
        INSTANCE_ID,
        "--status",
        status,
    ]


# --- healthy nodes --------------------------------------------------------------------------


def test_healthy_trn2_node_signals_success_once_with_its_instance_id(node, trn2):
    result = node.boot(trn2)
    assert result.returncode == 0, result.output
    assert result.signals() == [_signal(trn2, "SUCCESS")]


def test_healthy_node_writes_efa_and_logical_nc_environment(node, trn2):
    result = node.boot(trn2)
    assert result.returncode == 0, result.output
    env = result.environment()
    assert env["FI_PROVIDER"] == "efa"
    assert env["FI_EFA_USE_DEVICE_RDMA"] == "1"
    assert env["NEURON_LOGICAL_NC_CONFIG"] == "2"
    assert env["NEURON_COMPILE_CACHE_URL"] == "/var/cache/neuron-compile-cache"
    assert "NEURON_RT_ULTRASERVER_MODE" not in env
    # The Slurm health check's replacement request names this instance in its region.
    assert env["CDK_TRN_REPLACE_ON_HARDWARE_FAILURE"] == "1"
    assert env["CDK_TRN_INSTANCE_ID"] == INSTANCE_ID
    assert env["CDK_TRN_REGION"] == "us-east-2"
    assert (node.root / "var/cache/neuron-compile-cache").is_dir()
    profile = (node.root / "etc/profile.d/cdk-trn-env.sh").read_text()
    assert f". {node.root}/etc/cdk-trn/env" in profile


def test_healthy_node_reserves_the_rendezvous_ports_now_and_across_reboots(node, trn2):
    result = node.boot(trn2)
    assert result.returncode == 0, result.output
    ports = "{}-{}".format(*RENDEZVOUS_PORTS)
    assert ["-q", "-w", f"net.ipv4.ip_local_reserved_ports={ports}"] in result.calls_to("sysctl")
    persisted = (node.root / "etc/sysctl.d/90-cdk-trn-rendezvous.conf").read_text()
    assert persisted.strip() == f"net.ipv4.ip_local_reserved_ports = {ports}"


def test_node_that_cannot_reserve_the_rendezvous_ports_signals_failure(node, trn2):
    result = node.boot(trn2, DOUBLES_FAILING="sysctl")
    assert result.statuses() == ["FAILURE"]
    assert "could not reserve the rendezvous ports" in result.messages()


def test_healthy_node_starts_docker_and_checks_the_efa_provider(node, trn2):
    result = node.boot(trn2)
    assert ["enable", "--now", "docker"] in result.calls_to("systemctl")
    assert result.calls_to("fi_info") == [["-p", "efa", "-t", "FI_EP_RDM"]]
    assert result.calls_to("dnf") == []


def test_node_without_fsx_neither_mounts_nor_touches_fstab(node, trn2):
    result = node.boot(trn2)
    assert result.calls_to("mount") == []
    assert (node.root / "etc/fstab").read_text() == "UUID=0000 / xfs defaults 0 0\n"


def test_bootstrap_log_reaches_the_console(node, trn2):
    node.boot(trn2)
    console = (node.root / "dev/console").read_text()
    assert f"bootstrapping {INSTANCE_ID} for cluster test-cluster" in console
    assert "node ready" in console


# --- failed checks --------------------------------------------------------------------------


def test_missing_neuron_device_signals_failure_and_never_success(node, trn2):
    node.neuron_devices(15)
    result = node.boot(trn2)
    assert result.returncode == 1
    assert result.signals() == [_signal(trn2, "FAILURE")]
    assert "expected 16 Neuron devices (/dev/neuron*), found 15" in result.messages()


def test_wrong_efa_device_count_signals_failure(node, trn2):
    node.efa_devices(8)
    result = node.boot(trn2)
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert "expected 16 EFA devices (/sys/class/infiniband), found 8" in result.messages()


def test_missing_libfabric_efa_provider_signals_failure(node, trn2):
    result = node.boot(trn2, DOUBLES_FAILING="fi_info")
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert "libfabric does not offer the efa provider" in result.messages()


def test_docker_that_does_not_start_signals_failure(node, trn2):
    result = node.boot(trn2, DOUBLES_FAILING="systemctl")
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert "docker did not start" in result.messages()


def test_docker_missing_from_the_ami_is_installed_from_the_os_repositories(node, trn2):
    (node.bin / "docker").unlink()
    result = node.boot(trn2)
    assert result.returncode == 0, result.output
    assert result.calls_to("dnf") == [AL2023_ONLY + ["docker"]]


def test_docker_missing_from_an_ubuntu_ami_is_installed_as_docker_io(node, trn2_ubuntu):
    (node.bin / "docker").unlink()
    result = node.boot(trn2_ubuntu)
    assert result.returncode == 0, result.output
    assert result.calls_to("apt-get") == [["install", "-y", "--no-download", "docker.io"]]


def test_imds_refusing_the_token_sends_no_signal_with_a_bogus_instance_id(node, trn2):
    result = node.boot(trn2, IMDS_DOUBLE_REJECTS="1")
    assert result.returncode != 0
    assert result.signals() == []


# --- FSx for Lustre -------------------------------------------------------------------------


def test_fsx_node_adds_an_automount_fstab_line_mounts_and_signals_success(node, trn2_with_fsx):
    result = node.boot(trn2_with_fsx)
    assert result.returncode == 0, result.output
    mnt = f"{node.root}/fsx"
    fstab = (node.root / "etc/fstab").read_text().splitlines()
    assert fstab[1:] == [
        f"fs-0123456789abcdef0.fsx.us-east-2.amazonaws.com@tcp:/abcdefgh {mnt} lustre "
        "relatime,flock,_netdev,x-systemd.automount,x-systemd.requires=network-online.target 0 0"
    ]
    assert result.calls_to("mount") == [[mnt]]
    assert ["daemon-reload"] in result.calls_to("systemctl")
    assert result.statuses() == ["SUCCESS"]
    assert result.environment()["NEURON_COMPILE_CACHE_URL"] == "/fsx/neuron-compile-cache"
    assert (node.root / "fsx/neuron-compile-cache").is_dir()


def test_fsx_fstab_line_is_not_duplicated_on_a_second_boot(node, trn2_with_fsx):
    node.boot(trn2_with_fsx)
    result = node.boot(trn2_with_fsx)
    assert result.returncode == 0, result.output
    assert len((node.root / "etc/fstab").read_text().splitlines()) == 2


def test_fsx_mount_that_keeps_failing_signals_failure_after_twelve_tries(node, trn2_with_fsx):
    result = node.boot(trn2_with_fsx, DOUBLES_FAILING="mount")
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert len(result.calls_to("mount")) == 12
    assert result.calls_to("sleep") == [["10"]] * 11
    assert "could not mount fs-0123456789abcdef0.fsx" in result.messages()


def test_fsx_node_without_lustre_client_installs_it(node, trn2_with_fsx):
    result = node.boot(trn2_with_fsx, DOUBLES_FAILING="modinfo")
    assert result.returncode == 0, result.output
    assert result.calls_to("dnf") == [AL2023_ONLY + ["lustre-client"]]


def test_fsx_node_with_the_lustre_module_but_not_its_tools_installs_lustre_client(
    node, trn2_with_fsx
):
    # AL2023: `modinfo lustre` succeeds (the module is in the kernel), the tools are missing.
    for tool in LUSTRE_TOOLS:
        (node.bin / tool).unlink()
    result = node.boot(trn2_with_fsx)
    assert result.returncode == 0, result.output
    assert result.calls_to("dnf") == [AL2023_ONLY + ["lustre-client"]]
    assert result.statuses() == ["SUCCESS"]


def test_fsx_node_with_the_lustre_client_installs_nothing(node, trn2_with_fsx):
    result = node.boot(trn2_with_fsx)
    assert result.returncode == 0, result.output
    assert result.calls_to("dnf") == []


def test_fsx_node_whose_lustre_client_lacks_a_tool_after_install_signals_failure(
    node, trn2_with_fsx
):
    (node.bin / "lctl").unlink()
    # A dnf that "succeeds" without installing anything (a repository with an empty package).
    (node.bin / "dnf").write_text('#!/bin/bash\n. "$(dirname "$0")/_record.sh"\n')
    result = node.boot(trn2_with_fsx)
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert "mount.lustre, lctl or lnetctl is missing" in result.messages()
    assert result.calls_to("mount") == []


def test_fsx_node_whose_lustre_client_cannot_be_installed_signals_failure(node, trn2_with_fsx):
    result = node.boot(trn2_with_fsx, DOUBLES_FAILING="modinfo dnf")
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert result.calls_to("mount") == []


def test_efa_fsx_configures_lnet_on_every_efa_device_before_mounting(node, trn2_with_efa_fsx):
    result = node.boot(trn2_with_efa_fsx)
    assert result.returncode == 0, result.output
    assert ["kefalnd", "ipif_name=ens32"] in result.calls_to("modprobe")
    efa_nets = [c for c in result.calls_to("lnetctl") if c[:4] == ["net", "add", "--net", "efa"]]
    assert sorted(c[5] for c in efa_nets) == sorted(f"rdmap{i}s0" for i in range(16))
    names = [c[0] for c in result.calls]
    assert names.index("lnetctl") < names.index("mount")
    assert result.statuses() == ["SUCCESS"]


def test_efa_fsx_whose_lnet_modules_do_not_load_signals_failure(node, trn2_with_efa_fsx):
    result = node.boot(trn2_with_efa_fsx, DOUBLES_FAILING="modprobe")
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert "LNet EFA modules did not load" in result.messages()


def test_efa_fsx_lnet_setup_is_redone_by_a_unit_before_remote_fs_at_every_boot(
    node, trn2_with_efa_fsx
):
    result = node.boot(trn2_with_efa_fsx)
    assert result.returncode == 0, result.output
    unit = (node.root / "etc/systemd/system/cdk-trn-lnet-efa.service").read_text()
    assert "ExecStart=/usr/local/sbin/cdk-trn-node configure-lnet" in unit
    assert "Before=remote-fs-pre.target remote-fs.target" in unit
    assert "WantedBy=remote-fs.target" in unit
    assert "Type=oneshot" in unit and "RemainAfterExit=yes" in unit
    # Enabled for later boots, not started now: this boot configured LNet itself, once.
    assert ["enable", "cdk-trn-lnet-efa.service"] in result.calls_to("systemctl")
    assert len([c for c in result.calls_to("lnetctl") if c[:2] == ["lnet", "configure"]]) == 1
    [fstab] = [
        line for line in (node.root / "etc/fstab").read_text().splitlines() if "lustre" in line
    ]
    assert "x-systemd.requires=cdk-trn-lnet-efa.service" in fstab.split()[3].split(",")


def test_tcp_fsx_installs_no_lnet_unit(node, trn2_with_fsx):
    node.boot(trn2_with_fsx)
    assert not (node.root / "etc/systemd/system/cdk-trn-lnet-efa.service").exists()
    assert "cdk-trn-lnet-efa" not in (node.root / "etc/fstab").read_text()


def test_configure_lnet_helper_redoes_the_setup_and_never_signals(node, trn2_with_efa_fsx):
    result = _helper(node, trn2_with_efa_fsx, "configure-lnet")
    assert result.returncode == 0, result.output
    efa_nets = [c for c in result.calls_to("lnetctl") if c[:4] == ["net", "add", "--net", "efa"]]
    assert len(efa_nets) == 16
    assert ["lustre"] in result.calls_to("modprobe")
    assert result.signals() == []


def test_configure_lnet_helper_that_fails_exits_non_zero_without_signalling(
    node, trn2_with_efa_fsx
):
    result = _helper(node, trn2_with_efa_fsx, "configure-lnet", DOUBLES_FAILING="modprobe")
    assert result.returncode == 1
    assert "LNet EFA modules did not load" in result.messages()
    assert result.signals() == []


def test_unexpected_command_failure_signals_failure_through_the_err_trap(node, trn2_with_efa_fsx):
    result = node.boot(trn2_with_efa_fsx, DOUBLES_FAILING="lnetctl")
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert "unexpected error at line" in result.messages()


def test_failure_inside_a_command_substitution_signals_failure_once(node, trn2_with_efa_fsx):
    result = node.boot(trn2_with_efa_fsx, DOUBLES_FAILING="ip")
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert result.messages().count("FAILED on") == 1


# --- UltraServers ---------------------------------------------------------------------------


def test_ultraserver_node_writes_its_server_and_node_ids(node, trn2u):
    node.ultraserver_ids(SERVER_ID, "2")
    result = node.boot(trn2u)
    assert result.returncode == 0, result.output
    env = result.environment()
    assert env["NEURON_RT_ULTRASERVER_MODE"] == "1"
    assert env["NEURON_RT_ULTRASERVER_SERVER_ID"] == SERVER_ID
    assert env["NEURON_RT_ULTRASERVER_NODE_ID"] == "2"
    assert result.signals() == [_signal(trn2u, "SUCCESS")]


@pytest.mark.parametrize(
    ("server", "node_id"),
    [
        (None, "2"),
        ("0000000000000000", "2"),
        (SERVER_ID, None),
        (SERVER_ID, "4"),
        (SERVER_ID, "node 2"),
    ],
    ids=["no-server-id", "all-zero-server-id", "no-node-id", "node-id-4-of-4", "garbled-node-id"],
)
def test_node_outside_an_ultraserver_signals_failure(node, trn2u, server, node_id):
    node.ultraserver_ids(server, node_id)
    result = node.boot(trn2u)
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert "not part of a 4-node UltraServer" in result.messages()


def test_doubles_are_executable_scripts_with_a_shebang():
    for double in DOUBLES.iterdir():
        if double.name.startswith("_"):
            continue
        assert double.read_text().startswith("#!/bin/bash\n"), double.name
        assert os.access(double, os.X_OK), double.name


# --- Slurm: slurmd as a dynamic node ---------------------------------------------------------

MUNGE_KEY_DOUBLE = "munge-key-double-0123456789abcdefghijklmnopqrstuvwxyz"


def _with_slurm(instance_type: str) -> Rendered:
    from cdk_trn.scheduler import SlurmScheduler

    stack, cluster = cluster_stack(instance_type, file_system=FileSystemStandIn())
    SlurmScheduler(stack, "Slurm", cluster=cluster)
    return _render(cluster)


@pytest.fixture(scope="module")
def trn2_slurm() -> Rendered:
    return _with_slurm("trn2.48xlarge")


@pytest.fixture(scope="module")
def trn2u_slurm() -> Rendered:
    return _with_slurm("trn2u.48xlarge")


def test_slurm_node_signals_success_only_after_slurmd_registered(node, trn2_slurm):
    result = node.boot(trn2_slurm)
    assert result.returncode == 0, result.output
    assert result.signals() == [_signal(trn2_slurm, "SUCCESS")]
    show_node = [
        c
        for c in result.calls_to("docker")
        if c[:6] == ["exec", *ROOT_IN_ROOT_DIR, "cdk-trn-slurmd"]
    ]
    assert show_node == [
        ["exec", *ROOT_IN_ROOT_DIR, "cdk-trn-slurmd", "scontrol", "show", "node", "ip-10-0-1-23"]
    ]
    assert ["enable", "--now", "cdk-trn-slurmd.service"] in result.calls_to("systemctl")
    lines = [" ".join(c) for c in result.calls]
    registered = lines.index(
        "docker exec -u root -w / cdk-trn-slurmd scontrol show node ip-10-0-1-23"
    )
    assert registered < next(i for i, line in enumerate(lines) if "signal-resource" in line)
    assert "slurmd registered as ip-10-0-1-23 (trn2.48xlarge,efa)" in result.messages()


def test_slurmd_that_never_registers_signals_failure_with_the_reason(node, trn2_slurm):
    result = node.boot(trn2_slurm, SLURMD_DOUBLE_UNREGISTERED="1")
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert "slurmd did not register as ip-10-0-1-23 with the controller" in result.messages()
    assert "Node ip-10-0-1-23 not found" in result.messages()


def test_slurm_node_without_a_controller_address_signals_failure(node, trn2_slurm):
    result = node.boot(trn2_slurm, AWS_DOUBLE_CONTROLLER_ADDRESS="none")
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert "no controller address in" in result.messages()
    assert not (node.root / "etc/systemd/system/cdk-trn-slurmd.service").exists()


def test_unreadable_munge_key_signals_failure_and_leaves_no_key_file(node, trn2_slurm):
    result = node.boot(trn2_slurm, DOUBLES_FAILING="aws")
    assert result.returncode == 1
    assert "could not read the Slurm authentication key" in result.messages()
    assert not list((node.root / "etc/cdk-trn").glob("munge.key*"))


def test_munge_key_is_root_only_and_never_logged(node, trn2_slurm):
    result = node.boot(trn2_slurm)
    key = node.root / "etc/cdk-trn/munge.key"
    assert key.read_text().strip() == MUNGE_KEY_DOUBLE
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert MUNGE_KEY_DOUBLE not in result.output
    assert MUNGE_KEY_DOUBLE not in node.log.read_text()
    assert MUNGE_KEY_DOUBLE not in (node.root / "dev/console").read_text()
    assert MUNGE_KEY_DOUBLE not in trn2_slurm.user_data


def test_controller_name_points_at_the_published_address(node, trn2_slurm):
    (node.root / "etc/hosts").write_text("127.0.0.1 localhost\n10.64.9.9 cdk-trn-slurmctld\n")
    result = node.boot(trn2_slurm, AWS_DOUBLE_CONTROLLER_ADDRESS="10.64.0.77")
    assert result.returncode == 0, result.output
    hosts = (node.root / "etc/hosts").read_text().splitlines()
    assert hosts == ["127.0.0.1 localhost", "10.64.0.77 cdk-trn-slurmctld"]
    assert ["enable", "--now", "cdk-trn-controller-address.timer"] in result.calls_to("systemctl")


def test_slurmd_unit_runs_the_installed_helper_and_leaves_on_stop(node, trn2_slurm):
    node.boot(trn2_slurm)
    unit = (node.root / "etc/systemd/system/cdk-trn-slurmd.service").read_text()
    assert "ExecStart=/usr/local/sbin/cdk-trn-node slurmd-run" in unit
    assert "ExecStop=/usr/local/sbin/cdk-trn-node slurmd-leave" in unit
    helper = node.root / "usr/local/sbin/cdk-trn-node"
    assert helper.read_text() == trn2_slurm.user_data


def _helper(node: FakeNode, rendered: Rendered, command: str, **env: str) -> BootResult:
    node.boot(rendered)
    node.log.write_text("")
    run_env = {
        "PATH": f"{node.bin}:/usr/bin:/bin",
        "NODE_BOOTSTRAP_TEST_ROOT": str(node.root),
        "DOUBLES_LOG": str(node.log),
        **env,
    }
    helper = node.root / "usr/local/sbin/cdk-trn-node"
    result = subprocess.run(
        ["bash", str(helper), command], env=run_env, capture_output=True, text=True, timeout=30
    )
    calls = [line.split() for line in node.log.read_text().splitlines() if line.strip()]
    return BootResult(result.returncode, result.stdout + result.stderr, calls, node.root)


def test_slurmd_run_starts_a_dynamic_node_with_its_features(node, trn2_slurm):
    result = _helper(node, trn2_slurm, "slurmd-run")
    assert result.returncode == 0, result.output
    [run] = [c for c in result.calls_to("docker") if c[0] == "run"]
    assert run[run.index("--name") + 1] == "cdk-trn-slurmd"
    for flag in ("--privileged", "--pid", "--network"):
        assert flag in run
    tail = run[run.index("slurmd") :]
    assert tail == [
        "slurmd",
        "-D",
        "-Z",
        "-N",
        "ip-10-0-1-23",
        "--conf-server",
        "cdk-trn-slurmctld:6817",
        "--conf",
        "Feature=trn2.48xlarge,efa",
    ]
    assert result.signals() == []


def test_leaving_node_is_deleted_from_slurm(node, trn2_slurm):
    result = _helper(node, trn2_slurm, "slurmd-leave")
    assert result.returncode == 0, result.output
    execs = [c[6:] for c in result.calls_to("docker") if c[:5] == ["exec", *ROOT_IN_ROOT_DIR]]
    assert execs == [["scontrol", "delete", "nodename=ip-10-0-1-23"]]
    assert result.signals() == []


def test_leaving_node_that_runs_a_job_is_marked_down(node, trn2_slurm):
    result = _helper(node, trn2_slurm, "slurmd-leave", DOUBLES_FAILING="docker")
    assert result.returncode == 0, result.output
    execs = [c[6:9] for c in result.calls_to("docker") if c[:5] == ["exec", *ROOT_IN_ROOT_DIR]]
    assert execs == [
        ["scontrol", "delete", "nodename=ip-10-0-1-23"],
        ["scontrol", "update", "nodename=ip-10-0-1-23"],
    ]


def test_ultraserver_node_adds_its_server_id_as_a_feature(node, trn2u_slurm):
    node.ultraserver_ids(SERVER_ID, "1")
    result = node.boot(trn2u_slurm)
    assert result.returncode == 0, result.output
    identity = node.root / "etc/cdk-trn/slurmd.conf"
    sourced = subprocess.run(
        ["bash", "-c", f'. "{identity}"; echo "$FEATURES"'], capture_output=True, text=True
    )
    assert sourced.stdout.strip() == f"trn2u.48xlarge,efa,us-{SERVER_ID}"


# --- metrics: a timer publishes what the collector in the Slurm container prints -------------

METRIC_DATA = '[{"MetricName":"NeuronCoreUtilization","Value":50,"Unit":"Percent"}]'


def test_slurm_node_starts_the_metrics_timer_that_runs_the_helper(node, trn2_slurm):
    result = node.boot(trn2_slurm)
    assert result.returncode == 0, result.output
    assert ["enable", "--now", "cdk-trn-metrics.timer"] in result.calls_to("systemctl")
    unit = (node.root / "etc/systemd/system/cdk-trn-metrics.service").read_text()
    assert "ExecStart=/usr/local/sbin/cdk-trn-node publish-metrics" in unit
    timer = (node.root / "etc/systemd/system/cdk-trn-metrics.timer").read_text()
    assert "OnUnitActiveSec=60s" in timer


def test_publish_metrics_puts_the_collectors_output_into_the_node_namespace(node, trn2_slurm):
    result = _helper(node, trn2_slurm, "publish-metrics", DOCKER_DOUBLE_EXEC_OUTPUT=METRIC_DATA)
    assert result.returncode == 0, result.output
    execs = [c for c in result.calls_to("docker") if c[0] == "exec"]
    assert execs == [
        [
            "exec",
            *ROOT_IN_ROOT_DIR,
            "cdk-trn-slurmd",
            "/opt/cdk-trn/cdk_trn_runtime/monitoring/node_metrics.sh",
            "test-cluster",
        ]
    ]
    puts = [c for c in result.calls_to("aws") if c[:2] == ["cloudwatch", "put-metric-data"]]
    assert puts == [
        [
            "cloudwatch",
            "put-metric-data",
            "--region",
            "us-east-2",
            "--namespace",
            "cdk-trn/Node",
            "--metric-data",
            METRIC_DATA,
        ]
    ]


@pytest.mark.parametrize("failing", ["docker", ""])
def test_publish_metrics_with_nothing_collected_puts_nothing(node, trn2_slurm, failing):
    result = _helper(node, trn2_slurm, "publish-metrics", DOUBLES_FAILING=failing)
    assert result.returncode == 0, result.output
    assert [c for c in result.calls_to("aws") if c[:1] == ["cloudwatch"]] == []
