"""``cdk-trn vault-key`` and ``cdk-trn verify`` against a running vault on loopback (parent server
-> enclave signer -> KMS test double): the expected PCR0, KMS key and cluster come from stubbed
stack outputs (botocore Stubber), the attestation is relayed by the cluster's own ``relay`` SSM
document on a node (stubbed SendCommand; never AWS-RunShellScript), and ``provenance`` checks it; a
relay or vault that lies is caught."""

from __future__ import annotations

import base64
import json

import pytest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives import serialization

from cdk_trn_runtime.cli import command as cli_main
from cdk_trn_runtime.cli.vault import RELAY_TIMEOUT_SECONDS, relay_invocation
from cdk_trn_runtime.contract import researcher_document
from cdk_trn_runtime.provenance.signing import CheckpointSigner, VaultLocator
from cdk_trn_runtime.train import checkpoint
from cdk_trn_runtime.vault.client import VaultClient
from tests.cdk_trn_runtime.cli.aws_doubles import stubbed_aws
from tests.support.enclave_doubles import IMAGE_PCR0, OTHER_PCR0
from tests.support.enclave_harness import KEY_ID, NODE_KEY

NODE_GROUP = "trn-cluster-ClusterNodes-0A1B2C3D4E5F"
CLUSTER = "trn-test"  # the cluster stack's ClusterName output; names its SSM documents
PARAMETER = "/cdk-trn/trn-cluster/vault-url"
PUBLISHED_URL = "http://10.0.1.5:8443"  # what the vault host wrote; only the node can reach it
NONCE = bytes(range(32))
RELAY_COMMENT = "cdk-trn vault attestation relay"


