"""The default app schedules with Slurm: contract outputs; ``-c scheduler=none`` turns it off;
a bad value exits 2 with the key named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from cdk_trn.errors import CdkTrnError
from cdk_trn_runtime import contract
from stacks import build_default_app
from stacks.config import AppConfig

ROOT = Path(__file__).resolve().parents[2]
OUTPUT_KEYS = (
    contract.OUTPUT_CONTROLLER_GROUP,
    contract.OUTPUT_NODE_GROUP,
    contract.OUTPUT_JOB_USER,
    contract.OUTPUT_SHARED_ROOT,
    contract.OUTPUT_SLURM_CLUSTER,
)


def _outputs(config: AppConfig) -> dict:
    app = cdk.App()
    default = build_default_app(app, config)
    return Template.from_stack(default.cluster_stack).to_json().get("Outputs", {})


def test_default_app_exports_the_contract_outputs():
    outputs = _outputs(AppConfig(acceptance=False, enclave_vault=False))
    assert set(OUTPUT_KEYS) <= set(outputs)
    assert outputs[contract.OUTPUT_JOB_USER]["Value"] == contract.SLURM_JOB_USER
    assert outputs[contract.OUTPUT_SHARED_ROOT]["Value"] == "/fsx"
    assert outputs[contract.OUTPUT_SLURM_CLUSTER]["Value"] == contract.SLURM_DEFAULT_CLUSTER_NAME


def test_scheduler_none_builds_no_controller():
    outputs = _outputs(AppConfig(acceptance=False, enclave_vault=False, scheduler="none"))
    assert not set(OUTPUT_KEYS) & set(outputs)


def test_scheduler_context_key_is_validated():
    app = cdk.App(context={"scheduler": "pbs"})
    with pytest.raises(CdkTrnError, match="scheduler must be slurm or none, got 'pbs'"):
        AppConfig.from_context(app.node)


def test_app_with_a_bad_scheduler_exits_2_with_the_message():
    env = {
        **os.environ,
        "CDK_CONTEXT_JSON": json.dumps({"scheduler": "pbs"}),
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py")], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2, result.stderr
    assert "scheduler must be slurm or none, got 'pbs'" in result.stderr
