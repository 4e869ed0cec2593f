"""The bundled container's Dockerfile, parsed: pinned base, no secrets, only the runtime copied,
Slurm and munge installed, the job user of the contract."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import CONTAINER_DIR

BASE_IMAGE = (
    "public.ecr.aws/neuron/pytorch-training-neuronx:2.9.0-neuronx-py312-sdk2.30.0-ubuntu24.04"
)
SECRET_WORDS = re.compile(
    r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|"
    r"API_KEY|AWS_SESSION",
    re.IGNORECASE,
)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(CONTAINER_DIR / "Dockerfile")


def test_single_from_is_the_pinned_neuron_training_image(dockerfile):
    assert [args for kw, args in dockerfile if kw == "FROM"] == [BASE_IMAGE]


def test_no_image_reference_uses_latest(dockerfile):
    assert not any("latest" in args for kw, args in dockerfile if kw == "FROM")


def test_no_build_arguments(dockerfile):
    assert [args for kw, args in dockerfile if kw == "ARG"] == []


def test_no_secret_in_environment_or_labels(dockerfile):
    for keyword, args in dockerfile:
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not SECRET_WORDS.search(args), args


def test_copies_only_the_runtime_package(dockerfile):
    sources = [args.split()[0] for kw, args in dockerfile if kw in ("COPY", "ADD")]
    assert sources == ["cdk_trn_runtime"]
    assert not any(kw == "ADD" for kw, _ in dockerfile)


def test_runtime_is_importable_in_the_image_without_installing_dependencies(dockerfile):
    runs = " ".join(args for kw, args in dockerfile if kw == "RUN")
    assert "pip install" not in runs
    [env] = [args for kw, args in dockerfile if kw == "ENV" and "PYTHONPATH" in args]
    assert "PYTHONPATH=/opt/cdk-trn" in env


def test_entrypoint_runs_the_suite(dockerfile):
    [entrypoint] = [args for kw, args in dockerfile if kw == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["python", "-m", "cdk_trn_runtime.suite"]


def test_workdir_is_not_root_or_home(dockerfile):
    [workdir] = [args for kw, args in dockerfile if kw == "WORKDIR"]
    assert workdir not in ("/", "/root") and workdir.startswith("/")


def test_installs_slurm_and_munge_from_the_ubuntu_archive(dockerfile):
    runs = " ".join(" ".join(args.split()) for kw, args in dockerfile if kw == "RUN")
    assert "apt-get install -y --no-install-recommends slurm-wlm munge" in runs
    # The package lists go with the layer that used them.
    assert runs.index("apt-get update") < runs.index("rm -rf /var/lib/apt/lists/*")


def test_job_user_has_the_contract_name_and_uid(dockerfile):
    from cdk_trn_runtime.contract import SLURM_JOB_UID, SLURM_JOB_USER

    runs = " ".join(" ".join(args.split()) for kw, args in dockerfile if kw == "RUN")
    match = re.search(r"useradd (.*?) (\w+) (&&|$)", runs)
    assert match, runs
    options, user = match.group(1), match.group(2)
    assert user == SLURM_JOB_USER
    assert f"--uid {SLURM_JOB_UID} " in options + " "
    assert f"--home-dir /home/{SLURM_JOB_USER}" in options


def test_image_ships_the_slurm_subpackage():
    from cdk_trn.acceptance.image import BUNDLED_SUBPACKAGES

    assert "slurm" in BUNDLED_SUBPACKAGES