@pytest.fixture
def stubs(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-double-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-double-secret")
    # The nonce the command draws, known beforehand so the relayed answer can carry it.
    monkeypatch.setattr("cdk_trn_runtime.provenance.cli.secrets.token_bytes", lambda n: NONCE)
    stubs = stubbed_aws()
    yield stubs
    stubs.assert_all_called()


def _outputs(stubs, pcr0: bytes = IMAGE_PCR0, relay: bool = True) -> None:
    stubs.stack(
        {
            "VaultImagePcr0": pcr0.hex(),
            "VaultKeyArn": KEY_ID,
            "VaultUrlParameter": PARAMETER,
        },
        stack="trn-vault",
    )
    stubs.stack({"ClusterName": CLUSTER, "SlurmNodeGroup": NODE_GROUP})
    if relay:
        stubs.ssm.add_response(
            "get_parameter",
            {"Parameter": {"Name": PARAMETER, "Type": "String", "Value": PUBLISHED_URL}},
            {"Name": PARAMETER},
        )
        stubs.group(name=NODE_GROUP)


def _relay(stubs, stdout: str, status: str = "Success", code: int = 0, stderr: str = "") -> None:
    # The cluster's relay document with the published URL and this command's nonce as its
    # parameters (the stubbed SendCommand matches the document name and parameters exactly).
    stubs.send(
        relay_invocation(PUBLISHED_URL, NONCE),
        RELAY_COMMENT,
        timeout=RELAY_TIMEOUT_SECONDS,
        cluster=CLUSTER,
    )
    stubs.invocation(status, code, stdout, stderr=stderr)


def _run(stubs, *argv: str) -> int:
    return cli_main.main(list(argv), make_aws=lambda profile, region: stubs.aws)


def test_vault_key_prints_the_key_attested_through_a_relaying_node(
    trust_test_root, vault, stubs, capsys
):
    _outputs(stubs)
    # What the node's curl would print: the vault's answer over the command's nonce.
    _relay(stubs, json.dumps(VaultClient(vault.url).attestation(NONCE)))
    assert _run(stubs, "vault-key") == 0
    out, err = capsys.readouterr()
    key = serialization.load_pem_public_key(out.encode())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert base64.b64encode(der).decode() == vault.state.load()["public_key"]
    assert "attested: chain to the AWS Nitro root valid now, fresh nonce" in err
    assert KEY_ID in err
    assert stubs.sent_documents == [researcher_document(CLUSTER, "relay")]


def test_vault_key_refuses_a_vault_whose_image_is_not_the_stacks(
    trust_test_root, vault, stubs, capsys
):
    _outputs(stubs, pcr0=OTHER_PCR0)
    _relay(stubs, json.dumps(VaultClient(vault.url).attestation(NONCE)))
    assert _run(stubs, "vault-key") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "attestation check failed: pcrs" in err


def test_vault_key_refuses_an_answer_a_node_replayed_for_another_nonce(
    trust_test_root, vault, stubs, capsys
):
    _outputs(stubs)
    _relay(stubs, json.dumps(VaultClient(vault.url).attestation(b"\x01" * 32)))
    assert _run(stubs, "vault-key") == 1
    assert "attestation check failed: nonce" in capsys.readouterr().err


def test_a_relay_that_cannot_reach_the_vault_is_named(trust_test_root, stubs, capsys):
    _outputs(stubs)
    _relay(stubs, "", status="Failed", code=7, stderr="curl: (7) Failed to connect")
    assert _run(stubs, "vault-key") == 1
    err = capsys.readouterr().err
    assert "cannot get the vault's attestation" in err and "Failed to connect" in err


def _signed_checkpoint(vault_url: str, tmp_path, cluster: str = "trn-test"):
    directory = tmp_path / "checkpoints"
    path = checkpoint.save(directory, 1000, lambda handle: handle.write(b"weights"))
    node_role = Credentials(*NODE_KEY)
    signer = CheckpointSigner(
        locator=VaultLocator(url=vault_url),
        cluster=cluster,
        run_id="812",
        make_signer=lambda url: VaultClient(url, credentials=node_role),
        log=lambda line: None,
    )
    assert signer.after_commit(path, signer.manifest_of(path, path))
    return path


def test_verify_checks_a_signed_checkpoint_with_only_the_stack_outputs(
    trust_test_root, vault, stubs, tmp_path, capsys
):
    path = _signed_checkpoint(vault.url, tmp_path)
    _outputs(stubs)
    _relay(stubs, json.dumps(VaultClient(vault.url).attestation(NONCE)))
    assert _run(stubs, "verify", str(path), "--run-id", "812") == 0
    out = capsys.readouterr().out
    assert "SIGNATURE valid" in out
    assert "IDENTITY run_id=812 cluster=trn-test step=1000" in out
    assert "OK: 1 files checked" in out


def test_verify_expects_the_step_the_directory_names_and_the_stacks_cluster(
    trust_test_root, vault, stubs, tmp_path, capsys
):
    path = _signed_checkpoint(vault.url, tmp_path, cluster="trn-other")
    renamed = path.with_name("step-00002000")  # an older checkpoint passed off as a newer one
    path.rename(renamed)
    checkpoint.manifest_path(path).rename(checkpoint.manifest_path(renamed))
    _outputs(stubs, relay=False)
    # The run is named (verify fails closed without --run-id or --any-run) and is the signed one,
    # so only the cluster and the step are wrong.
    code = _run(stubs, "verify", str(renamed), "--run-id", "812", "--vault-url", vault.url)
    out = capsys.readouterr().out
    assert code == 1
    assert "MISMATCH cluster: manifest says 'trn-other', expected 'trn-test'" in out
    assert "MISMATCH step: manifest says 1000, expected 2000" in out


def test_verify_refuses_a_checkpoint_of_another_run(
    trust_test_root, vault, stubs, tmp_path, capsys
):
    path = _signed_checkpoint(vault.url, tmp_path)
    _outputs(stubs, relay=False)
    code = _run(stubs, "verify", str(path), "--run-id", "813", "--vault-url", vault.url)
    assert code == 1
    assert "MISMATCH run_id: manifest says '812', expected '813'" in capsys.readouterr().out
