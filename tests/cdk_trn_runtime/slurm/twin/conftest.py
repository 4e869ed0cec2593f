"""The ``cluster`` fixture: each test module that asks for it runs its own local Slurm cluster
(tests/cdk_trn_runtime/slurm/twin/harness.py), stopped and checked when the module is done."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cdk_trn_runtime.slurm.twin.harness import Cluster, local_cluster


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    with local_cluster(prefix=f"cdk-trn-{name}-") as handle:
        yield handle
