"""healthcheck.sh, prolog.sh and epilog.sh against fake device trees, without Slurm.

A temp directory stands in for the node's /dev and /sys (``CDK_TRN_DEVICE_ROOT``); the test
doubles ``scontrol`` (records its arguments) and ``squeue`` (prints the job ids in a file, or
fails when the file is missing, as when the controller does not answer) come first on PATH.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdk_trn_runtime import contract

SCRIPTS = Path(__file__).resolve().parents[4] / "cdk_trn_runtime" / "slurm" / "scripts"
#: A uid no account on the machine uses: the epilog kills every process of the job's user.
TEST_UID = 64123


@dataclass
class FakeNode:
    root: Path
    env_file: Path
    shared: Path
    calls: Path
    jobs: Path
    bin: Path

    def run(self, script: str, **extra: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "CDK_TRN_SLURM_ENV": str(self.env_file),
            "SLURMD_NODENAME": "n1",
            **extra,
        }
        return subprocess.run(
            [str(SCRIPTS / script)], env=env, capture_output=True, text=True, timeout=30
        )

    def scontrol_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


def _double(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n# Test double.\n" + body)
    path.chmod(0o755)


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / "sys" / "class" / "infiniband").mkdir(parents=True)
    for i in range(4):
        (root / "dev" / f"neuron{i}").touch()
    for i in range(2):
        (root / "sys" / "class" / "infiniband" / f"rdmap{i}s0").mkdir()
    shared = tmp_path / "fsx"
    shared.mkdir()
    env_file = tmp_path / "slurm-node.env"
    env_file.write_text(
        f"{contract.SLURM_ENV_EXPECTED_NEURON}=4\n"
        f"{contract.SLURM_ENV_EXPECTED_EFA}=2\n"
        f"{contract.SLURM_ENV_SHARED_ROOT}={shared}\n"
        f"{contract.SLURM_ENV_DEVICE_ROOT}={root}\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls, jobs = tmp_path / "scontrol.calls", tmp_path / "jobs"
    _double(bin_dir / "scontrol", f'echo "$*" >> {calls}\n')
    _double(bin_dir / "squeue", f"[ -f {jobs} ] || exit 1\ncat {jobs}\n")
    jobs.write_text("")
    return FakeNode(root, env_file, shared, calls, jobs, bin_dir)


def _holder(device: Path, **env: str) -> subprocess.Popen[bytes]:
    """A process that holds ``device`` open, as a runtime holds a NeuronCore."""
    process = subprocess.Popen(
        ["bash", "-c", f"exec 3<'{device}'; exec sleep 60"], env={"PATH": "/usr/bin:/bin", **env}
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(
            os.path.realpath(f"/proc/{process.pid}/fd/{fd}") == str(device)
            for fd in os.listdir(f"/proc/{process.pid}/fd")
        ):
            return process
        time.sleep(0.05)
    raise AssertionError("holder did not open the device")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()


def test_healthy_node_passes_and_drains_nothing(node):
    result = node.run("healthcheck.sh")
    assert result.returncode == 0, result.stderr
    assert node.scontrol_calls() == []


def test_missing_neuron_device_drains_with_the_count(node):
    (node.root / "dev" / "neuron3").unlink()
    result = node.run("healthcheck.sh")
    assert result.returncode == 1
    assert node.scontrol_calls() == [
        "update nodename=n1 state=drain reason=cdk-trn: neuron devices 3 of 4"
    ]


def test_missing_efa_device_drains_with_the_count(node):
    (node.root / "sys" / "class" / "infiniband" / "rdmap1s0").rmdir()
    assert node.run("healthcheck.sh").returncode == 1
    assert node.scontrol_calls()[0].endswith("reason=cdk-trn: efa devices 1 of 2")


def test_missing_shared_file_system_drains(node):
    node.shared.rmdir()
    assert node.run("healthcheck.sh").returncode == 1
    assert node.scontrol_calls()[0].endswith(f"reason=cdk-trn: shared fs {node.shared} missing")


def test_shared_file_system_of_the_wrong_type_drains(node):
    with node.env_file.open("a") as handle:
        handle.write(f"{contract.SLURM_ENV_SHARED_FS_TYPE}=lustre\n")
    assert node.run("healthcheck.sh").returncode == 1
    assert "not mounted as lustre" in node.scontrol_calls()[0]


def test_cpu_node_expects_no_devices(node, tmp_path):
    empty = tmp_path / "cpu-root"
    empty.mkdir()
    node.env_file.write_text(
        f"{contract.SLURM_ENV_EXPECTED_NEURON}=0\n{contract.SLURM_ENV_EXPECTED_EFA}=0\n"
        f"{contract.SLURM_ENV_DEVICE_ROOT}={empty}\n"
    )
    assert node.run("healthcheck.sh").returncode == 0
    assert node.scontrol_calls() == []


def test_process_holding_a_neuron_device_outside_any_job_drains(node, processes):
    holder = _holder(node.root / "dev" / "neuron0")
    processes.append(holder)
    assert node.run("healthcheck.sh").returncode == 1
    assert node.scontrol_calls()[0].endswith(
        f"reason=cdk-trn: stale neuron device holders {holder.pid}(sleep)"
    )


def test_process_of_a_running_job_may_hold_a_neuron_device(node, processes):
    processes.append(_holder(node.root / "dev" / "neuron0", SLURM_JOB_ID="42"))
    node.jobs.write_text("42\n")
    result = node.run("healthcheck.sh")
    assert result.returncode == 0, result.stderr
    assert node.scontrol_calls() == []


def test_process_of_a_finished_job_holding_a_device_is_stale(node, processes):
    processes.append(_holder(node.root / "dev" / "neuron0", SLURM_JOB_ID="41"))
    node.jobs.write_text("42\n")
    assert node.run("healthcheck.sh").returncode == 1
    assert "stale neuron device holders" in node.scontrol_calls()[0]


def test_prolog_fails_and_drains_on_a_bad_node(node):
    (node.root / "dev" / "neuron0").unlink()
    result = node.run("prolog.sh", SLURM_JOB_ID="9")
    assert result.returncode != 0
    assert node.scontrol_calls()[0].endswith("reason=cdk-trn: neuron devices 3 of 4")
    assert "prolog of job 9 failed" in result.stderr


def test_prolog_passes_on_a_good_node(node):
    assert node.run("prolog.sh", SLURM_JOB_ID="9").returncode == 0


def _as_test_user(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], env={"PATH": "/usr/bin:/bin", **env}, user=TEST_UID)


def _epilog(node: FakeNode, job: str) -> subprocess.CompletedProcess[str]:
    return node.run(
        "epilog.sh", SLURM_JOB_ID=job, SLURM_JOB_UID=str(TEST_UID), SLURM_JOB_USER="someone"
    )


def _wait_exit(process: subprocess.Popen[bytes]) -> int | None:
    try:
        return process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="starts processes as another uid")


@needs_root
def test_epilog_kills_the_jobs_leftovers_but_not_another_running_jobs(node, processes):
    leftover = _as_test_user({"SLURM_JOB_ID": "7"})
    other_job = _as_test_user({"SLURM_JOB_ID": "8"})
    processes += [leftover, other_job]
    node.jobs.write_text("7\n8\n")
    result = _epilog(node, "7")
    assert result.returncode == 0, result.stderr
    assert _wait_exit(leftover) == -signal.SIGKILL
    assert other_job.poll() is None


@needs_root
def test_epilog_kills_all_of_the_users_processes_when_no_other_job_of_theirs_runs(node, processes):
    stray = _as_test_user({})
    processes.append(stray)
    node.jobs.write_text("7\n")
    assert _epilog(node, "7").returncode == 0
    assert _wait_exit(stray) == -signal.SIGKILL


@needs_root
def test_epilog_leaves_processes_outside_the_job_alone_when_slurm_does_not_answer(node, processes):
    stray = _as_test_user({})
    processes.append(stray)
    node.jobs.unlink()
    result = _epilog(node, "7")
    assert result.returncode == 0
    assert "squeue did not answer" in result.stderr
    assert stray.poll() is None


def test_epilog_never_kills_root_processes(node, processes):
    mine = subprocess.Popen(["sleep", "60"], env={"SLURM_JOB_ID": "7", "PATH": "/usr/bin:/bin"})
    processes.append(mine)
    result = node.run("epilog.sh", SLURM_JOB_ID="7", SLURM_JOB_UID="0", SLURM_JOB_USER="root")
    assert result.returncode == 0
    assert mine.poll() is None


@needs_root
def test_epilog_without_user_sweep_kills_only_the_jobs_processes(node, processes):
    leftover = _as_test_user({"SLURM_JOB_ID": "7"})
    stray = _as_test_user({})
    processes += [leftover, stray]
    node.jobs.write_text("7\n")
    with node.env_file.open("a") as handle:
        handle.write("CDK_TRN_EPILOG_USER_SWEEP=0\n")
    assert _epilog(node, "7").returncode == 0
    assert _wait_exit(leftover) == -signal.SIGKILL
    assert stray.poll() is None


def test_proc_scan_finds_device_holders_where_fuser_is_missing(node, processes):
    holder = _holder(node.root / "dev" / "neuron2")
    processes.append(holder)
    script = f". {SCRIPTS / 'node_checks.sh'}; proc_holders {node.root / 'dev' / 'neuron'}"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == [str(holder.pid)]


# --- replacement: a hardware failure marks the instance Unhealthy in its Auto Scaling group ---


@pytest.fixture
def aws_calls(node: FakeNode) -> Path:
    """A test double of the AWS CLI that records its arguments (one call a line)."""
    calls = node.root.parent / "aws.calls"
    _double(node.bin / "aws", f'echo "$*" >> {calls}\n')
    return calls


def _on_the_cloud(node: FakeNode) -> None:
    with node.env_file.open("a") as env:
        env.write(
            f"{contract.SLURM_ENV_REPLACE_ON_HARDWARE_FAILURE}=1\n"
            f"{contract.SLURM_ENV_INSTANCE_ID}=i-0123456789abcdef0\n"
            f"{contract.SLURM_ENV_REGION}=us-east-2\n"
        )


SET_UNHEALTHY = (
    "autoscaling set-instance-health --region us-east-2 --instance-id i-0123456789abcdef0 "
    "--health-status Unhealthy --no-should-respect-grace-period"
)


@pytest.mark.parametrize("script", ["healthcheck.sh", "prolog.sh"])
def test_missing_neuron_device_on_the_cloud_drains_and_asks_for_a_replacement(
    node, aws_calls, script
):
    _on_the_cloud(node)
    (node.root / "dev" / "neuron3").unlink()
    result = node.run(script, SLURM_JOB_ID="7")
    assert result.returncode == 1
    assert node.scontrol_calls() == [
        "update nodename=n1 state=drain reason=cdk-trn: neuron devices 3 of 4"
    ]
    assert aws_calls.read_text().splitlines() == [SET_UNHEALTHY]


def test_missing_efa_device_on_the_cloud_asks_for_a_replacement(node, aws_calls):
    _on_the_cloud(node)
    (node.root / "sys" / "class" / "infiniband" / "rdmap1s0").rmdir()
    assert node.run("healthcheck.sh").returncode == 1
    assert aws_calls.read_text().splitlines() == [SET_UNHEALTHY]


def test_shared_fs_failure_drains_but_does_not_replace(node, aws_calls):
    # A file system outage would fail every node alike: new instances would not help.
    _on_the_cloud(node)
    node.shared.rmdir()
    assert node.run("healthcheck.sh").returncode == 1
    assert node.scontrol_calls() == [
        f"update nodename=n1 state=drain reason=cdk-trn: shared fs {node.shared} missing"
    ]
    assert not aws_calls.exists()


def test_stale_holder_drains_but_does_not_replace(node, aws_calls, processes):
    _on_the_cloud(node)
    processes.append(_holder(node.root / "dev" / "neuron0"))
    assert node.run("healthcheck.sh").returncode == 1
    assert "stale neuron device holders" in node.scontrol_calls()[0]
    assert not aws_calls.exists()


def test_hardware_failure_off_the_cloud_never_calls_aws(node, aws_calls):
    # The local cluster's environment has no replacement flag.
    (node.root / "dev" / "neuron3").unlink()
    assert node.run("healthcheck.sh").returncode == 1
    assert not aws_calls.exists()


def test_a_failed_replacement_request_is_logged_and_the_node_stays_drained(node):
    _on_the_cloud(node)
    _double(node.bin / "aws", "echo 'AccessDenied' >&2\nexit 254\n")
    (node.root / "dev" / "neuron3").unlink()
    result = node.run("healthcheck.sh")
    assert result.returncode == 1
    assert "set-instance-health failed for i-0123456789abcdef0" in result.stderr
    assert len(node.scontrol_calls()) == 1
