"""Runs the node's boot bundle as the instance does, on a fake node: the shipped files laid out by
``cdk_trn_runtime.node.bundle.write_bundle`` with the variables the cluster renders as their
``boot.env``, ``node_bootstrap.sh`` run from there; a temp directory stands in for / (the
scripts' tests-only NODE_BOOTSTRAP_TEST_ROOT) and the command doubles in ``node_command_doubles/``
stand in for curl (IMDSv2), aws, dnf, systemctl, mount and the rest. Every double appends its
argv to a call log the tests read. The launcher in front of the bundle (download, digest) is
tested in test_launcher.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2

from cdk_trn.cluster import TrainiumCluster
from cdk_trn.machine_image import NeuronMachineImage, NodeOs
from cdk_trn_runtime.contract import RENDEZVOUS_PORTS
from cdk_trn_runtime.node.bundle import write_bundle
from tests.support.stacks import cluster_stack

DOUBLES = Path(__file__).parent / "node_command_doubles"
REPO = Path(__file__).resolve().parents[3]
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
    variables: dict[str, object]
    stack_name: str
    logical_id: str


def _render(cluster: TrainiumCluster) -> Rendered:
    stack = cdk.Stack.of(cluster)
    return Rendered(
        user_data=cluster._user_data(),
        variables=cluster._boot_variables().to_environment(),
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

    #: MemTotal of a trn2.48xlarge as the kernel reports it (2 TiB less what the firmware keeps).
    MEM_TOTAL_KIB = 2_113_929_216

    def __init__(self, base: Path) -> None:
        self.root = base / "root"
        self.bundle = base / "boot"
        self.bin = base / "bin"
        self.log = base / "calls.log"
        shutil.copytree(DOUBLES, self.bin)
        for double in self.bin.iterdir():
            double.chmod(0o755)
        for d in (
            "dev",
            "etc/profile.d",
            "proc",
            "sys/class/infiniband",
            "sys/class/neuron_device",
        ):
            (self.root / d).mkdir(parents=True)
        (self.root / "proc/meminfo").write_text(
            f"MemTotal:       {self.MEM_TOTAL_KIB} kB\nMemFree:        2000000000 kB\n"
        )
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

    def boot(self, rendered: Rendered, role: str = "node", **env: str) -> BootResult:
        script = write_bundle(role, self.bundle, rendered.variables)
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


def test_bootstrap_log_goes_to_stderr_and_syslog(node, trn2):
    # The launcher sends stderr on to the serial console and the boot log (test_launcher.py).
    result = node.boot(trn2)
    for line in (f"bootstrapping {INSTANCE_ID} for cluster test-cluster", "node ready"):
        assert f"[cdk-trn-bootstrap] {line}" in result.output
        assert line in result.messages()


# --- signals -------------------------------------------------------------------------------

#: What CloudFormation answers a signal to a group that no longer waits for one (a replacement
#: node, a later instance): aws-cloudformation-templates issues 34 and 126 quote it.
ALREADY_COMPLETE = (
    "An error occurred (ValidationError) when calling the SignalResource operation: Stack "
    "arn:aws:cloudformation:us-east-2:123456789012:stack/Test/0f1e2d3c is in CREATE_COMPLETE "
    "state and cannot be signaled"
)


def test_success_signal_to_a_group_that_no_longer_waits_does_not_fail_the_boot(node, trn2):
    result = node.boot(trn2, AWS_DOUBLE_SIGNAL_ERROR=ALREADY_COMPLETE)
    assert result.returncode == 0, result.output
    assert result.statuses() == ["SUCCESS"]
    assert "signal SUCCESS not sent: " in result.messages()
    assert "is in CREATE_COMPLETE state and cannot be signaled" in result.messages()
    assert "FAILED" not in result.messages()
    assert "node ready" in result.messages()


def test_success_signal_refused_for_another_reason_fails_the_boot(node, trn2):
    denied = (
        "An error occurred (AccessDenied) when calling the SignalResource operation: User is "
        "not authorized to perform: cloudformation:SignalResource"
    )
    result = node.boot(trn2, AWS_DOUBLE_SIGNAL_ERROR=denied)
    assert result.returncode == 1
    assert result.statuses() == ["SUCCESS", "FAILURE"]
    assert "signal SUCCESS refused" in result.messages()
    assert "node ready" not in result.messages()


# --- failed checks --------------------------------------------------------------------------


def _replacement_requests(result: BootResult) -> list[list[str]]:
    return [c for c in result.calls_to("aws") if c[:2] == ["autoscaling", "set-instance-health"]]


def _asks_to_be_replaced(result: BootResult) -> None:
    assert _replacement_requests(result) == [
        [
            "autoscaling",
            "set-instance-health",
            "--region",
            "us-east-2",
            "--instance-id",
            INSTANCE_ID,
            "--health-status",
            "Unhealthy",
            "--no-should-respect-grace-period",
        ]
    ]


def _created(minutes_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - minutes_ago * 60))


def test_missing_neuron_device_is_replaced_by_the_group_without_a_failure_signal(node, trn2):
    node.neuron_devices(15)
    result = node.boot(trn2)
    assert result.returncode == 1
    # No FAILURE: one would fail the group's creation and roll the whole cluster back.
    assert result.signals() == []
    _asks_to_be_replaced(result)
    assert "expected 16 Neuron devices (/dev/neuron*), found 15" in result.messages()
    assert "expected 16 Neuron devices (/dev/neuron*), found 15" in result.messages()
    (describe,) = [c for c in result.calls_to("aws") if c[1] == "describe-auto-scaling-groups"]
    # Its own group, by the tags CloudFormation puts on it.
    assert f"Name=tag:aws:cloudformation:stack-name,Values={trn2.stack_name}" in describe
    assert f"Name=tag:aws:cloudformation:logical-id,Values={trn2.logical_id}" in describe


def test_wrong_efa_device_count_is_replaced_while_another_boot_fits(node, trn2):
    # Created 29 minutes ago: a 15-minute boot still ends before the 45-minute signal timeout.
    node.efa_devices(8)
    result = node.boot(trn2, AWS_DOUBLE_GROUP_CREATED=_created(29))
    assert result.returncode == 1
    assert result.signals() == []
    _asks_to_be_replaced(result)
    assert "expected 16 EFA devices (/sys/class/infiniband), found 8" in result.messages()


def test_a_retryable_failure_with_no_time_for_another_boot_signals_failure_naming_it(node, trn2):
    # Created 31 minutes ago: the bound: a new boot would not end within the 45 minutes.
    node.neuron_devices(15)
    result = node.boot(trn2, AWS_DOUBLE_GROUP_CREATED=_created(31))
    assert result.returncode == 1
    assert result.signals() == [_signal(trn2, "FAILURE")]
    assert _replacement_requests(result) == []
    assert (
        f"FAILED on {INSTANCE_ID}: expected 16 Neuron devices (/dev/neuron*), found 15; no "
        "time left" in result.messages()
    )


def test_a_node_launched_after_the_creation_is_always_replaced(node, trn2):
    # Past the signal timeout there is no creation policy to fail: replacing is the only remedy.
    node.neuron_devices(15)
    result = node.boot(trn2, AWS_DOUBLE_GROUP_CREATED=_created(24 * 60))
    assert result.signals() == []
    _asks_to_be_replaced(result)


def test_a_retryable_failure_whose_group_cannot_be_read_signals_failure(node, trn2):
    node.neuron_devices(15)
    result = node.boot(trn2, AWS_DOUBLE_GROUP_CREATED="None")
    assert result.statuses() == ["FAILURE"]
    assert _replacement_requests(result) == []
    assert "found 15; no group" in result.messages()


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


def test_fsx_mount_that_keeps_failing_is_replaced_after_twelve_tries(node, trn2_with_fsx):
    result = node.boot(trn2_with_fsx, DOUBLES_FAILING="mount")
    assert result.returncode == 1
    assert result.signals() == []
    _asks_to_be_replaced(result)
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
    assert f"ExecStart={node.bundle}/node_bootstrap.sh configure-lnet" in unit
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


def test_unexpected_command_failure_names_the_shipped_file_and_line(node, trn2_with_efa_fsx):
    result = node.boot(trn2_with_efa_fsx, DOUBLES_FAILING="lnetctl")
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    shipped = (node.bundle / "boot_common.sh").read_text().splitlines()
    line = 1 + next(i for i, text in enumerate(shipped) if text.strip() == "lnetctl lnet configure")
    assert f"unexpected error at boot_common.sh:{line}: lnetctl lnet configure" in result.messages()
    # The shipped file is the package's, comments and blank lines included.
    assert shipped == (REPO / "cdk_trn_runtime/node/boot_common.sh").read_text().splitlines()


def test_unexpected_failure_in_the_entry_script_names_it_and_its_line(node, trn2):
    # A file where the environment's directory belongs: write_environment's mkdir fails.
    (node.root / "etc/cdk-trn").write_text("")
    result = node.boot(trn2)
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    [message] = [m for m in result.messages().splitlines() if "unexpected error at" in m]
    location = message.split("unexpected error at ", 1)[1].split(":", 2)
    assert location[0] == "node_bootstrap.sh"
    shipped = (node.bundle / "node_bootstrap.sh").read_text().splitlines()
    assert shipped[int(location[1]) - 1].strip().startswith("mkdir -p")
    assert location[2].startswith(" mkdir -p")


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
    assert MUNGE_KEY_DOUBLE not in trn2_slurm.user_data


def test_controller_name_points_at_the_published_address(node, trn2_slurm):
    (node.root / "etc/hosts").write_text("127.0.0.1 localhost\n10.64.9.9 cdk-trn-slurmctld\n")
    result = node.boot(trn2_slurm, AWS_DOUBLE_CONTROLLER_ADDRESS="10.64.0.77")
    assert result.returncode == 0, result.output
    hosts = (node.root / "etc/hosts").read_text().splitlines()
    assert hosts == ["127.0.0.1 localhost", "10.64.0.77 cdk-trn-slurmctld"]
    assert ["enable", "--now", "cdk-trn-controller-address.timer"] in result.calls_to("systemctl")


def test_slurmd_unit_runs_the_shipped_entry_script_and_leaves_on_stop(node, trn2_slurm):
    node.boot(trn2_slurm)
    unit = (node.root / "etc/systemd/system/cdk-trn-slurmd.service").read_text()
    assert f"ExecStart={node.bundle}/node_bootstrap.sh slurmd-run" in unit
    assert f"ExecStop={node.bundle}/node_bootstrap.sh slurmd-leave" in unit
    shipped = (REPO / "cdk_trn_runtime/node/units/cdk-trn-slurmd.service").read_text()
    assert unit == shipped.replace("@ENTRY@", f"{node.bundle}/node_bootstrap.sh")


def _helper(node: FakeNode, rendered: Rendered, command: str, **env: str) -> BootResult:
    node.boot(rendered)
    node.log.write_text("")
    run_env = {
        "PATH": f"{node.bin}:/usr/bin:/bin",
        "NODE_BOOTSTRAP_TEST_ROOT": str(node.root),
        "DOUBLES_LOG": str(node.log),
        **env,
    }
    entry = node.bundle / "node_bootstrap.sh"
    result = subprocess.run(
        ["bash", str(entry), command], env=run_env, capture_output=True, text=True, timeout=30
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
        # One argument (the call log splits at spaces): RealMemory keeps 5% of MemTotal for the
        # OS and daemons (slurmd -Z would take it all).
        f"RealMemory={int(FakeNode.MEM_TOTAL_KIB / 1024 * 0.95)}",
        "Feature=trn2.48xlarge,efa",
    ]
    assert result.signals() == []


def test_slurmd_real_memory_is_below_the_nodes_memory(node, trn2_slurm):
    result = _helper(node, trn2_slurm, "slurmd-run")
    [run] = [c for c in result.calls_to("docker") if c[0] == "run"]
    conf = run[run.index("--conf") + 1]
    real_memory = int(conf.removeprefix("RealMemory="))
    node_mib = FakeNode.MEM_TOTAL_KIB // 1024
    assert 0.9 * node_mib < real_memory < node_mib


def test_node_without_a_readable_meminfo_signals_failure(node, trn2_slurm):
    (node.root / "proc/meminfo").write_text("")
    result = node.boot(trn2_slurm)
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert "could not read MemTotal from /proc/meminfo" in result.messages()


def test_leaving_node_is_deleted_from_slurm(node, trn2_slurm):
    result = _helper(node, trn2_slurm, "slurmd-leave")
    assert result.returncode == 0, result.output
    execs = [c[6:] for c in result.calls_to("docker") if c[:5] == ["exec", *ROOT_IN_ROOT_DIR]]
    assert execs == [
        ["sinfo", "-h", "-N", "-n", "ip-10-0-1-23", "-o", "%t"],  # not being powered down
        ["scontrol", "delete", "nodename=ip-10-0-1-23"],
    ]
    assert result.signals() == []


def test_node_stopped_by_power_saving_keeps_its_record(node, trn2_slurm):
    # Idle scale-in stops the instance while Slurm powers the node down (state "idle%"): it
    # comes back as the same node, so its record stays.
    result = _helper(node, trn2_slurm, "slurmd-leave", DOCKER_DOUBLE_EXEC_OUTPUT="idle%")
    assert result.returncode == 0, result.output
    execs = [c[6:] for c in result.calls_to("docker") if c[:5] == ["exec", *ROOT_IN_ROOT_DIR]]
    assert execs == [["sinfo", "-h", "-N", "-n", "ip-10-0-1-23", "-o", "%t"]]
    assert ["stop", "--time", "60", "cdk-trn-slurmd"] in result.calls_to("docker")


def test_leaving_node_that_runs_a_job_is_marked_down(node, trn2_slurm):
    result = _helper(node, trn2_slurm, "slurmd-leave", DOUBLES_FAILING="docker")
    assert result.returncode == 0, result.output
    execs = [c[6:9] for c in result.calls_to("docker") if c[:5] == ["exec", *ROOT_IN_ROOT_DIR]]
    assert execs == [
        ["sinfo", "-h", "-N"],
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
    assert f"ExecStart={node.bundle}/node_bootstrap.sh publish-metrics" in unit
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
