"""The in-enclave signer: key from KMS with a Recipient, signing, attestation, a robust loop."""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading

import pytest
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cdk_trn_runtime.enclave.attestation import verify_attestation
from cdk_trn_runtime.enclave.kms_recipient import KmsRecipientError, StoredKey, generate_signing_key
from cdk_trn_runtime.enclave.service import (
    ChannelAddress,
    EnclaveSigner,
    NsmDevice,
    StreamForwarder,
    recv_frame,
)
from cdk_trn_runtime.enclave.vault_attestation import vault_user_data
from tests.support.enclave_doubles import IMAGE_PCR0, OTHER_PCR0, KmsTestDouble, TestPkiNsm
from tests.support.enclave_harness import HOST_CREDENTIALS, KEY_ID, REGION, RunningEnclave


def _kms(pki) -> KmsTestDouble:
    return KmsTestDouble(
        key_id=KEY_ID,
        image_sha384=IMAGE_PCR0,
        trusted_root_sha256=pki.root_sha256,
        clock=lambda: pki.valid_at,
    )


def _init(signer: EnclaveSigner, stored=None) -> dict:
    return signer.handle(
        {
            "op": "init",
            "key_id": KEY_ID,
            "region": REGION,
            "credentials": HOST_CREDENTIALS,
            "stored_key": stored,
        }
    )


def test_first_start_generates_a_p384_key_pair_through_kms_with_a_recipient(pki):
    kms, nsm = _kms(pki), TestPkiNsm(pki)
    reply = _init(EnclaveSigner(nsm, lambda r, c: kms))
    assert reply["ok"] and reply["created"]
    assert kms.calls == ["GenerateDataKeyPair"]
    # The attestation document sent to KMS carried the ephemeral RSA key, not the signing key.
    assert nsm.requests[0]["public_key"].startswith(b"\x30\x82")
    public = serialization.load_der_public_key(base64.b64decode(reply["public_key"]))
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"


def test_later_start_decrypts_the_stored_key_with_a_recipient(pki):
    kms = _kms(pki)
    first = _init(EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms))
    second = _init(EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms), first["stored_key"])
    assert second["ok"] and not second["created"]
    assert kms.calls == ["GenerateDataKeyPair", "Decrypt"]
    assert second["public_key"] == first["public_key"]


def test_stored_state_holds_no_private_key_material(pki):
    kms = _kms(pki)
    signer = EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms)
    stored = _init(signer)["stored_key"]
    assert set(stored) == {"key_id", "encrypted_private_key", "public_key"}
    ciphertext = base64.b64decode(stored["encrypted_private_key"])
    with pytest.raises(ValueError):
        serialization.load_der_private_key(ciphertext, password=None)


def test_enclave_with_another_image_is_refused_by_the_kms_double(pki):
    kms = _kms(pki)
    reply = _init(EnclaveSigner(TestPkiNsm(pki, pcr0=OTHER_PCR0), lambda r, c: kms))
    assert reply["error"]["code"] == "kms"
    assert "AccessDeniedException" in reply["error"]["message"]
    assert "PCR0" in reply["error"]["message"]


def test_kms_double_denies_a_request_without_recipient(pki):
    with pytest.raises(ClientError, match="AccessDenied"):
        _kms(pki).generate_data_key_pair(KeyId=KEY_ID, KeyPairSpec="ECC_NIST_P384")


def test_kms_answer_with_plaintext_is_refused(pki):
    class PlaintextKms:
        def generate_data_key_pair(self, **kwargs):
            return {
                "PublicKey": b"x",
                "PrivateKeyCiphertextBlob": b"y",
                "PrivateKeyPlaintext": b"secret",
                "KeyId": kwargs["KeyId"],
            }

        def decrypt(self, **kwargs):
            raise AssertionError

    with pytest.raises(KmsRecipientError, match="plaintext"):
        generate_signing_key(PlaintextKms(), KEY_ID, TestPkiNsm(pki))


def test_swapped_public_key_in_stored_state_is_refused(pki):
    kms = _kms(pki)
    first = _init(EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms))["stored_key"]
    other = _init(EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms))["stored_key"]
    mixed = StoredKey.from_json({**first, "public_key": other["public_key"]}).to_json()
    reply = _init(EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms), mixed)
    assert not reply["ok"] and "does not match" in reply["error"]["message"]


