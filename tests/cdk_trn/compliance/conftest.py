"""Assemblies shared by the compliance tests: each is synthesized once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
import pytest

from cdk_trn.compliance import ComplianceReport, enable_compliance, synth_checked
from tests.cdk_trn.compliance.sample_app import build_clean_stack

REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Synthesized:
    app: cdk.App
    stack: cdk.Stack
    report: ComplianceReport
    outdir: Path


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    outdir: Path


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20")
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="session")
def clean(tmp_path_factory) -> Synthesized:
    """The sample app's clean stack with all five packs, synthesized in this process."""
    outdir = tmp_path_factory.mktemp("clean") / "cdk.out"
    app = cdk.App(outdir=str(outdir))
    enable_compliance(app)
    stack = build_clean_stack(app)
    return Synthesized(app, stack, synth_checked(app), outdir)


@pytest.fixture(scope="session")
def broken(tmp_path_factory) -> Run:
    """The sample app with SSH open to the world, synthesized as its own process."""
    outdir = tmp_path_factory.mktemp("broken") / "cdk.out"
    done = run_module("tests.cdk_trn.compliance.sample_app", "--outdir", str(outdir), "--broken")
    return Run(done.returncode, done.stdout, done.stderr, outdir)
