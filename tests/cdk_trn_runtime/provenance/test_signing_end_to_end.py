"""End to end on loopback: ``python -m cdk_trn_runtime.train`` commits checkpoints, its hook has
the vault (parent server -> enclave signer -> KMS test double, the node role checked through the
STS test double) sign each one, and ``provenance verify`` with the attested key and the expected
run id and step accepts the newest and refuses an older one in its place. With the vault
unreachable the run still commits loadable checkpoints; the next run resumes from them but signs
only its own. A directory planted among the checkpoints is never signed and never counts in the
retention of the run's own, and the staging an aborted save left behind is removed at start-up."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cdk_trn_runtime.provenance.cli import main
from cdk_trn_runtime.train import checkpoint
from tests.support.enclave_doubles import IMAGE_PCR0
from tests.support.enclave_harness import KEY_ID, NODE_KEY, REPO_ROOT

pytestmark = pytest.mark.slow  # trains on CPU


def _train(tmp_path: Path, vault_url: str, steps: int = 4) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO_ROOT),
        "CDK_TRN_DEVICE": "cpu",
        "TRAIN_STEPS": str(steps),
        "CHECKPOINT_EVERY": "2",
        "CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "CDK_TRN_SLURM_ENV": str(tmp_path / "no-node.env"),
        "CDK_TRN_VAULT_URL": vault_url,
        "CDK_TRN_CLUSTER": "trn-test",
        "SLURM_JOB_ID": "4711",
        # The node role's credentials, which the STS test double knows.
        "AWS_ACCESS_KEY_ID": NODE_KEY[0],
        "AWS_SECRET_ACCESS_KEY": NODE_KEY[1],
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return subprocess.run(
        [sys.executable, "-m", "cdk_trn_runtime.train"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _verify(vault_url: str, manifest: Path, directory: Path, *extra: str) -> int:
    return main(
        [
            "verify",
            str(manifest),
            str(directory),
            "--vault",
            vault_url,
            "--pcr0",
            IMAGE_PCR0.hex(),
            "--kms-key-arn",
            KEY_ID,
            *extra,
        ]
    )


def test_training_checkpoints_are_signed_by_the_hook_and_verify(
    trust_test_root, vault, tmp_path, capsys
):
    result = _train(tmp_path, vault.url)
    assert result.returncode == 0, result.stderr
    checkpoints = tmp_path / "checkpoints"
    newest = checkpoint.latest(checkpoints)
    assert newest == checkpoints / "step-00000004"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "latest",
        "step-00000002",
        "step-00000002.manifest.json",
        "step-00000004",
        "step-00000004.manifest.json",
    ]
    assert result.stderr.count("provenance: signed ") == 2, result.stderr
    assert len(vault.sts.requests) == 2  # the node role proven for each signature

    capsys.readouterr()
    manifest = checkpoint.manifest_path(newest)
    code = _verify(vault.url, manifest, newest, "--run-id", "4711", "--step", "4")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "IDENTITY run_id=4711 cluster=trn-test step=4" in out
    assert "OK: 1 files checked" in out

    assert _verify(vault.url, manifest, newest, "--run-id", "4712", "--step", "4") == 1
    assert "MISMATCH run_id: manifest says '4711', expected '4712'" in capsys.readouterr().out

    # Replay: the older, genuinely signed checkpoint copied over the newest.
    older = checkpoints / "step-00000002"
    shutil.rmtree(newest)
    shutil.copytree(older, newest)
    shutil.copy(checkpoint.manifest_path(older), manifest)
    assert _verify(vault.url, manifest, newest, "--run-id", "4711", "--step", "4") == 1
    out = capsys.readouterr().out
    assert "SIGNATURE valid" in out and "MISMATCH step: manifest says 2, expected 4" in out
    assert json.loads(manifest.read_text())["manifest"]["step"] == 2


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def test_an_unreachable_vault_leaves_loadable_checkpoints_the_next_run_resumes_but_does_not_sign(
    trust_test_root, vault, tmp_path, capsys
):
    first = _train(tmp_path, _closed_port_url(), steps=2)
    assert first.returncode == 0, first.stderr
    checkpoints = tmp_path / "checkpoints"
    assert checkpoint.latest(checkpoints) == checkpoints / "step-00000002"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-00000002"]
    assert "WARNING" in first.stderr and "committed but not signed" in first.stderr

    # The vault is back: the next run resumes from the unsigned checkpoint (it loads) and signs
    # its own checkpoint only; the one its predecessor could not sign stays unsigned.
    second = _train(tmp_path, vault.url, steps=4)
    assert second.returncode == 0, second.stderr
    assert f"train: resumed step=2 from={checkpoints / 'step-00000002'}" in second.stdout
    assert second.stderr.count("provenance: signed ") == 1, second.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "latest",
        "step-00000002",
        "step-00000004",
        "step-00000004.manifest.json",
    ]
    newest = checkpoints / "step-00000004"
    capsys.readouterr()
    code = _verify(
        vault.url, checkpoint.manifest_path(newest), newest, "--run-id", "4711", "--step", "4"
    )
    assert code == 0, capsys.readouterr().out


def test_a_planted_checkpoint_is_never_signed_and_stale_staging_is_removed(
    trust_test_root, vault, tmp_path, capsys
):
    checkpoints = tmp_path / "checkpoints"
    planted = checkpoints / "step-99999999"
    planted.mkdir(parents=True)
    (planted / "state.pt").write_bytes(b"not trained by this run")
    (checkpoints / ".step-00000006.abcd_123.tmp").mkdir()  # a save killed mid-way
    (checkpoints / ".step-00000006.abcd_123.tmp" / "state.pt").write_bytes(b"half")

    result = _train(tmp_path, vault.url, steps=4)

    assert result.returncode == 0, result.stderr
    assert str(planted) not in result.stderr
    assert not checkpoint.manifest_path(planted).exists()
    assert result.stderr.count("provenance: signed ") == 2, result.stderr
    assert "train: removed .step-00000006.abcd_123.tmp" in result.stdout
    # The retention removes only checkpoints this run committed: the planted one, although its
    # name ranks newest, neither pushes this run's step 2 out nor is removed or signed.
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "latest",
        "step-00000002",
        "step-00000002.manifest.json",
        "step-00000004",
        "step-00000004.manifest.json",
        "step-99999999",
    ]
    assert (planted / "state.pt").read_bytes() == b"not trained by this run"
    assert checkpoint.latest(checkpoints) == checkpoints / "step-00000004"
    newest = checkpoints / "step-00000004"
    capsys.readouterr()
    code = _verify(
        vault.url, checkpoint.manifest_path(newest), newest, "--run-id", "4711", "--step", "4"
    )
    assert code == 0, capsys.readouterr().out