def test_sign_returns_an_ecdsa_p384_signature_over_the_digest(pki):
    kms = _kms(pki)
    signer = EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms)
    public = serialization.load_der_public_key(base64.b64decode(_init(signer)["public_key"]))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    digest = hashlib.sha384(b"manifest").digest()
    reply = signer.handle({"op": "sign", "digest": digest.hex()})
    assert reply["ok"] and reply["algorithm"] == "ECDSA_P384_SHA384"
    public.verify(base64.b64decode(reply["signature"]), b"manifest", ec.ECDSA(hashes.SHA384()))
    with pytest.raises(InvalidSignature):
        public.verify(base64.b64decode(reply["signature"]), b"other", ec.ECDSA(hashes.SHA384()))


def test_attest_binds_the_signing_key_and_the_kms_key(pki):
    kms = _kms(pki)
    signer = EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms)
    public_der = base64.b64decode(_init(signer)["public_key"])
    nonce = base64.b64encode(b"verifier-nonce").decode()
    reply = signer.handle({"op": "attest", "nonce": nonce})
    doc = verify_attestation(
        base64.b64decode(reply["attestation_document"]),
        at=pki.valid_at,
        root_sha256=pki.root_sha256,
        expected_pcrs={0: IMAGE_PCR0},
    )
    assert doc.public_key == public_der
    assert doc.user_data == vault_user_data(KEY_ID, public_der)
    assert KEY_ID.encode() in doc.user_data
    assert doc.nonce == b"verifier-nonce"


OTHER_KEY_ID = "arn:aws:kms:us-east-2:444455556666:key/99999999-aaaa-bbbb-cccc-dddddddddddd"


def test_key_state_for_another_kms_key_is_refused_before_kms_is_asked(pki):
    # Finding (key substitution): the enclave decrypted with whatever key the state file named.
    kms = _kms(pki)
    stored = _init(EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms))["stored_key"]
    planted = dict(stored, key_id=OTHER_KEY_ID)
    kms.calls.clear()
    reply = _init(EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms), planted)
    assert reply["ok"] is False and reply["error"]["code"] == "key_mismatch"
    assert OTHER_KEY_ID in reply["error"]["message"]
    assert kms.calls == []


class OtherKeyKmsDouble(KmsTestDouble):
    """KMS that honours the Recipient but answers with another key's ARN (the ciphertext was
    made under a key the attacker controls; KMS decrypts with the key the blob names)."""

    def decrypt(self, **params):
        return {**super().decrypt(**params), "KeyId": OTHER_KEY_ID}

    def generate_data_key_pair(self, **params):
        return {**super().generate_data_key_pair(**params), "KeyId": OTHER_KEY_ID}


def test_kms_answer_naming_another_key_is_refused(pki):
    kms = _kms(pki)
    stored = _init(EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms))["stored_key"]
    other = OtherKeyKmsDouble(
        key_id=KEY_ID,
        image_sha384=IMAGE_PCR0,
        trusted_root_sha256=pki.root_sha256,
        clock=lambda: pki.valid_at,
    )
    other._sealing_key = kms._sealing_key  # same ciphertexts, another key's ARN in the answer
    for state in (None, stored):
        signer = EnclaveSigner(TestPkiNsm(pki), lambda r, c: other)
        reply = _init(signer, state)
        assert reply["ok"] is False and reply["error"]["code"] == "key_mismatch"
        assert "not the configured key" in reply["error"]["message"]
        assert not signer.ready


def test_enclave_holding_a_key_refuses_init_for_another_kms_key(pki):
    kms = _kms(pki)
    signer = EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms)
    assert _init(signer)["ok"]
    reply = signer.handle(
        {
            "op": "init",
            "key_id": OTHER_KEY_ID,
            "region": REGION,
            "credentials": HOST_CREDENTIALS,
            "stored_key": None,
        }
    )
    assert reply["error"]["code"] == "key_mismatch"


def test_init_needs_a_kms_key_arn_not_an_alias(pki):
    signer = EnclaveSigner(TestPkiNsm(pki), lambda r, c: _kms(pki))
    reply = signer.handle(
        {
            "op": "init",
            "key_id": "alias/cdk-trn-vault",
            "region": REGION,
            "credentials": HOST_CREDENTIALS,
        }
    )
    assert reply["error"]["code"] == "bad_request" and "key ARN" in reply["error"]["message"]


