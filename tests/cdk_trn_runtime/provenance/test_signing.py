"""The signing hook: a checkpoint this process committed gets a signed manifest, of the files as
it wrote them, beside it; nothing else in the directory is ever signed; a failure to sign (any
exception) leaves the checkpoint committed and loadable and is retried at the next checkpoint;
every signature of a job is by the one key the vault published when the job first signed; the
vault is found through the cluster's SSM parameter (read through botocore's Stubber)."""

from __future__ import annotations

import base64
import hashlib
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


def _public_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class LocalKeyVaultTestDouble:
    """Stands in for the vault client: publishes its key and signs with a local P-384 key, as
    the enclave would."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key = key
        self.digests: list[bytes] = []

    def info(self) -> dict[str, Any]:
        return {"public_key": base64.b64encode(_public_der(self.key)).decode()}

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

    def info(self) -> dict[str, Any]:
        raise VaultError(0, "unreachable", "vault http://10.0.1.5:8443 unreachable: timed out")

    def sign_digest(self, digest: bytes) -> dict[str, Any]:
        raise VaultError(0, "unreachable", "vault http://10.0.1.5:8443 unreachable: timed out")


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _signer(make_signer, locator=None, log=None, run_id="4711", **kwargs) -> CheckpointSigner:
    return CheckpointSigner(
        locator=locator or VaultLocator(url=URL),
        cluster=CLUSTER,
        run_id=run_id,
        make_signer=make_signer,
        log=log if log is not None else (lambda line: None),
        **kwargs,
    )


def _save(directory: Path, step: int, data: bytes = b"weights", keep: int = 2) -> Path:
    """A checkpoint committed by another process (a predecessor job, anyone): no manifest."""
    return checkpoint.save(directory, step, lambda handle: handle.write(data), keep)


def _commit(
    signer: CheckpointSigner, directory: Path, step: int, data: bytes = b"weights", keep: int = 2
) -> tuple[Path, list[Path]]:
    """What the training entry point does: hash the staged files before the rename, commit,
    then call the hook. The committed checkpoint and the manifests the hook wrote."""
    manifests: list[dict[str, Any]] = []

    def measure(staging: Path, final: Path) -> None:
        manifest = signer.manifest_of(staging, final, step)
        assert manifest is not None
        manifests.append(manifest)

    path = checkpoint.save(
        directory, step, lambda handle: handle.write(data), keep, before_commit=measure
    )
    return path, signer.after_commit(path, manifests[0])


def _verify(path: Path, key: ec.EllipticCurvePrivateKey, **expected: Any):
    signed = json.loads(checkpoint.manifest_path(path).read_text())
    return verify_signed_manifest(signed, path, key.public_key(), expected=expected)


def test_hook_signs_the_committed_checkpoint_and_writes_the_manifest_beside_it(tmp_path, key):
    vault = LocalKeyVaultTestDouble(key)
    urls: list[str] = []
    signer = _signer(lambda url: urls.append(url) or vault)

    path, written = _commit(signer, tmp_path, 5)

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

    path, written = _commit(signer, tmp_path, 5, b"five")

    assert written == []
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
    first, _ = _commit(signer, tmp_path, 5)

    second, written = _commit(signer, tmp_path, 10)

    assert [p.name for p in written] == [
        "step-00000005.manifest.json",
        "step-00000010.manifest.json",
    ]
    assert _verify(first, key, step=5).ok and _verify(second, key, step=10).ok
    assert signer.pending == {}


def test_only_checkpoints_this_process_committed_are_signed(tmp_path, key):
    # A predecessor job's unsigned checkpoint, and one planted by anyone who can write there.
    predecessor = _save(tmp_path, 5, keep=3)
    planted = tmp_path / "step-99999999"
    planted.mkdir()
    (planted / "state.pt").write_bytes(b"backdoored weights")
    vault = LocalKeyVaultTestDouble(key)
    signer = _signer(lambda url: vault)

    path, written = _commit(signer, tmp_path, 10, keep=3)
    _, later = _commit(signer, tmp_path, 15, keep=4)

    assert [p.name for p in written + later] == [
        "step-00000010.manifest.json",
        "step-00000015.manifest.json",
    ]
    assert len(vault.digests) == 2
    assert not checkpoint.manifest_path(predecessor).exists()
    assert not checkpoint.manifest_path(planted).exists()
    assert _verify(path, key, run_id="4711", step=10).ok


def test_the_manifest_lists_the_files_as_written_not_as_found_when_signing(tmp_path, key):
    vault = LocalKeyVaultTestDouble(key)
    answers = iter([UnreachableVaultTestDouble(), vault, vault])
    signer = _signer(lambda url: next(answers))
    first, _ = _commit(signer, tmp_path, 5, b"as trained")
    checkpoint.state_file(first).write_bytes(b"swapped before the retry")  # between the commits

    _commit(signer, tmp_path, 10)

    report = _verify(first, key, step=5)
    assert report.signature_valid and report.tampered == ["state.pt"]


def test_an_unsigned_checkpoint_removed_by_the_retention_is_forgotten(tmp_path, key):
    vault = LocalKeyVaultTestDouble(key)
    answers = iter([UnreachableVaultTestDouble(), UnreachableVaultTestDouble(), vault])
    signer = _signer(lambda url: next(answers))
    first, _ = _commit(signer, tmp_path, 5, keep=1)
    _commit(signer, tmp_path, 10, keep=1)  # the vault is still away; step 5 is removed
    assert not first.exists()

    _, written = _commit(signer, tmp_path, 15, keep=1)

    assert [p.name for p in written] == ["step-00000015.manifest.json"]
    assert len(vault.digests) == 1 and signer.pending == {}


class ExplodingVaultTestDouble(LocalKeyVaultTestDouble):
    """Stands in for a client failing in a way nobody foresaw."""

    def sign_digest(self, digest: bytes) -> dict[str, Any]:
        raise RuntimeError("the unforeseen")


class MalformedInfoVaultTestDouble(LocalKeyVaultTestDouble):
    def info(self) -> dict[str, Any]:
        return {"server_id": "x"}  # no public_key


@pytest.mark.parametrize(
    ("double", "said"),
    [
        (ExplodingVaultTestDouble, "RuntimeError: the unforeseen"),
        (MalformedInfoVaultTestDouble, "publishes no usable public key: KeyError"),
    ],
)
def test_any_exception_while_signing_is_logged_with_its_type_and_training_goes_on(
    tmp_path, key, double, said
):
    lines: list[str] = []
    signer = _signer(lambda url: double(key), log=lines.append)

    path, written = _commit(signer, tmp_path, 5)

    assert written == [] and checkpoint.latest(tmp_path) == path
    assert not checkpoint.manifest_path(path).exists()
    assert any(said in line and "retried at the next checkpoint" in line for line in lines), lines
    assert list(signer.pending) == [path.resolve()]


def test_a_wrong_signature_from_the_vault_writes_no_manifest(tmp_path, key):
    class WrongSignatureVaultTestDouble(LocalKeyVaultTestDouble):
        def sign_digest(self, digest: bytes) -> dict[str, Any]:
            return super().sign_digest(bytes(48))  # signs another digest

    lines: list[str] = []
    signer = _signer(lambda url: WrongSignatureVaultTestDouble(key), log=lines.append)
    path, written = _commit(signer, tmp_path, 5)
    assert written == []
    assert not checkpoint.manifest_path(path).exists()
    assert any("does not hold a valid signature" in line for line in lines)


# --- one key per job ------------------------------------------------------------------------------


class OtherKeyVaultTestDouble(LocalKeyVaultTestDouble):
    """A vault that publishes one key and signs with another (valid signatures)."""

    def __init__(self, published: ec.EllipticCurvePrivateKey, signing: ec.EllipticCurvePrivateKey):
        super().__init__(signing)
        self.published = published

    def info(self) -> dict[str, Any]:
        return {"public_key": base64.b64encode(_public_der(self.published)).decode()}


def test_a_signature_by_another_key_than_the_vault_publishes_is_not_signed(tmp_path, key):
    lines: list[str] = []
    other = ec.generate_private_key(ec.SECP384R1())
    signer = _signer(lambda url: OtherKeyVaultTestDouble(key, other), log=lines.append)

    path, written = _commit(signer, tmp_path, 5)

    assert written == [] and not checkpoint.manifest_path(path).exists()
    published = hashlib.sha256(_public_der(key)).hexdigest()
    assert signer.key_sha256 == published
    assert any(f"expected {published}" in line for line in lines), lines


def test_the_key_is_read_once_per_job_and_a_vault_with_another_key_does_not_sign(tmp_path, key):
    lines: list[str] = []
    replaced = LocalKeyVaultTestDouble(ec.generate_private_key(ec.SECP384R1()))
    answers = iter([LocalKeyVaultTestDouble(key), replaced])
    signer = _signer(lambda url: next(answers), log=lines.append)
    first, _ = _commit(signer, tmp_path, 5)
    pinned = signer.key_sha256

    second, written = _commit(signer, tmp_path, 10)  # the URL now names a vault of another key

    assert written == [] and not checkpoint.manifest_path(second).exists()
    assert _verify(first, key, step=5).ok
    assert signer.key_sha256 == pinned
    assert any(f"expected {pinned}" in line and "retried" in line for line in lines), lines


def test_an_expected_key_from_the_environment_pins_the_job(tmp_path, key):
    lines: list[str] = []
    expected = hashlib.sha256(_public_der(ec.generate_private_key(ec.SECP384R1()))).hexdigest()
    signer = _signer(
        lambda url: LocalKeyVaultTestDouble(key), log=lines.append, expected_key_sha256=expected
    )

    path, written = _commit(signer, tmp_path, 5)

    assert written == [] and signer.key_sha256 is None  # not established: retried later
    assert any(f"CDK_TRN_VAULT_KEY_SHA256 expects {expected}" in line for line in lines), lines
    right = hashlib.sha256(_public_der(key)).hexdigest()
    signer.expected_key_sha256 = right
    _, later = _commit(signer, tmp_path, 10)
    assert [p.name for p in later] == ["step-00000005.manifest.json", "step-00000010.manifest.json"]
    assert signer.key_sha256 == right


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
    _commit(signer, tmp_path, 5)
    _commit(signer, tmp_path, 10)
    assert urls == [URL, "http://10.0.1.77:8443"]


def test_no_parameter_means_the_cluster_has_no_vault_said_once(tmp_path, ssm):
    client, stubber = ssm
    _no_parameter(stubber)
    _no_parameter(stubber)
    lines: list[str] = []
    locator = VaultLocator(parameter=PARAMETER, region=REGION, ssm_client=client)
    signer = _signer(lambda url: pytest.fail("no vault to call"), locator=locator, log=lines.append)
    assert _commit(signer, tmp_path, 5)[1] == []
    assert _commit(signer, tmp_path, 10)[1] == []
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
    assert _commit(signer, tmp_path, 5)[1] == []
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
    assert signer.expected_key_sha256 is None


def test_the_environment_may_pin_the_vaults_key(tmp_path):
    signer = CheckpointSigner.from_environment(
        {
            "CDK_TRN_SLURM_ENV": str(tmp_path / "absent.env"),
            "CDK_TRN_VAULT_URL": URL,
            "CDK_TRN_CLUSTER": "trn-local",
            "CDK_TRN_VAULT_KEY_SHA256": "AB" * 32,
        },
        log=pytest.fail,
    )
    assert signer is not None and signer.expected_key_sha256 == "ab" * 32


def test_without_a_vault_url_or_a_cluster_region_signing_is_off_and_says_so(tmp_path):
    lines: list[str] = []
    env = {"CDK_TRN_SLURM_ENV": str(tmp_path / "absent.env"), "SLURM_CLUSTER_NAME": "trn"}
    assert CheckpointSigner.from_environment(env, log=lines.append) is None
    assert lines == [
        "provenance: checkpoints are not signed: no vault URL ($CDK_TRN_VAULT_URL) and no "
        "cluster name and region to find one"
    ]
