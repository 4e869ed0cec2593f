"""One option picks the training image of the scheduler, the acceptance run and users' jobs:
``-c trainingImage=<Dockerfile directory or ECR URI>`` in the default app, which is
``NeuronTrainingImage.from_reference`` for the constructs' ``image`` prop. The bundled image's
versions are stack outputs."""

from __future__ import annotations

import json
import re

import aws_cdk as cdk
import pytest

from cdk_trn.acceptance.image import NeuronTrainingImage, bundled_versions
from cdk_trn.errors import CdkTrnError
from stacks import build_default_app
from stacks.config import AppConfig

URI = "123456789012.dkr.ecr.us-east-2.amazonaws.com/team/trn-train:2026-12-06"


def test_a_directory_with_a_dockerfile_is_built_from_it(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM base\n")
    config = AppConfig.from_context(cdk.App(context={"trainingImage": str(tmp_path)}).node)
    image = NeuronTrainingImage.from_reference(str(config.training_image))
    assert image.directory == tmp_path.resolve()
    assert not image.is_bundled


@pytest.mark.parametrize(
    "value",
    [
        "/no/such/dir",
        "123456789012.dkr.ecr.us-east-2.amazonaws.com/team/img",  # no tag: no implicit latest
        "123456789012.dkr.ecr.us-east-2.amazonaws.com/team/img@sha256:abc",
        "docker.io/library/python:3.14",
    ],
)
def test_anything_else_is_refused_at_synth_naming_the_option(value):
    with pytest.raises(CdkTrnError, match=r"trainingImage must be|training image URI must be"):
        AppConfig.from_context(cdk.App(context={"trainingImage": value}).node)


def test_an_ecr_uri_binds_to_its_repository_for_pull_permissions():
    stack = cdk.Stack(cdk.App(), "S")
    bound = NeuronTrainingImage.from_reference(URI).bind(stack)
    assert bound.image_uri == URI
    arn = stack.resolve(bound.repository.repository_arn)
    assert arn == "arn:aws:ecr:us-east-2:123456789012:repository/team/trn-train"


def test_bundled_versions_come_from_the_dockerfile():
    versions = bundled_versions()
    assert versions["neuron_sdk"] == "2.33.0"
    assert versions["torch"].startswith("2.14.")
    assert versions["torch_neuronx"].startswith("2.14.3")
    assert "Ubuntu 26.04" in versions["slurm"]


@pytest.mark.slow
def test_the_option_reaches_the_scheduler_and_the_bundled_versions_are_outputs():
    def cluster_template(context):
        app = cdk.App(context={"enclaveVault": "false", "dashboard": "false", **context})
        default = build_default_app(app)
        assembly = app.synth()
        return assembly.get_stack_by_name(default.cluster_stack.stack_name).template

    custom = cluster_template({"trainingImage": URI})
    text = json.dumps(custom)
    # The nodes' and the controller's user data run slurmd/slurmctld (and so every job and the
    # acceptance run, a Slurm job) in this image.
    assert text.count(URI) >= 2
    assert custom["Outputs"]["TrainingImage"]["Value"] == URI
    assert "TrainingImageNeuronSdk" not in custom["Outputs"]

    bundled = cluster_template({})
    outputs = bundled["Outputs"]
    assert outputs["TrainingImageNeuronSdk"]["Value"] == "2.33.0"
    assert re.fullmatch(r"2\.14\.\d+", outputs["TrainingImageTorch"]["Value"])
    assert outputs["TrainingImageTorchNeuronx"]["Value"].startswith("2.14.3")
    assert "slurm" in outputs["TrainingImageSlurm"]["Value"]
