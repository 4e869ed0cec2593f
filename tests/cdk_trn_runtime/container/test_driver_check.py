"""The node's Neuron driver against the image's Neuron release (issue 25, item 4): the check the
node bootstrap runs in the training image before it starts slurmd. Hosts are directories that
stand in for / (CDK_TRN_DEVICE_ROOT)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cdk_trn_runtime.container import driver_check
from tests.cdk_trn_runtime.suite.conftest import CONTAINER_DIR

REPO = Path(__file__).resolve().parents[3]


def host(tmp_path: Path, driver: str | None, devices: int = 16) -> Path:
    (tmp_path / "dev").mkdir(parents=True, exist_ok=True)
    for index in range(devices):
        (tmp_path / "dev" / f"neuron{index}").write_text("")
    if driver is not None:
        module = tmp_path / "sys" / "module" / "neuron"
        module.mkdir(parents=True)
        (module / "version").write_text(driver + "\n")
    return tmp_path


def run(root: Path, release: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "CDK_TRN_DEVICE_ROOT": str(root)}
    if release is not None:
        env["CDK_TRN_NEURON_RELEASE"] = release
    return subprocess.run(
        [sys.executable, "-m", "cdk_trn_runtime.container.driver_check"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_an_older_driver_fails_naming_both_versions_and_the_release(tmp_path):
    done = run(host(tmp_path, "2.30.2.0"), "2.33.0")
    assert done.returncode == 1
    line = done.stdout.strip()
    assert "2.30.2.0" in line and "2.31.7.0" in line and "Neuron 2.33.0" in line
    assert "older" in line


def test_the_release_driver_and_newer_ones_pass(tmp_path):
    assert run(host(tmp_path / "a", "2.31.7.0"), "2.33.0").returncode == 0
    done = run(host(tmp_path / "b", "2.32.1.0"), "2.33.0")
    assert done.returncode == 0
    assert "serves the image's Neuron 2.33.0" in done.stdout


def test_versions_compare_as_numbers_not_as_text(tmp_path):
    # "2.31.10.0" sorts before "2.31.7.0" as text.
    assert run(host(tmp_path, "2.31.10.0"), "2.33.0").returncode == 0


def test_a_host_with_devices_and_no_driver_fails(tmp_path):
    done = run(host(tmp_path, None), "2.33.0")
    assert done.returncode == 1
    assert "no loaded Neuron driver" in done.stdout


def test_a_host_without_neuron_has_nothing_to_check(tmp_path):
    done = run(host(tmp_path, None, devices=0), "2.33.0")
    assert done.returncode == 0
    assert "no Neuron device" in done.stdout


def test_an_image_without_its_release_fails(tmp_path):
    done = run(host(tmp_path, "2.31.7.0"), None)
    assert done.returncode == 1
    assert "does not say its Neuron release" in done.stdout


def test_a_release_missing_from_the_table_fails_with_what_to_do(tmp_path):
    done = run(host(tmp_path, "9.0.0.0"), "2.99.0")
    assert done.returncode == 1
    assert "not in the driver table" in done.stdout


def test_the_bundled_image_release_is_in_the_table_and_its_label_and_env_agree():
    text = (CONTAINER_DIR / "Dockerfile").read_text()
    [label] = re.findall(r'com\.cdk-trn\.neuron-release="([^"]+)"', text)
    [env] = re.findall(r"CDK_TRN_NEURON_RELEASE=(\S+)", text)
    assert label == env
    assert driver_check.required_driver(label) == "2.31.7.0"
    assert f"sdk{label}-" in text.splitlines()[0]


def test_the_node_boot_runs_the_check_in_the_image_and_fails_at_once():
    boot = (REPO / "cdk_trn_runtime" / "node" / "node_bootstrap.sh").read_text()
    [line] = [x for x in boot.splitlines() if "driver_check" in x]
    # root's Python in the image, away from any directory a job writes (-P, --workdir /)
    assert '--workdir / --entrypoint python "$CDK_TRN_SLURM_IMAGE" -P -m' in line
    assert "cdk_trn_runtime.container.driver_check" in line
    assert '|| fail "$drv"' in line
    # After the image is pulled, before slurmd starts.
    assert boot.index("driver_check") > boot.index('pull_image "$CDK_TRN_SLURM_IMAGE"')
    assert boot.index("driver_check") < boot.index("install_unit cdk-trn-slurmd.service")


@pytest.mark.parametrize(("release", "driver"), sorted(driver_check.REQUIRED_DRIVER.items()))
def test_the_table_never_asks_less_of_a_newer_release(release, driver):
    older = [d for r, d in driver_check.REQUIRED_DRIVER.items() if r < release]
    assert all(driver_check._key(d) <= driver_check._key(driver) for d in older)
