"""Fixtures for the container suite: tiny sizes, the CPU device, and runs shared by tests.

The suite runs as the container runs it, in subprocesses (``python -m cdk_trn_runtime.suite`` and
``torchrun``), so every run starts torch.compile afresh and meets only the on-disk cache;
module-scoped fixtures keep the number of runs (each compiles real graphs with inductor, which
takes a minute on two cores) small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CONTAINER_DIR = Path(__file__).resolve().parents[3] / "cdk_trn_runtime" / "container"

# Every size tiny: a whole run compiles a handful of small graphs and takes seconds.
TINY_ARGS = [
    "--gemm-sizes",
    "64,128",
    "--gemm-iterations",
    "2",
    "--numerics-max-size",
    "128",
    "--copy-size",
    "1M",
    "--copy-iterations",
    "2",
    "--collective-sizes",
    "64K,1M",
    "--collective-iterations",
    "2",
    "--train-steps",
    "13",
    "--warmup-steps",
    "3",
    "--batch",
    "4",
    "--sequence",
    "32",
    "--vocab",
    "64",
    "--d-model",
    "32",
    "--layers",
    "1",
    "--heads",
    "2",
    "--learning-rate",
    "1e-2",
]


def cpu_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["CDK_TRN_DEVICE"] = "cpu"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TRN_ACCEPTANCE_NODE"] = "test-node"
    return env


@dataclass
class SuiteRun:
    returncode: int
    stdout: str
    stderr: str
    out_dir: Path

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.out_dir / "summary.json").read_text())

    def rank(self, n: int) -> dict[str, Any]:
        return json.loads((self.out_dir / f"rank-{n}.json").read_text())


def run_suite(out_dir: Path, run_id: str, *extra: str, nproc: int = 1) -> SuiteRun:
    if nproc == 1:
        launcher = [sys.executable, "-m", "cdk_trn_runtime.suite"]
    else:
        # --standalone: c10d rendezvous on a free local port.
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            "-m",
            "cdk_trn_runtime.suite",
        ]
    command = [*launcher, "run", "--out-dir", str(out_dir), "--run-id", run_id, *TINY_ARGS, *extra]
    done = subprocess.run(
        command, env=cpu_environment(), capture_output=True, text=True, timeout=240, check=False
    )
    return SuiteRun(done.returncode, done.stdout, done.stderr, out_dir)


@pytest.fixture(scope="session")
def torch_available() -> None:
    """torch is a test extra: a missing torch is an error, not a skip."""
    import torch  # noqa: F401


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compile-cache")


@pytest.fixture(scope="module")
def first_run(
    torch_available: None, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> SuiteRun:
    """One process, an empty compile cache."""
    return run_suite(tmp_path_factory.mktemp("first"), "first-run", "--cache-dir", str(cache_dir))


@pytest.fixture(scope="module")
def second_run(
    first_run: SuiteRun, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> SuiteRun:
    """One process, the cache the first run left, and a GEMM peak no CPU can reach."""
    return run_suite(
        tmp_path_factory.mktemp("second"),
        "second-run",
        "--cache-dir",
        str(cache_dir),
        "--peak-bf16-tflops",
        "1000000",
    )


@pytest.fixture(scope="module")
def two_rank_run(
    second_run: SuiteRun, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> SuiteRun:
    """Two processes under torchrun (gloo) sharing the cache the first run filled, as two jobs
    share the cluster's cache on FSx (local rank 0 runs the warm pass)."""
    return run_suite(
        tmp_path_factory.mktemp("two-ranks"),
        "two-ranks",
        "--cache-dir",
        str(cache_dir),
        nproc=2,
    )
