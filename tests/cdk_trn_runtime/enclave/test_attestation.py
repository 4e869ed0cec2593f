"""verify_attestation against the real Nitro documents (when ../shared exists) and a test PKI."""

from __future__ import annotations

import datetime as dt
import hashlib

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization

from cdk_trn_runtime.enclave.attestation import (
    AWS_NITRO_ROOT_G1_PEM,
    AWS_NITRO_ROOT_G1_SHA256,
    AttestationError,
    verify_attestation,
)
from tests.support.enclave_doubles import IMAGE_PCR0, OTHER_PCR0, TestPki
from tests.support.enclave_harness import VECTOR_FILES, load_vector

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")


def _flip(data: bytes, index: int) -> bytes:
    flipped = bytearray(data)
    flipped[index] ^= 0xFF
    return bytes(flipped)


def _rebuild(raw: bytes, *, protected: bytes | None = None, payload: dict | None = None) -> bytes:
    cose = cbor2.loads(raw)
    if protected is not None:
        cose[0] = protected
    if payload is not None:
        cose[2] = cbor2.dumps(payload)
    return cbor2.dumps(cose)


# --- the pinned root -------------------------------------------------------------------------


def test_embedded_root_pem_matches_the_pinned_fingerprint():
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(AWS_NITRO_ROOT_G1_PEM)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == AWS_NITRO_ROOT_G1_SHA256


