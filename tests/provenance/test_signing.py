"""The signing hook: a committed checkpoint gets a signed manifest beside it; a failure to sign
leaves the checkpoint committed and loadable and is retried at the next checkpoint; the vault is
found through the cluster's SSM parameter (read through botocore's Stubber)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from cdk_trn_runtime import contract
from cdk_trn_runtime.provenance import manifest_digest, verify_signed_manifest
from cdk_trn_runtime.provenance.signing import (
    CheckpointSigner,
    SigningError,
    VaultLocator,
    checked_vault_signature,
    write_signed_manifest,
)
from cdk_trn_runtime.train import checkpoint
from cdk_trn_runtime.vault.client import VaultError

CLUSTER = "trn-cluster"
REGION = "us-east-2"
PARAMETER = "/cdk-trn/trn-cluster/vault-url"
URL = "http://10.0.1.5:8443"


class LocalKeyVaultTestDouble:
    """Stands in for the vault client: signs with a local P-384 key, as the enclave would."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key = key
        self.digests: list[bytes] = []

    def sign_digest(self, digest: bytes) -> dict[str, Any]:
        self.digests.append(digest)
        signature = self.key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA384())))
        public = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {
            "public_key": base64.b64encode(public).decode(),
            "signature": base64.b64encode(signature).decode(),
        }


class UnreachableVaultTestDouble:
    """Stands in for a vault that cannot be reached (what VaultClient raises then)."""

    def sign_digest(self, digest: bytes) -> dict[str, Any]:
        raise VaultError(0, "unreachable", "vault http://10.0.1.5:8443 unreachable: timed out")


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _signer(make_signer, locator=None, log=None, run_id="4711") -> CheckpointSigner:
    return CheckpointSigner(
        locator=locator or VaultLocator(url=URL),
        cluster=CLUSTER,
        run_id=run_id,
        make_signer=make_signer,
        log=log if log is not None else (lambda line: None),
    )


def _save(directory: Path, step: int, data: bytes = b"weights") -> Path:
    return checkpoint.save(directory, step, lambda handle: handle.write(data))


def _verify(path: Path, key: ec.EllipticCurvePrivateKey, **expected: Any):
    signed = json.loads(checkpoint.manifest_path(path).read_text())
    return verify_signed_manifest(signed, path, key.public_key(), expected=expected)


def test_hook_signs_the_committed_checkpoint_and_writes_the_manifest_beside_it(tmp_path, key):
    vault = LocalKeyVaultTestDouble(key)
    urls: list[str] = []
    signer = _signer(lambda url: urls.append(url) or vault)
    path = _save(tmp_path, 5)

    written = signer.after_commit(path, checkpoint.checkpoints(tmp_path))

    assert written == [tmp_path.resolve() / "step-00000005.manifest.json"]
    assert urls == [URL] and len(vault.digests) == 1
    assert sorted(p.name for p in path.iterdir()) == ["state.pt"]  # nothing added inside
    report = _verify(
        path, key, run_id="4711", cluster=CLUSTER, step=5, checkpoint_path=str(path.resolve())
    )
    assert report.ok, report.lines()
    assert [f["path"] for f in json.loads(written[0].read_text())["manifest"]["files"]] == [
        "state.pt"
    ]


