"""The bundled container's Dockerfile, parsed: a TorchNeuron base of Neuron 2.33 or later pinned on
its first line, no secrets, only the runtime copied, Slurm and munge installed, the job user of the
contract, the tools checked at build time."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cdk_trn_runtime.suite.conftest import CONTAINER_DIR

BASE_IMAGE = (
    "public.ecr.aws/neuron/pytorch-training-neuronx:2.14.0-neuronx-py314-sdk2.33.0-ubuntu26.04"
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


def test_the_first_line_is_a_torchneuron_training_image_of_neuron_2_33_or_later():
    first = (CONTAINER_DIR / "Dockerfile").read_text().splitlines()[0]
    match = re.fullmatch(
        r"FROM public\.ecr\.aws/neuron/pytorch-training-neuronx:"
        r"(\d+)\.(\d+)\.\d+-neuronx-py3\d+-sdk2\.(\d+)\.\d+-ubuntu\d+\.\d+(@sha256:[0-9a-f]{64})?",
        first,
    )
    assert match, first
    # TorchNeuron is torch-neuronx for PyTorch 2.13 / 2.14 (2.9 was the PyTorch/XLA one).
    assert (int(match.group(1)), int(match.group(2))) >= (2, 13)
    assert int(match.group(3)) >= 33


def test_the_neuron_release_is_a_label_and_the_source_is_given(dockerfile):
    labels = " ".join(args for kw, args in dockerfile if kw == "LABEL")
    assert 'com.cdk-trn.neuron-release="2.33.0"' in labels
    text = (CONTAINER_DIR / "Dockerfile").read_text()
    assert "Source:" in text


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

    users = _users(dockerfile)
    options = users[SLURM_JOB_USER]
    assert f"--uid {SLURM_JOB_UID} " in options + " "
    assert f"--home-dir /home/{SLURM_JOB_USER}" in options


def _users(dockerfile) -> dict[str, str]:
    """useradd's options by user name, in every RUN."""
    runs = " ".join(" ".join(args.split()) for kw, args in dockerfile if kw == "RUN")
    users = {m.group(2): m.group(1) for m in re.finditer(r"useradd (.*?) (\w+) (&&|$)", runs)}
    assert users, runs
    return users


def test_the_slurm_daemons_user_has_the_contract_uid_the_controller_guard_lets_through(
    dockerfile,
):
    """slurmctld runs power saving's programs (botocore, instance role) as SlurmUser; the
    controller boot's metadata guard lets exactly that uid through, so the image pins it."""
    from cdk_trn_runtime.contract import SLURM_DAEMON_UID, SLURM_DAEMON_USER
    from cdk_trn_runtime.slurm.config import SlurmConfig

    assert SlurmConfig.__dataclass_fields__["slurm_user"].default == SLURM_DAEMON_USER
    options = _users(dockerfile)[SLURM_DAEMON_USER]
    assert f"--uid {SLURM_DAEMON_UID} " in options + " "
    runs = " ".join(" ".join(args.split()) for kw, args in dockerfile if kw == "RUN")
    # created before the package, which would otherwise pick its own uid; checked after
    assert runs.index(f"--uid {SLURM_DAEMON_UID}") < runs.index("apt-get install")
    assert f'test "$(id -u {SLURM_DAEMON_USER})" = {SLURM_DAEMON_UID}' in runs
    boot = (CONTAINER_DIR.parent / "node" / "controller_bootstrap.sh").read_text()
    assert "\nSLURM_DAEMON_UID=$CONTRACT_SLURM_DAEMON_UID\n" in boot
    contract_sh = (CONTAINER_DIR.parent / "contract" / "contract.sh").read_text()
    assert f"\nreadonly CONTRACT_SLURM_DAEMON_UID='{SLURM_DAEMON_UID}'\n" in contract_sh
    assert 'guard_imds "$SLURM_DAEMON_UID" ||' in boot


