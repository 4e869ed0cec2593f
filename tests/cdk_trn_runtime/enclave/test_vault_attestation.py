"""``provenance public-key --vault URL --pcr0 HEX``: the key is printed only when the enclave's
attestation proves it; a vault host returning anything else is caught and the check is named.

A fake vault (a plain HTTP server on loopback) answers ``/v1/attestation`` with documents signed
by the test PKI, whose root the tests trust in place of the AWS Nitro root (``trust_test_root``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cdk_trn_runtime.enclave.vault_attestation import vault_user_data
from cdk_trn_runtime.provenance import build_manifest, sign_with_private_key
from cdk_trn_runtime.provenance.cli import main
from tests.support import servers
from tests.support.enclave_doubles import IMAGE_PCR0, OTHER_PCR0, TestPki
from tests.support.enclave_harness import KEY_ID

OTHER_KEY_ID = "arn:aws:kms:us-east-2:444455556666:key/99999999-aaaa-bbbb-cccc-dddddddddddd"
# Answer: (attestation document, public key DER the vault claims) for a given request nonce.
Answer = Callable[[bytes | None], tuple[bytes, bytes]]


def _der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class FakeVaultDouble:
    """A vault host under someone else's control: answers /v1/attestation however it likes."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - stdlib naming
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                nonce = base64.b64decode(query["nonce"][0]) if "nonce" in query else None
                document, public_der = double.answer(nonce)
                body = json.dumps(
                    {
                        "attestation_document": base64.b64encode(document).decode(),
                        "public_key": base64.b64encode(public_der).decode(),
                        "key_sha256": "",
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = servers.start(self.server)

    def close(self) -> None:
        servers.stop(self.server, self.thread)


@pytest.fixture
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def fake_vault() -> Iterator[Callable[[Answer], FakeVaultDouble]]:
    started: list[FakeVaultDouble] = []

    def start(answer: Answer) -> FakeVaultDouble:
        started.append(FakeVaultDouble(answer))
        return started[-1]

    yield start
    for double in started:
        double.close()


def _genuine(pki: TestPki, key: ec.EllipticCurvePrivateKey, **overrides) -> Answer:
    """What an honest vault returns: the enclave's document over the nonce, and its key."""

    def answer(nonce: bytes | None) -> tuple[bytes, bytes]:
        fields = {
            "pcrs": {0: IMAGE_PCR0, 1: bytes([1]) * 48, 2: bytes([2]) * 48},
            "timestamp": dt.datetime.now(dt.UTC),
            "public_key": _der(key),
            "user_data": vault_user_data(KEY_ID, _der(key)),
            "nonce": nonce,
        }
        fields.update(overrides)
        return pki.document(**fields), _der(key)

    return answer


def _public_key(url: str, *extra: str) -> int:
    return main(["public-key", "--vault", url, "--pcr0", IMAGE_PCR0.hex(), *extra])


def test_genuine_attestation_prints_the_attested_key(
    trust_test_root, pki, fake_vault, signing_key, capsys
):
    vault = fake_vault(_genuine(pki, signing_key))
    assert _public_key(vault.url, "--kms-key-arn", KEY_ID) == 0
    out, err = capsys.readouterr()
    printed = serialization.load_pem_public_key(out.encode())
    assert printed.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == _der(signing_key)
    assert "fresh nonce" in err and KEY_ID in err


def test_wrong_pcrs_fail_the_pcrs_check(trust_test_root, pki, fake_vault, signing_key, capsys):
    pcrs = {0: OTHER_PCR0, 1: bytes([1]) * 48, 2: bytes([2]) * 48}
    vault = fake_vault(_genuine(pki, signing_key, pcrs=pcrs))
    assert _public_key(vault.url) == 1
    out, err = capsys.readouterr()
    assert out == "" and "attestation check failed: pcrs: PCR0" in err


def test_expected_pcr8_must_match_too(trust_test_root, pki, fake_vault, signing_key, capsys):
    vault = fake_vault(_genuine(pki, signing_key))
    assert _public_key(vault.url, "--pcr8", (b"\x08" * 48).hex()) == 1
    assert "pcrs: PCR8" in capsys.readouterr().err


def test_expired_chain_fails_the_document_check(monkeypatch, fake_vault, signing_key, capsys):
    now = dt.datetime.now(dt.UTC)
    expired = TestPki(not_before=now - dt.timedelta(days=60), not_after=now - dt.timedelta(days=1))
    monkeypatch.setattr(
        "cdk_trn_runtime.enclave.attestation.AWS_NITRO_ROOT_G1_SHA256", expired.root_sha256
    )
    vault = fake_vault(_genuine(expired, signing_key, timestamp=expired.valid_at))
    assert _public_key(vault.url) == 1
    err = capsys.readouterr().err
    assert "attestation check failed: document:" in err and "expired" in err


def test_document_from_another_root_fails_the_document_check(
    trust_test_root, fake_vault, signing_key, capsys
):
    now = dt.datetime.now(dt.UTC)
    stranger = TestPki(not_before=now - dt.timedelta(days=1), not_after=now + dt.timedelta(days=1))
    vault = fake_vault(_genuine(stranger, signing_key))
    assert _public_key(vault.url) == 1
    assert "document: cabundle[0] is not the pinned root" in capsys.readouterr().err


def test_document_without_a_nonce_fails_the_nonce_check(
    trust_test_root, pki, fake_vault, signing_key, capsys
):
    vault = fake_vault(_genuine(pki, signing_key, nonce=None))
    assert _public_key(vault.url) == 1
    assert "attestation check failed: nonce: the document carries no nonce" in (
        capsys.readouterr().err
    )


def test_replayed_document_with_an_old_nonce_fails_the_nonce_check(
    trust_test_root, pki, fake_vault, signing_key, capsys
):
    vault = fake_vault(_genuine(pki, signing_key, nonce=b"an earlier verifier's nonce"))
    assert _public_key(vault.url) == 1
    assert "nonce: the document's nonce is not the one sent" in capsys.readouterr().err


def test_another_key_than_the_attested_one_fails_the_public_key_check(
    trust_test_root, pki, fake_vault, signing_key, capsys
):
    # The host relays a genuine document but returns a key of its own next to it.
    planted = ec.generate_private_key(ec.SECP384R1())
    genuine = _genuine(pki, signing_key)

    def answer(nonce: bytes | None) -> tuple[bytes, bytes]:
        return genuine(nonce)[0], _der(planted)

    vault = fake_vault(answer)
    assert _public_key(vault.url) == 1
    out, err = capsys.readouterr()
    assert out == "" and "attestation check failed: public_key:" in err


def test_key_from_another_kms_key_fails_the_kms_key_check(
    trust_test_root, pki, fake_vault, signing_key, capsys
):
    vault = fake_vault(
        _genuine(pki, signing_key, user_data=vault_user_data(OTHER_KEY_ID, _der(signing_key)))
    )
    assert _public_key(vault.url, "--kms-key-arn", KEY_ID) == 1
    assert f"kms_key: the enclave's key comes from {OTHER_KEY_ID}" in capsys.readouterr().err


def test_document_without_the_binding_fails_the_user_data_check(
    trust_test_root, pki, fake_vault, signing_key, capsys
):
    vault = fake_vault(_genuine(pki, signing_key, user_data=None))
    assert _public_key(vault.url) == 1
    assert "user_data: the document binds no KMS key" in capsys.readouterr().err


def test_public_key_needs_pcr0(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["public-key", "--vault", "http://127.0.0.1:9"])
    assert caught.value.code == 2


def test_verify_takes_the_attested_key_directly(
    trust_test_root, pki, fake_vault, signing_key, tmp_path, capsys
):
    directory = tmp_path / "step-5"
    directory.mkdir()
    (directory / "w.bin").write_bytes(b"weights")
    manifest = build_manifest(directory, run_id="run-1", cluster="trn-a", step=5)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(sign_with_private_key(manifest, signing_key)))
    honest = fake_vault(_genuine(pki, signing_key))
    base = [
        "verify",
        str(path),
        str(directory),
        "--pcr0",
        IMAGE_PCR0.hex(),
        "--step",
        "5",
        "--run-id",
        "run-1",  # verify fails closed without the run (or an explicit --any-run)
    ]
    assert main([*base, "--vault", honest.url]) == 0
    assert "OK: 1 files checked" in capsys.readouterr().out
    # A vault whose enclave attests another key: the manifest does not verify with it.
    other = fake_vault(_genuine(pki, ec.generate_private_key(ec.SECP384R1())))
    assert main([*base, "--vault", other.url]) == 1
    assert "SIGNATURE INVALID" in capsys.readouterr().out