@pytest.mark.parametrize(
    "request_, code",
    [
        ({"op": "sign", "digest": "ab" * 48}, "not_initialised"),
        ({"op": "export_private_key"}, "unknown_op"),
        ({}, "unknown_op"),
        ({"op": "init", "key_id": KEY_ID}, "bad_request"),
    ],
)
def test_bad_requests_get_error_codes(pki, request_, code):
    signer = EnclaveSigner(TestPkiNsm(pki), lambda r, c: _kms(pki))
    reply = signer.handle(request_)
    assert reply == {"ok": False, "error": {"code": code, "message": reply["error"]["message"]}}


@pytest.mark.parametrize("digest", ["ab" * 47, "zz" * 48, 42, None])
def test_sign_rejects_digests_that_are_not_sha384_hex(pki, digest):
    kms = _kms(pki)
    signer = EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms)
    _init(signer)
    assert signer.handle({"op": "sign", "digest": digest})["error"]["code"] == "bad_request"


def test_serve_loop_answers_garbage_and_oversized_frames_and_keeps_serving(pki):
    kms = _kms(pki)
    enclave = RunningEnclave(EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms))
    try:
        for payload in (
            struct.pack(">I", 10) + b"not json!!",
            struct.pack(">I", 1 << 30),
            struct.pack(">I", 4) + b"[1]]",
        ):
            with socket.create_connection(enclave.address.address, timeout=5) as sock:
                sock.sendall(payload)
                assert recv_frame(sock)["error"]["code"] == "bad_frame"
        with socket.create_connection(enclave.address.address, timeout=5) as sock:
            sock.sendall(b"\x00\x00")  # truncated header, then hang up
        assert enclave.address.request({"op": "public_key"})["error"]["code"] == "not_initialised"
    finally:
        enclave.close()


def test_deeply_nested_frame_gets_an_error_reply_and_the_loop_keeps_serving(pki):
    # Finding: "[" * 200000 raised RecursionError in json.loads and ended the serve loop.
    kms = _kms(pki)
    enclave = RunningEnclave(EnclaveSigner(TestPkiNsm(pki), lambda r, c: kms))
    try:
        nested = b"[" * 200000
        for _ in range(2):
            with socket.create_connection(enclave.address.address, timeout=5) as sock:
                sock.sendall(struct.pack(">I", len(nested)) + nested)
                reply = recv_frame(sock)
            assert reply["ok"] is False and reply["error"]["code"] == "bad_frame"
            assert "nests too deeply" in reply["error"]["message"]
        assert enclave.thread.is_alive()
        assert enclave.address.request({"op": "public_key"})["error"]["code"] == "not_initialised"
    finally:
        enclave.close()


def test_nsm_ioctl_number_is_iowr_0x0a_0_of_two_iovecs():
    # _IOWR(NSM_MAGIC=0x0A, 0, struct nsm_raw) with struct nsm_raw = 2 x {u64 addr; u64 len}.
    assert NsmDevice.IOCTL_RAW == 0xC0200A00


def test_forwarder_carries_a_byte_stream_both_ways_to_its_target():
    # Production target is vsock (CID 3, port 8000); a loopback echo server stands in for it.
    echo = ChannelAddress.tcp("127.0.0.1", 0).listen()

    def echo_once():
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data[::-1])

    threading.Thread(target=echo_once, daemon=True).start()
    target = ChannelAddress.tcp("127.0.0.1", echo.getsockname()[1])
    forwarder = StreamForwarder(ChannelAddress.tcp("127.0.0.1", 0), target).start()
    try:
        with socket.create_connection(forwarder.address, timeout=5) as sock:
            sock.sendall(b"client hello")
            assert sock.recv(100) == b"olleh tneilc"
    finally:
        forwarder.close()
        echo.close()


def test_kms_host_is_pointed_at_the_local_forwarder_once(tmp_path):
    from cdk_trn_runtime.enclave.service import _resolve_locally

    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    _resolve_locally("kms.us-east-2.amazonaws.com", str(hosts))
    _resolve_locally("kms.us-east-2.amazonaws.com", str(hosts))
    assert hosts.read_text().splitlines() == [
        "127.0.0.1 localhost",
        "127.0.0.1 kms.us-east-2.amazonaws.com",
    ]