def test_pinned_fingerprint_equals_the_published_root_certificate(vectors_dir):
    from cryptography import x509

    pem = (vectors_dir / "aws-nitro-enclaves-root-g1.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == AWS_NITRO_ROOT_G1_SHA256


# --- real documents --------------------------------------------------------------------------


@pytest.mark.parametrize("name", VECTOR_FILES)
def test_real_document_verifies_at_its_own_timestamp(vectors_dir, name):
    raw, at = load_vector(vectors_dir, name)
    doc = verify_attestation(raw, at=at)
    assert doc.timestamp == at
    assert doc.digest == "SHA384"
    assert doc.module_id.startswith(doc.instance_id + "-enc")


@pytest.mark.parametrize("name", VECTOR_FILES)
def test_real_document_is_rejected_now_as_expired(vectors_dir, name):
    raw, _ = load_vector(vectors_dir, name)
    with pytest.raises(AttestationError, match="expired"):
        verify_attestation(raw)


@pytest.mark.parametrize("name", VECTOR_FILES)
def test_real_document_pcr4_is_sha384_of_zeros_and_instance_id(vectors_dir, name):
    raw, at = load_vector(vectors_dir, name)
    doc = verify_attestation(raw, at=at)
    assert doc.pcrs[4] == hashlib.sha384(bytes(48) + doc.instance_id.encode()).digest()


@pytest.mark.parametrize("name", VECTOR_FILES)
def test_real_document_with_any_byte_flipped_is_rejected(vectors_dir, name):
    raw, at = load_vector(vectors_dir, name)
    accepted = []
    for index in range(len(raw)):
        try:
            verify_attestation(_flip(raw, index), at=at)
        except AttestationError:
            continue
        accepted.append(index)
    assert accepted == []


def test_real_document_is_rejected_under_another_pinned_root(vectors_dir, pki):
    raw, at = load_vector(vectors_dir, VECTOR_FILES[0])
    with pytest.raises(AttestationError, match="not the pinned root"):
        verify_attestation(raw, at=at, root_sha256=pki.root_sha256)


def test_real_document_with_its_root_replaced_is_rejected(vectors_dir, pki):
    raw, at = load_vector(vectors_dir, VECTOR_FILES[0])
    payload = cbor2.loads(cbor2.loads(raw)[2])
    payload["cabundle"][0] = pki.der(pki.root)
    with pytest.raises(AttestationError):
        verify_attestation(_rebuild(raw, payload=payload), at=at)


def test_real_document_with_matching_pcr0_pin_verifies(vectors_dir):
    raw, at = load_vector(vectors_dir, VECTOR_FILES[0])
    pcr0 = verify_attestation(raw, at=at).pcrs[0]
    doc = verify_attestation(raw, at=at, expected_pcrs={0: pcr0.hex()})
    assert doc.pcrs[0] == pcr0


def test_real_document_with_pcr0_mismatch_is_rejected(vectors_dir):
    raw, at = load_vector(vectors_dir, VECTOR_FILES[0])
    with pytest.raises(AttestationError, match="PCR0"):
        verify_attestation(raw, at=at, expected_pcrs={0: OTHER_PCR0})


def test_real_debug_document_is_rejected_when_pcrs_are_pinned(vectors_dir):
    raw, at = load_vector(vectors_dir, VECTOR_FILES[1])
    pcr4 = verify_attestation(raw, at=at).pcrs[4]
    with pytest.raises(AttestationError, match="debug mode"):
        verify_attestation(raw, at=at, expected_pcrs={4: pcr4})
    with pytest.raises(AttestationError, match="debug mode"):
        verify_attestation(raw, at=at, expected_pcrs={0: bytes(48)})


def test_real_debug_document_keeps_empty_public_key_and_nonce(vectors_dir):
    raw, at = load_vector(vectors_dir, VECTOR_FILES[1])
    doc = verify_attestation(raw, at=at)
    assert doc.is_debug_mode
    assert doc.public_key == b""
    assert doc.nonce is not None and len(doc.nonce) == 20


@pytest.mark.parametrize("cut", [1, 100, 2000])
def test_real_document_truncated_is_rejected_as_malformed_cbor(vectors_dir, cut):
    raw, at = load_vector(vectors_dir, VECTOR_FILES[0])
    with pytest.raises(AttestationError, match="CBOR"):
        verify_attestation(raw[:-cut], at=at)


def test_real_document_with_trailing_bytes_is_rejected(vectors_dir):
    raw, at = load_vector(vectors_dir, VECTOR_FILES[0])
    with pytest.raises(AttestationError, match="trailing"):
        verify_attestation(raw + b"\x00", at=at)


def test_real_document_relabelled_es256_is_rejected(vectors_dir):
    raw, at = load_vector(vectors_dir, VECTOR_FILES[0])
    with pytest.raises(AttestationError, match="ES384"):
        verify_attestation(_rebuild(raw, protected=cbor2.dumps({1: -7})), at=at)


# --- test PKI: the same checks without ../shared --------------------------------------------


def _verify(pki: TestPki, document: bytes, **kwargs):
    kwargs.setdefault("at", pki.valid_at)
    return verify_attestation(document, root_sha256=pki.root_sha256, **kwargs)


def test_test_pki_document_verifies_with_pinned_pcr0(pki):
    doc = _verify(pki, pki.document(user_data=b"u", nonce=b"n"), expected_pcrs={0: IMAGE_PCR0})
    assert doc.pcrs[0] == IMAGE_PCR0
    assert (doc.user_data, doc.nonce) == (b"u", b"n")


def test_test_pki_tagged_cose_sign1_verifies(pki):
    _verify(pki, pki.sign_document(pki.payload(), tagged=True))


def test_test_pki_document_is_rejected_after_expiry(pki):
    with pytest.raises(AttestationError, match="expired"):
        _verify(pki, pki.document(), at=pki.not_after + dt.timedelta(seconds=1))


def test_test_pki_document_is_rejected_before_validity(pki):
    with pytest.raises(AttestationError, match="not yet valid"):
        _verify(pki, pki.document(), at=pki.not_before - dt.timedelta(seconds=1))


def test_naive_at_is_taken_as_utc(pki):
    _verify(pki, pki.document(), at=pki.valid_at.replace(tzinfo=None))


def test_test_pki_document_with_any_byte_flipped_is_rejected(pki):
    raw = pki.document(public_key=b"k" * 64, user_data=b"u" * 32, nonce=b"n" * 16)
    accepted = []
    for index in range(len(raw)):
        try:
            _verify(pki, _flip(raw, index))
        except AttestationError:
            continue
        accepted.append(index)
    assert accepted == []


def test_test_pki_document_is_rejected_under_the_aws_root(pki):
    with pytest.raises(AttestationError, match="not the pinned root"):
        verify_attestation(pki.document(), at=pki.valid_at)


def test_document_from_another_pki_is_rejected(pki):
    other = TestPki()
    with pytest.raises(AttestationError, match="not the pinned root"):
        _verify(pki, other.document())


def test_document_with_a_lookalike_root_is_rejected(pki):
    impostor = TestPki()
    payload = pki.payload()
    payload["cabundle"] = [impostor.der(impostor.root), pki.der(pki.intermediate)]
    with pytest.raises(AttestationError, match="not the pinned root"):
        _verify(pki, pki.sign_document(payload))


def test_leaf_not_issued_by_the_intermediate_is_rejected(pki):
    other = TestPki()
    payload = pki.payload()
    payload["certificate"] = other.der(other.leaf)
    with pytest.raises(AttestationError, match="not issued by"):
        _verify(pki, pki.sign_document(payload, key=other.leaf_key))


def test_intermediate_that_is_not_a_ca_is_rejected():
    pki = TestPki(intermediate_is_ca=False)
    with pytest.raises(AttestationError, match="not a CA"):
        _verify(pki, pki.document())


def test_leaf_with_an_unknown_critical_extension_is_rejected():
    pki = TestPki(leaf_unknown_critical=True)
    with pytest.raises(AttestationError, match="critical extension"):
        _verify(pki, pki.document())


def test_signature_by_another_key_is_rejected(pki):
    other = TestPki()
    with pytest.raises(AttestationError, match="COSE signature"):
        _verify(pki, pki.sign_document(pki.payload(), key=other.leaf_key))


def test_pcr_mismatch_is_rejected(pki):
    with pytest.raises(AttestationError, match="PCR0 is"):
        _verify(pki, pki.document(), expected_pcrs={0: OTHER_PCR0})


def test_pinned_pcr_absent_from_document_is_rejected(pki):
    with pytest.raises(AttestationError, match="PCR20 is pinned but absent"):
        _verify(pki, pki.document(), expected_pcrs={20: bytes(48)})


def test_debug_pcrs_are_rejected_when_pinned(pki):
    debug = pki.document(pcrs={0: bytes(48), 1: bytes(48), 2: bytes(48)})
    assert _verify(pki, debug).is_debug_mode
    with pytest.raises(AttestationError, match="debug mode"):
        _verify(pki, debug, expected_pcrs={0: bytes(48)})


@pytest.mark.parametrize(
    "document, reason",
    [
        (b"", "empty"),
        (b"\xff\x00garbage", "CBOR"),
        (cbor2.dumps({"not": "an array"}), "COSE_Sign1"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"x"]), "COSE_Sign1"),
        (cbor2.dumps(cbor2.CBORTag(17, [b"", {}, b"", b""])), "tag 17"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", [], b"\xa0", bytes(96)]), "unprotected"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"\xff", bytes(96)]), "payload is not valid CBOR"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, cbor2.dumps([1]), bytes(96)]), "must be a map"),
        (cbor2.dumps([b"\xa1\x01\x38\x22", {}, b"\xa0", bytes(64)]), "96 bytes"),
        (bytes(0x3001), "NSM maximum"),
    ],
)
def test_malformed_documents_are_rejected_with_a_reason(pki, document, reason):
    with pytest.raises(AttestationError, match=reason):
        _verify(pki, document)


