"""Nothing root runs reads what a job can write (issue 20): a job can write its home, the shared
file system and any world-writable directory; it cannot write where root's commands start
(`docker exec -w`, the image's root-owned WORKDIR) nor where root's Python looks for modules
(`-I`). The tests plant json.py and friends where a job can write and run root's commands there,
through a docker double that starts commands as Docker does (in the image's WORKDIR without -w);
and they scan every runtime shell script for a `docker exec` without -u and -w on the same line
and a Python without -I (or -P, where the image's PYTHONPATH is needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
RUNTIME = REPO / "cdk_trn_runtime"
DOUBLES = Path(__file__).parent / "root_command_doubles"
#: Modules root's Python in these scripts imports after startup.
PLANTED = ("json", "socket", "subprocess", "base64", "re", "shlex", "tempfile")

#: Scripts that run on the cluster's nodes and controller, where jobs run. (The vault host runs
#: no job.) The CLI's remote scripts run on the controller as root through SSM.
NODE_SCRIPTS = sorted(
    [
        *(RUNTIME / "node").glob("*.sh"),
        *(RUNTIME / "monitoring").glob("*.sh"),
        *(RUNTIME / "slurm" / "scripts").glob("*.sh"),
        *(RUNTIME / "acceptance").glob("*.sh"),
        *(RUNTIME / "acceptance").glob("*.sbatch"),
        *(RUNTIME / "provenance").glob("*.sh"),
    ]
)
CLI_REMOTE = RUNTIME / "cli" / "remote.py"


def _logical_lines(text: str) -> list[str]:
    """Lines with their backslash continuations joined, comment lines dropped."""
    text = re.sub(r"\\\\?\n\s*", " ", text)  # `\` + newline (in remote.py's strings: `\\`)
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


@pytest.mark.parametrize("path", [*NODE_SCRIPTS, CLI_REMOTE], ids=lambda p: p.name)
def test_every_docker_exec_names_its_user_and_directory(path):
    for line in _logical_lines(path.read_text()):
        for call in re.findall(r"docker exec\b(.*)", line):
            assert re.search(r"(^|\s)-u\s", call) and re.search(r"(^|\s)-w\s", call), (
                f"{path.name}: docker exec without -u and -w: {line.strip()}"
            )


#: Python in command position (after the line's start, `;`, `|`, `&`, `(`, `$(`, `exec`,
#: `VAR=value`), or as a container's entrypoint.
PYTHON = re.compile(
    r"""(?:(?:^|[;|&(]|\bexec|\bthen|\bdo|\w=\S*\s)\s*|(--entrypoint\s+))"""
    r"""(python3?(?:\.\d+)?|"\$PY"|"\$py")(?![\w.-])(.*)"""
)


@pytest.mark.parametrize("path", NODE_SCRIPTS, ids=lambda p: p.name)
def test_every_python_runs_with_isolated_paths(path):
    for line in _logical_lines(path.read_text()):
        for entrypoint, _, rest in PYTHON.findall(line.strip()):
            if entrypoint:  # --entrypoint python3 IMAGE <python's arguments>
                rest = rest.split(maxsplit=1)[1] if rest.strip() else ""
            flags = re.match(r"((?:\s*-[A-Za-z]+\b)*)", rest)
            assert flags and re.search(r"-[A-Za-z]*[IP]", flags.group(1)), (
                f"{path.name}: python without -I/-P: {line.strip()}"
            )


def test_the_image_workdir_is_root_owned_and_not_world_writable():
    dockerfile = (RUNTIME / "container" / "Dockerfile").read_text()
    [workdir] = re.findall(r"^WORKDIR (\S+)", dockerfile, re.M)
    assert f"install -d -o root -g root -m 0755 {workdir}" in dockerfile
    assert (
        "1777" not in dockerfile and "chmod" not in dockerfile.split("WORKDIR")[0].split("COPY")[-1]
    )


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="runs commands as the job uid (CI runs as root)",
)


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A directory the job can write (world-writable, like the old WORKDIR), holding json.py and
    friends that leave a mark when imported."""
    workdir = tmp_path / "job-writable"
    workdir.mkdir()
    workdir.chmod(0o1777)
    for name in PLANTED:
        (workdir / f"{name}.py").write_text(
            f"open({str(tmp_path / 'imported')!r}, 'a').write({name!r} + '\\n')\n"
        )
    return workdir


def _env(tmp_path: Path, workdir: Path) -> dict[str, str]:
    return {
        "PATH": f"{DOUBLES}:/usr/bin:/bin",
        "DOUBLE_IMAGE_WORKDIR": str(workdir),
        "DOUBLE_IMAGE_OPT": str(REPO),
        "DOUBLE_AWS_LOG": str(tmp_path / "aws.log"),
        "CDK_TRN_METRICS_STATE": str(tmp_path / "efa-counters"),
        "CDK_TRN_DEVICE_ROOT": str(tmp_path / "no-devices"),
    }


@needs_root
def test_the_planted_modules_work_where_nothing_protects_against_them(planted, tmp_path):
    """The test can fail: `python3 -c 'import json'` started in that directory imports the job's
    json.py."""
    subprocess.run(
        ["python3", "-c", "import json"], cwd=planted, check=True, env=_env(tmp_path, planted)
    )
    assert (tmp_path / "imported").read_text() == "json\n"


@needs_root
def test_the_metrics_timer_does_not_import_a_job_s_modules(planted, tmp_path):
    """boot_common.sh publish_metrics, as the node's timer runs it: docker exec into the Slurm
    container, node_metrics.sh (Python reads neuron-monitor's report), aws put-metric-data."""
    from cdk_trn_runtime.node.bundle import write_bundle

    boot = write_bundle("node", tmp_path / "boot").parent
    script = (
        # BOOT_DIR: the entry script sets it before sourcing boot_common.sh (which sources
        # units.sh, imds_guard.sh and the contract from the bundle)
        f'BOOT_DIR="{boot}"; . "{boot}/boot_common.sh"; '
        "CDK_TRN_CLUSTER=c1 CDK_TRN_REGION=us-east-2; "
        "publish_metrics cdk-trn/Node cdk-trn-slurmd node_metrics.sh"
    )
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=planted,
        env=_env(tmp_path, planted),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "imported").exists()
    published = (tmp_path / "aws.log").read_text()
    assert "put-metric-data" in published and '"NeuronCoreUtilization","Value":60.00' in published


@needs_root
def test_node_metrics_started_in_a_job_writable_directory_still_ignores_it(planted, tmp_path):
    """-I alone holds, even where -w was forgotten."""
    done = subprocess.run(
        [str(RUNTIME / "monitoring" / "node_metrics.sh"), "c1"],
        cwd=planted,
        env=_env(tmp_path, planted),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "NeuronCoreUtilization" in done.stdout
    assert not (tmp_path / "imported").exists()
