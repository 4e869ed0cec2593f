"""End to end on loopback: node CLI -> parent server -> enclave signer -> KMS test double.

The enclave service runs as a plain local thread; KMS and STS are test doubles that enforce the
attestation condition and check SigV4 signatures. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cdk_trn_runtime.enclave.attestation import verify_attestation
from cdk_trn_runtime.enclave.vault_attestation import vault_user_data
from cdk_trn_runtime.provenance import sign_with_private_key
from cdk_trn_runtime.provenance.cli import main
from cdk_trn_runtime.vault.client import VaultClient
from cdk_trn_runtime.vault.enclave_client import EnclaveError
from tests.support.enclave_doubles import IMAGE_PCR0, OTHER_PCR0
from tests.support.enclave_harness import (
    KEY_ID,
    NODE_SESSION_ARN,
    OTHER_KEY,
    start_vault,
    stop_vault,
)


def _checkpoint(root: Path) -> Path:
    directory = root / "step-001000"
    (directory / "optimizer").mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"\x01" * 4096)
    (directory / "optimizer" / "shard-0.pt").write_bytes(b"\x02" * 1000)
    (directory / "optimizer" / "shard-1.pt").write_bytes(b"\x03" * 1000)
    (directory / "config.json").write_text('{"layers": 4}')
    return directory


def _sign(vault_url: str, directory: Path) -> int:
    return main(
        [
            "sign",
            str(directory),
            "--vault",
            vault_url,
            "--cluster",
            "trn-test",
            "--run-id",
            "run-42",
        ]
    )


def _public_key(vault_url: str, tmp_path: Path, capsys) -> Path:
    capsys.readouterr()
    assert main(["public-key", "--vault", vault_url, "--pcr0", IMAGE_PCR0.hex()]) == 0
    path = tmp_path / "vault-public.pem"
    path.write_text(capsys.readouterr().out)
    return path


def _verify(manifest: Path, directory: Path, key: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(
        ["verify", str(manifest), str(directory), "--public-key", str(key), "--run-id", "run-42"]
    )
    return code, capsys.readouterr().out


def test_signed_checkpoint_verifies_and_a_flipped_byte_is_named(
    trust_test_root, vault, node_credentials, tmp_path, capsys
):
    directory = _checkpoint(tmp_path)
    assert _sign(vault.url, directory) == 0
    manifest = tmp_path / "step-001000.manifest.json"
    signed = json.loads(manifest.read_text())
    assert signed["manifest"]["run_id"] == "run-42"
    assert signed["manifest"]["cluster"] == "trn-test"
    assert (signed["manifest"]["step"], signed["manifest"]["checkpoint_path"]) == (
        1000,
        str(directory.resolve()),
    )
    assert [f["path"] for f in signed["manifest"]["files"]] == [
        "config.json",
        "model.safetensors",
        "optimizer/shard-0.pt",
        "optimizer/shard-1.pt",
    ]
    key = _public_key(vault.url, tmp_path, capsys)

    code, out = _verify(manifest, directory, key, capsys)
    assert code == 0, out
    assert "OK: 4 files checked" in out

    shard = directory / "optimizer" / "shard-1.pt"
    data = bytearray(shard.read_bytes())
    data[500] ^= 0x01
    shard.write_bytes(bytes(data))
    code, out = _verify(manifest, directory, key, capsys)
    assert code == 1
    assert "TAMPERED optimizer/shard-1.pt" in out
    assert "shard-0.pt" not in out and "SIGNATURE valid" in out


def test_signing_used_kms_only_with_a_recipient_and_sts_for_the_caller(
    vault, node_credentials, tmp_path
):
    assert _sign(vault.url, _checkpoint(tmp_path)) == 0
    assert vault.kms.calls == ["GenerateDataKeyPair"]
    assert all(request["public_key"] for request in vault.nsm.requests)
    assert len(vault.sts.requests) == 1
    assert vault.state.load() is not None


def test_forged_signature_fails_verification(
    trust_test_root, vault, node_credentials, tmp_path, capsys
):
    directory = _checkpoint(tmp_path)
    assert _sign(vault.url, directory) == 0
    manifest = tmp_path / "step-001000.manifest.json"
    key = _public_key(vault.url, tmp_path, capsys)
    signed = json.loads(manifest.read_text())

    # A forger re-signs an edited manifest with a key of their own.
    forger = ec.generate_private_key(ec.SECP384R1())
    edited = dict(signed["manifest"], run_id="run-43")
    manifest.write_text(json.dumps(sign_with_private_key(edited, forger)))
    code, out = _verify(manifest, directory, key, capsys)
    assert code == 1 and "SIGNATURE INVALID" in out

    # Or keeps the enclave's signature on an edited manifest.
    manifest.write_text(json.dumps({**signed, "manifest": edited}))
    code, out = _verify(manifest, directory, key, capsys)
    assert code == 1 and "SIGNATURE INVALID" in out


def test_restarted_enclave_reloads_the_same_key_through_decrypt(
    trust_test_root, vault, node_credentials, tmp_path, capsys
):
    first_key = _public_key(vault.url, tmp_path, capsys).read_text()
    # The enclave restarts (a fresh signer, nothing in memory) behind the same parent.
    vault.enclave.signer.__init__(vault.nsm, lambda region, credentials: vault.kms)
    directory = _checkpoint(tmp_path)
    assert _sign(vault.url, directory) == 0
    assert vault.kms.calls == ["GenerateDataKeyPair", "Decrypt"]
    assert _public_key(vault.url, tmp_path, capsys).read_text() == first_key
    code, _ = _verify(
        tmp_path / "step-001000.manifest.json", directory, tmp_path / "vault-public.pem", capsys
    )
    assert code == 0


def test_node_with_another_role_cannot_sign(vault, monkeypatch, node_credentials, tmp_path, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", OTHER_KEY[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", OTHER_KEY[1])
    assert _sign(vault.url, _checkpoint(tmp_path)) == 1
    assert "forbidden" in capsys.readouterr().err
    assert not (tmp_path / "step-001000.manifest.json").exists()


def test_enclave_running_another_image_never_gets_the_key(pki, tmp_path):
    running = start_vault(pki, tmp_path, nsm_pcr0=OTHER_PCR0, initialise=False)
    try:
        with pytest.raises(EnclaveError, match="AccessDeniedException"):
            running.server.enclave.initialise()
        assert running.state.load() is None
        assert not running.enclave.signer.ready
    finally:
        stop_vault(running)


def test_caller_identity_is_recorded_in_the_sign_answer(vault, node_credentials):
    answer = VaultClient(vault.url).sign_digest(b"\x00" * 48)
    assert answer["caller"] == NODE_SESSION_ARN
    public = serialization.load_der_public_key(base64.b64decode(answer["public_key"]))
    assert isinstance(public, ec.EllipticCurvePublicKey)


def test_attestation_endpoint_binds_the_signing_key_to_the_enclave_image(vault, pki):
    answer = VaultClient(vault.url)._request("GET", "/v1/attestation?nonce=bm9uY2U%3D")
    document = verify_attestation(
        base64.b64decode(answer["attestation_document"]),
        at=pki.valid_at,
        root_sha256=pki.root_sha256,
        expected_pcrs={0: IMAGE_PCR0},
    )
    public_der = base64.b64decode(answer["public_key"])
    assert document.public_key == public_der
    assert document.user_data == vault_user_data(KEY_ID, public_der)
    assert document.nonce == b"nonce"


def test_auditor_verifies_with_the_key_the_running_enclave_attests(
    trust_test_root, vault, node_credentials, tmp_path, capsys
):
    directory = _checkpoint(tmp_path)
    assert _sign(vault.url, directory) == 0
    capsys.readouterr()
    code = main(
        [
            "verify",
            str(tmp_path / "step-001000.manifest.json"),
            str(directory),
            "--vault",
            vault.url,
            "--pcr0",
            IMAGE_PCR0.hex(),
            "--kms-key-arn",
            KEY_ID,
            "--run-id",
            "run-42",
            "--step",
            "1000",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "IDENTITY run_id=run-42 cluster=trn-test step=1000" in out
    assert f"from KMS key {KEY_ID}" in err
