"""Shared test setup: quiet jsii, no AWS credentials or endpoints, CPU for the container suite."""

import os

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("CDK_TRN_DEVICE", "cpu")


import pytest  # noqa: E402

# The session fixtures every package shares (tests/support).
from tests.support.default_app import default_app  # noqa: E402, F401


@pytest.fixture(autouse=True)
def _environment_and_directory_restored():
    """Whatever a test (or the code it calls, e.g. the suite's compile-cache set-up) puts into
    os.environ or wherever it changes directory does not leak into later tests: the local
    twin's batch jobs inherit the submitting environment, as Slurm's do."""
    saved, cwd = dict(os.environ), os.getcwd()
    yield
    os.environ.clear()
    os.environ.update(saved)
    os.chdir(cwd)