@pytest.mark.parametrize(
    "protected, reason", [({1: -7}, "ES384"), ({}, "ES384"), ({1: "ES384"}, "ES384")]
)
def test_non_es384_algorithms_are_rejected(pki, protected, reason):
    with pytest.raises(AttestationError, match=reason):
        _verify(pki, pki.sign_document(pki.payload(), protected=protected))


def test_algorithm_in_the_unprotected_header_is_rejected(pki):
    cose = cbor2.loads(pki.document())
    cose[1] = {1: -35}
    with pytest.raises(AttestationError, match="protected header only"):
        _verify(pki, cbor2.dumps(cose))


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("digest", "SHA256", "digest"),
        ("module_id", "", "module_id"),
        ("timestamp", 0, "timestamp"),
        ("pcrs", {}, "pcrs"),
        ("pcrs", {0: b"short"}, "PCR0"),
        ("pcrs", {40: bytes(48)}, "index"),
        ("cabundle", [], "cabundle"),
        ("certificate", b"not der", "certificate"),
        ("user_data", b"u" * 513, "user_data"),
        ("public_key", "text", "public_key"),
    ],
)
def test_payload_fields_outside_the_nsm_specification_are_rejected(pki, field, value, reason):
    payload = pki.payload()
    payload[field] = value
    with pytest.raises(AttestationError, match=reason):
        _verify(pki, pki.sign_document(payload))