def test_signing_failure_leaves_the_checkpoint_committed_and_loadable(tmp_path, key):
    lines: list[str] = []
    signer = _signer(lambda url: UnreachableVaultTestDouble(), log=lines.append)
    path = _save(tmp_path, 5, b"five")

    assert signer.after_commit(path, checkpoint.checkpoints(tmp_path)) == []

    assert checkpoint.latest(tmp_path) == path
    assert checkpoint.state_file(path).read_bytes() == b"five"
    assert not checkpoint.manifest_path(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000005"]
    (line,) = lines
    assert "WARNING" in line and "committed but not signed" in line and "unreachable" in line
    assert "retried at the next checkpoint" in line


def test_a_checkpoint_left_unsigned_is_signed_at_the_next_checkpoint(tmp_path, key):
    vault = LocalKeyVaultTestDouble(key)
    answers = iter([UnreachableVaultTestDouble(), vault, vault])
    signer = _signer(lambda url: next(answers))
    first = _save(tmp_path, 5)
    signer.after_commit(first, checkpoint.checkpoints(tmp_path))
    second = _save(tmp_path, 10)

    written = signer.after_commit(second, checkpoint.checkpoints(tmp_path))

    assert [p.name for p in written] == [
        "step-00000010.manifest.json",
        "step-00000005.manifest.json",
    ]
    assert _verify(first, key, step=5).ok and _verify(second, key, step=10).ok


def test_a_wrong_signature_from_the_vault_writes_no_manifest(tmp_path, key):
    class WrongSignatureVaultTestDouble(LocalKeyVaultTestDouble):
        def sign_digest(self, digest: bytes) -> dict[str, Any]:
            return super().sign_digest(bytes(48))  # signs another digest

    lines: list[str] = []
    signer = _signer(lambda url: WrongSignatureVaultTestDouble(key), log=lines.append)
    path = _save(tmp_path, 5)
    assert signer.after_commit(path) == []
    assert not checkpoint.manifest_path(path).exists()
    assert "does not hold a valid signature" in lines[0]


def test_checked_vault_signature_refuses_another_key_than_the_expected(key):
    manifest = {"format": "x", "files": []}
    reply = LocalKeyVaultTestDouble(key).sign_digest(manifest_digest(manifest))
    with pytest.raises(SigningError, match="expected 00"):
        checked_vault_signature(manifest, reply, "00" * 32)


def test_a_manifest_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "step-00000005.manifest.json"

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_signed_manifest(target, {"manifest": {}, "signature": {}})
    assert list(tmp_path.iterdir()) == []


# --- finding the vault: the cluster's SSM parameter ---------------------------------------------


@pytest.fixture
def ssm():
    client = boto3.client(
        "ssm",
        region_name=REGION,
        aws_access_key_id="AKIATEST",
        aws_secret_access_key="test",
    )
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def _parameter(stubber: Stubber, value: str) -> None:
    stubber.add_response(
        "get_parameter",
        {"Parameter": {"Name": PARAMETER, "Type": "String", "Value": value, "Version": 2}},
        {"Name": PARAMETER},
    )


def _no_parameter(stubber: Stubber) -> None:
    stubber.add_client_error(
        "get_parameter",
        service_error_code="ParameterNotFound",
        http_status_code=400,
        expected_params={"Name": PARAMETER},
    )


def test_the_vault_url_is_read_from_the_clusters_parameter_at_each_checkpoint(tmp_path, ssm, key):
    client, stubber = ssm
    _parameter(stubber, URL)
    _parameter(stubber, "http://10.0.1.77:8443")  # the host was replaced meanwhile
    urls: list[str] = []
    vault = LocalKeyVaultTestDouble(key)
    locator = VaultLocator(parameter=PARAMETER, region=REGION, ssm_client=client)
    signer = _signer(lambda url: urls.append(url) or vault, locator=locator)
    signer.after_commit(_save(tmp_path, 5))
    signer.after_commit(_save(tmp_path, 10))
    assert urls == [URL, "http://10.0.1.77:8443"]


def test_no_parameter_means_the_cluster_has_no_vault_said_once(tmp_path, ssm):
    client, stubber = ssm
    _no_parameter(stubber)
    _no_parameter(stubber)
    lines: list[str] = []
    locator = VaultLocator(parameter=PARAMETER, region=REGION, ssm_client=client)
    signer = _signer(lambda url: pytest.fail("no vault to call"), locator=locator, log=lines.append)
    first = _save(tmp_path, 5)
    assert signer.after_commit(first) == []
    assert signer.after_commit(_save(tmp_path, 10), [first]) == []
    assert lines == [
        f"provenance: checkpoints are not signed: the cluster {CLUSTER} has no vault "
        f"(SSM parameter {PARAMETER} in {REGION} does not exist)"
    ]


def test_a_parameter_without_a_url_yet_is_a_failure_retried_later(tmp_path, ssm):
    client, stubber = ssm
    _parameter(stubber, contract.VAULT_URL_PENDING)
    lines: list[str] = []
    locator = VaultLocator(parameter=PARAMETER, region=REGION, ssm_client=client)
    signer = _signer(lambda url: pytest.fail("no URL yet"), locator=locator, log=lines.append)
    assert signer.after_commit(_save(tmp_path, 5)) == []
    assert "holds no vault URL yet" in lines[0] and "retried" in lines[0]


def test_a_denied_parameter_read_is_a_failure_not_a_missing_vault(ssm):
    client, stubber = ssm
    stubber.add_client_error(
        "get_parameter",
        service_error_code="AccessDeniedException",
        service_message="not authorized to perform: ssm:GetParameter",
        http_status_code=400,
        expected_params={"Name": PARAMETER},
    )
    locator = VaultLocator(parameter=PARAMETER, region=REGION, ssm_client=client)
    with pytest.raises(SigningError, match="AccessDeniedException"):
        locator.find()


# --- the job's environment ------------------------------------------------------------------------


def test_a_job_on_a_cluster_node_finds_cluster_region_and_run_id_by_itself(tmp_path):
    node_env = tmp_path / "slurm-node.env"
    node_env.write_text(f"CDK_TRN_CLUSTER={CLUSTER}\nCDK_TRN_REGION={REGION}\nOTHER=x\n")
    signer = CheckpointSigner.from_environment(
        {"CDK_TRN_SLURM_ENV": str(node_env), "SLURM_JOB_ID": "812"}, log=pytest.fail
    )
    assert signer is not None
    assert (signer.cluster, signer.run_id) == (CLUSTER, "812")
    assert (signer.locator.parameter, signer.locator.region) == (PARAMETER, REGION)
    assert contract.vault_url_parameter(CLUSTER) == PARAMETER


def test_the_environment_overrides_the_url_and_the_run_id(tmp_path):
    signer = CheckpointSigner.from_environment(
        {
            "CDK_TRN_SLURM_ENV": str(tmp_path / "absent.env"),
            "CDK_TRN_VAULT_URL": URL,
            "CDK_TRN_CLUSTER": "trn-local",
            "CDK_TRN_RUN_ID": "run-7",
            "SLURM_JOB_ID": "812",
        },
        log=pytest.fail,
    )
    assert signer is not None
    assert (signer.locator.url, signer.cluster, signer.run_id) == (URL, "trn-local", "run-7")


def test_without_a_vault_url_or_a_cluster_region_signing_is_off_and_says_so(tmp_path):
    lines: list[str] = []
    env = {"CDK_TRN_SLURM_ENV": str(tmp_path / "absent.env"), "SLURM_CLUSTER_NAME": "trn"}
    assert CheckpointSigner.from_environment(env, log=lines.append) is None
    assert lines == [
        "provenance: checkpoints are not signed: no vault URL ($CDK_TRN_VAULT_URL) and no "
        "cluster name and region to find one"
    ]