def test_image_ships_the_slurm_subpackage():
    from cdk_trn.acceptance.image import BUNDLED_SUBPACKAGES

    assert "slurm" in BUNDLED_SUBPACKAGES


# --- the checkpoint signer in the image ---------------------------------------------------------


@pytest.fixture(scope="module")
def image_context(tmp_path_factory) -> list[str]:
    """The files of the bundled image's build context, as ``cdk synth`` stages them."""
    import aws_cdk as cdk

    from cdk_trn.acceptance.image import NeuronTrainingImage

    out = tmp_path_factory.mktemp("cdk-out")
    app = cdk.App(outdir=str(out))
    stack = cdk.Stack(app, "Image")
    bound = NeuronTrainingImage.bundled().bind(stack)
    assert bound.asset is not None
    app.synth()
    staged = out / f"asset.{bound.asset.asset_hash}"
    return sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())


def test_image_carries_the_checkpoint_signer_and_not_the_enclave(image_context):
    for module in (
        "cdk_trn_runtime/provenance/signing.py",
        "cdk_trn_runtime/provenance/manifest.py",
        "cdk_trn_runtime/provenance/cli.py",
        "cdk_trn_runtime/vault/client.py",
        "cdk_trn_runtime/vault/protocol.py",
        "cdk_trn_runtime/train/checkpoint.py",
        "cdk_trn_runtime/container/Dockerfile",
    ):
        assert module in image_context
    assert not [f for f in image_context if f.startswith("cdk_trn_runtime/enclave/")]
    assert not [f for f in image_context if f.startswith("cdk_trn/") or "__pycache__" in f]


def test_image_build_fails_unless_the_signer_imports(dockerfile):
    runs = [args for kw, args in dockerfile if kw == "RUN"]
    (check,) = [r for r in runs if "python -c" in r]
    for module in (
        "cdk_trn_runtime.provenance.signing",
        "cdk_trn_runtime.vault.client",
        "botocore.auth",
    ):
        assert module in check


def test_signer_and_training_import_only_bundled_subpackages_and_no_cbor2():
    """What the training entry point pulls in must be in the image: nothing from enclave/ (and so
    no cbor2, which the base image need not have)."""
    import subprocess
    import sys

    from cdk_trn.acceptance.image import BUNDLED_SUBPACKAGES

    probe = (
        "import sys; sys.modules['cbor2'] = None\n"
        "import cdk_trn_runtime.train.__main__, cdk_trn_runtime.provenance.signing\n"
        "import cdk_trn_runtime.provenance.cli, cdk_trn_runtime.vault.client\n"
        "print(' '.join(sorted({m.split('.')[1] for m in sys.modules\n"
        "    if m.startswith('cdk_trn_runtime.')})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    used = set(result.stdout.split()) - {"contract"}
    assert used <= set(BUNDLED_SUBPACKAGES), used
    assert {"provenance", "vault", "train"} <= used


def test_build_fails_without_torch_torch_neuronx_and_the_tools(dockerfile):
    runs = " ".join(" ".join(args.split()) for kw, args in dockerfile if kw == "RUN")
    assert 'python -c "import torch, torch_neuronx;' in runs
    assert "slurmd -V" in runs and "command -v slurmd" in runs
    assert "xla" not in runs.lower()


def test_build_fails_without_the_tools_the_node_scripts_call_in_the_containers(dockerfile):
    # node_checks.sh (aws autoscaling set-instance-health) and node_metrics.sh (neuron-monitor,
    # aws cloudwatch put-metric-data) run inside the Slurm containers of this image.
    scripts = Path(__file__).resolve().parents[3] / "cdk_trn_runtime"
    assert (
        "aws autoscaling set-instance-health"
        in (scripts / "slurm" / "scripts" / "node_checks.sh").read_text()
    )
    assert "neuron-monitor" in (scripts / "monitoring" / "node_metrics.sh").read_text()
    runs = " ".join(" ".join(args.split()) for kw, args in dockerfile if kw == "RUN")
    assert "aws --version" in runs
    assert "command -v neuron-monitor" in runs
