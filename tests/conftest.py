"""Shared test setup: quiet jsii, no AWS credentials or endpoints, CPU for the container suite."""

import os

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("CDK_TRN_DEVICE", "cpu")


import pytest  # noqa: E402

# The session fixtures every package shares (tests/support).
from tests.support.default_app import default_app  # noqa: E402, F401

#: Fixtures shared across packages, from tests/support (pytest reads it in the root conftest only).
pytest_plugins = ["tests.support.enclave_fixtures"]


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


#: The longest modules, longest first (a twin, torch, training subprocesses: a minute or more
#: each): pytest puts them first, so that under ``make test`` (pytest-xdist, ``--dist loadscope``:
#: a module is one unit of work, its module fixtures set up once and its tests never run beside
#: each other) they start first. Two of the twin's modules may run at once on two workers: each
#: twin has its own subnet, namespaces and rendezvous ports (test_twin shows two coexisting).
LONG_MODULES = (
    "tests/cdk_trn_runtime/slurm/twin/test_twin.py",
    "tests/cdk_trn_runtime/suite/test_suite_cpu.py",
    "tests/cdk_trn_runtime/acceptance/test_submit_suite_local.py",
    "tests/cdk_trn_runtime/slurm/twin/test_torchrun_job.py",
    "tests/cdk_trn_runtime/provenance/test_signing_end_to_end.py",
    "tests/cdk_trn_runtime/slurm/twin/test_cost_local.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first, the others in collection order (a module's tests together)."""

    def rank(item: pytest.Item) -> int:
        module = item.nodeid.split("::", 1)[0]
        return LONG_MODULES.index(module) if module in LONG_MODULES else len(LONG_MODULES)

    items.sort(key=rank)  # stable
