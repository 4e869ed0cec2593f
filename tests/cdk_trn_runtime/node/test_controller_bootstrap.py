"""The Slurm controller's boot bundle, run as the instance runs it: the shipped files laid out by
``write_bundle("controller", ...)`` with the variables the SlurmScheduler renders, on the fake
node of test_node_bootstrap.py (a test root, command doubles for docker, aws, systemctl,
curl as IMDSv2, mount and the rest; python3 is this machine's)."""

from __future__ import annotations

import json
import os
import stat

import aws_cdk as cdk
import pytest

from cdk_trn.scheduler import SlurmScheduler
from tests.cdk_trn_runtime.node.test_node_bootstrap import FakeNode, FileSystemStandIn, Rendered
from tests.support.stacks import cluster_stack


@pytest.fixture(scope="module")
def controller() -> Rendered:
    stack, cluster = cluster_stack("trn2.48xlarge", file_system=FileSystemStandIn())
    scheduler = SlurmScheduler(stack, "Slurm", cluster=cluster)
    group = scheduler.auto_scaling_group.node.default_child
    assert isinstance(group, cdk.CfnResource)
    return Rendered(
        user_data=scheduler._user_data(),
        variables=scheduler._boot_variables().to_environment(),
        stack_name=stack.stack_name,
        logical_id=stack.get_logical_id(group),
    )


@pytest.fixture
def host(tmp_path) -> FakeNode:
    return FakeNode(tmp_path)


def test_controller_boots_from_its_bundle_and_signals_success_once_slurmctld_answers(
    host, controller
):
    result = host.boot(controller, role="controller")
    assert result.returncode == 0, result.output
    assert result.statuses() == ["SUCCESS"]
    lines = [" ".join(c) for c in result.calls]
    ping = lines.index("docker exec -u root -w / cdk-trn-slurmctld scontrol ping")
    assert ping < next(i for i, line in enumerate(lines) if "signal-resource" in line)
    puts = [c for c in result.calls_to("aws") if c[:2] == ["ssm", "put-parameter"]]
    assert puts and puts[0][puts[0].index("--value") + 1] == "10.0.0.5"


def test_controller_units_run_the_shipped_entry_script(host, controller):
    result = host.boot(controller, role="controller")
    assert result.returncode == 0, result.output
    units = host.root / "etc/systemd/system"
    entry = f"{host.bundle}/controller_bootstrap.sh"
    assert f"ExecStart={entry} slurmctld-run" in (units / "cdk-trn-slurmctld.service").read_text()
    watch = (units / "cdk-trn-controller-address.service").read_text()
    assert f"ExecStart={entry} resolve-controller" in watch
    assert f"ExecStart={entry} publish-metrics" in (units / "cdk-trn-metrics.service").read_text()
    apply = (units / "cdk-trn-apply-document.service").read_text()
    assert f"ExecStart={entry} apply-document" in apply
    reaper = (units / "cdk-trn-reaper.service").read_text()
    shipped = f"{host.bundle}/src/cdk_trn_runtime/slurm/scripts/reaper.sh"
    assert f"ExecStart=/bin/bash {shipped}" in reaper
    assert "docker exec -u root -w / cdk-trn-slurmctld scontrol" in reaper
    assert not list(units.glob("*@*"))
    assert ["enable", "--now", "cdk-trn-slurmctld.service"] in result.calls_to("systemctl")
    assert [
        "enable",
        "--now",
        "cdk-trn-reaper.service",
        "cdk-trn-apply-document.timer",
    ] in result.calls_to("systemctl")


def test_controller_writes_the_cluster_document_with_its_own_host_name(host, controller):
    result = host.boot(controller, role="controller")
    assert result.returncode == 0, result.output
    document = json.loads((host.root / "etc/cdk-trn/slurm/cluster.json").read_text())
    assert document["controller_host"] == "ip-10-0-1-23"
    assert document["controller_addr"] == "cdk-trn-slurmctld"
    assert document["cluster_name"] == "trn"


def test_controller_that_cannot_pull_the_image_signals_failure_with_the_reason(host, controller):
    result = host.boot(controller, role="controller", DOUBLES_FAILING="docker")
    assert result.returncode == 1
    assert result.statuses() == ["FAILURE"]
    assert "could not pull" in result.messages()


def test_a_boot_under_the_launcher_s_umask_077_leaves_shared_directories_reachable(
    host, controller
):
    """launcher.sh sets umask 077 for its root-only bundle directory and the boot inherits it:
    the job user must still reach its home, the SlurmUser its state and logs."""
    old = os.umask(0o077)
    try:
        result = host.boot(controller, role="controller")
    finally:
        os.umask(old)
    assert result.returncode == 0, result.output
    fsx = host.root / controller.variables["CDK_TRN_FSX_MOUNT_PATH"].lstrip("/")

    def mode(path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    for shared in ("home", "home/trn", "slurm", "slurm/logs", "checkpoints"):
        assert mode(fsx / shared) == 0o755, shared
    assert mode(fsx / "slurm/state") == 0o700
    assert mode(host.root / "etc/cdk-trn/slurm/cluster.json") == 0o644
    for unit in (host.root / "etc/systemd/system").glob("*.service"):
        assert mode(unit) == 0o644, unit
    assert mode(host.root / "etc/cdk-trn/munge.key") == 0o600  # the secret stays root's
