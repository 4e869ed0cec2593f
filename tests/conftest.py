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


#: Modules that run the local twin (tests/slurm/harness.py: namespaces, slurmctld, slurmd,
#: torchrun jobs). One pytest-xdist worker runs them one after another (never two twins at once
#: on a small machine), and they start first: together they are the suite's longest chain.
LOCAL_TWIN_MODULES = (
    "tests/slurm/test_twin.py",
    "tests/acceptance/test_slurm_job_local.py",
    "tests/slurm/test_torchrun_job.py",
    "tests/slurm/test_cost_local.py",
    # Not a twin, but its processes carry Slurm job ids (SLURM_JOB_ID=7, 8) in the host's
    # process table, which the twin's nodes share: once, beside a running twin, one was killed.
    "tests/slurm/test_node_scripts.py",
)
#: Then the other long modules (a minute or more of torch, subprocesses or synths), longest first.
LONG_MODULES = (
    "tests/container/test_suite_cpu.py",
    "tests/enclave/test_checkpoint_signing_end_to_end.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Units of work for ``pytest -n`` with ``--dist loadgroup`` (``make test``): a module is one
    unit (its module-scoped fixtures are set up once), the twin's modules together are one; the
    longest units come first so that they start first. Without xdist only the order changes."""

    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]

    def rank(item: pytest.Item) -> int:
        path = module(item)
        if path in LOCAL_TWIN_MODULES:
            return LOCAL_TWIN_MODULES.index(path)
        if path in LONG_MODULES:
            return len(LOCAL_TWIN_MODULES) + LONG_MODULES.index(path)
        return len(LOCAL_TWIN_MODULES) + len(LONG_MODULES)

    for item in items:
        group = "local-twin" if module(item) in LOCAL_TWIN_MODULES else module(item)
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=rank)  # stable: the collection order within each rank
