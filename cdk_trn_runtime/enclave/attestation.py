"""Verification of AWS Nitro Enclaves attestation documents.

This module owns one question: is this byte string an attestation document that the AWS Nitro
attestation PKI signed, valid at a given time, for an enclave whose PCRs we expect? It implements
the procedure of "Verifying the root of trust" in the Nitro Enclaves user guide with cbor2 and
cryptography only (pycose does not work with cbor2 6):

1. strict CBOR decoding of the COSE_Sign1 array (no trailing bytes, bounded size);
2. the protected header must name ES384 (COSE alg -35), nothing else is accepted;
3. the payload fields are checked for type and size as the NSM specifies them;
4. the chain ``cabundle[0] -> ... -> cabundle[n] -> certificate`` is checked link by link, and
   ``cabundle[0]`` must be the pinned AWS Nitro root (by SHA-256 of its DER), never merely the root
   the document carries;
5. every certificate must be valid at ``at`` (default: now);
6. the COSE signature (raw ``r || s``) must verify over the Sig_structure with the leaf key;
7. pinned PCRs must match, and debug-mode enclaves (PCR0-2 all zero) are refused when pinned.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = [
    "AWS_NITRO_ROOT_G1_PEM",
    "AWS_NITRO_ROOT_G1_SHA256",
    "AttestationDocument",
    "AttestationError",
    "cose_sig_structure",
    "verify_attestation",
]

# The AWS Nitro Enclaves Root-G1 certificate (CN=aws.nitro-enclaves, valid 2019-10-28 to
# 2049-10-28), published by AWS as AWS_NitroEnclaves_Root-G1.zip. It is public; it is embedded so
# callers can inspect it, but trust comes from the fingerprint below, not from this text.
AWS_NITRO_ROOT_G1_PEM = b"""-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
"""

# SHA-256 of the DER of the root above, computed from the AWS-published certificate
# (../shared/vectors/nitro-attestation/aws-nitro-enclaves-root-g1.pem) and matching the value the
# Nitro Enclaves user guide publishes. This constant, not any certificate in a document, is the
# trust anchor.
AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

_COSE_ALG = 1
_COSE_ES384 = -35
_COSE_SIGN1_TAG = 18
# NSM_RESPONSE_MAX_SIZE is 0x3000; no genuine document is larger.
_MAX_DOCUMENT_BYTES = 0x3000
_P384_COORDINATE_BYTES = 48
_PCR_LENGTHS = (32, 48, 64)
_DEBUG_PCRS = (0, 1, 2)


class AttestationError(Exception):
    """The document is not a valid attestation document for the requested checks; says why."""


@dataclass(frozen=True)
class AttestationDocument:
    """The verified payload of an attestation document."""

    module_id: str
    digest: str
    timestamp: _dt.datetime
    pcrs: Mapping[int, bytes]
    certificate: x509.Certificate
    cabundle: tuple[x509.Certificate, ...]
    public_key: bytes | None = None
    user_data: bytes | None = None
    nonce: bytes | None = None
    raw_payload: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def instance_id(self) -> str:
        """The parent instance id: the ``i-...`` prefix of ``module_id``."""
        return self.module_id.split("-enc", 1)[0]

    @property
    def is_debug_mode(self) -> bool:
        """True when PCR0-2 are all zero, which is how debug-mode enclaves report."""
        return all(not any(self.pcrs.get(i, b"\x00")) for i in _DEBUG_PCRS)


def verify_attestation(
    document: bytes,
    *,
    at: _dt.datetime | None = None,
    expected_pcrs: Mapping[int, bytes | str] | None = None,
    root_sha256: str = AWS_NITRO_ROOT_G1_SHA256,
) -> AttestationDocument:
    """Verify an attestation document and return its parsed payload.

    Args:
        document: the raw COSE_Sign1 bytes, as ``/dev/nsm`` returns them (tagged or untagged).
        at: the instant at which every certificate must be valid. Default: now. A naive datetime
            is taken as UTC.
        expected_pcrs: PCR index -> expected value (bytes or hex). Default: no pinning. When given,
            a debug-mode document (PCR0-2 all zero) is refused whatever the expected values.
        root_sha256: hex SHA-256 of the DER of the trusted root. Default: the AWS Nitro Enclaves
            Root-G1 fingerprint. Tests pass the fingerprint of their own PKI.

    Raises:
        AttestationError: with the reason, on the first failed check.
    """
    when = _instant(at)
    protected_bytes, payload_bytes, signature = _decode_cose_sign1(document)
    payload = _decode_payload(payload_bytes)
    try:
        doc = _document_from_payload(payload)
        # The COSE signature first: it covers the whole payload (certificates included), so a
        # tampered document fails after one verification instead of a chain of them.
        _verify_signature(doc.certificate, protected_bytes, payload_bytes, signature)
        _verify_chain(doc, when, root_sha256)
    except AttestationError:
        raise
    except Exception as exc:
        # cryptography parses certificates and their extensions lazily and raises several
        # exception types (InvalidVersion, DuplicateExtension, ValueError) on malformed DER;
        # whatever the type, a verifier must fail closed and say why.
        raise AttestationError(f"malformed certificate: {type(exc).__name__}: {exc}") from exc
    if expected_pcrs is not None:
        _check_pcrs(doc, expected_pcrs)
    return doc


def cose_sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The COSE Sig_structure for COSE_Sign1 with no external AAD (RFC 9052, section 4.4)."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def _instant(at: _dt.datetime | None) -> _dt.datetime:
    if at is None:
        return _dt.datetime.now(_dt.UTC)
    if at.tzinfo is None:
        return at.replace(tzinfo=_dt.UTC)
    return at


def _strict_loads(data: bytes, what: str) -> Any:
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise AttestationError(f"{what} is not valid CBOR: {exc}") from exc
    if stream.tell() != len(data):
        raise AttestationError(f"{what} has {len(data) - stream.tell()} trailing bytes after CBOR")
    return value


def _decode_cose_sign1(document: bytes) -> tuple[bytes, bytes, bytes]:
    if not isinstance(document, bytes | bytearray | memoryview):
        raise AttestationError(f"document must be bytes, got {type(document).__name__}")
    document = bytes(document)
    if not document:
        raise AttestationError("document is empty")
    if len(document) > _MAX_DOCUMENT_BYTES:
        raise AttestationError(
            f"document is {len(document)} bytes, more than the NSM maximum {_MAX_DOCUMENT_BYTES}"
        )
    outer = _strict_loads(document, "document")
    if isinstance(outer, cbor2.CBORTag):
        if outer.tag != _COSE_SIGN1_TAG:
            raise AttestationError(f"document has CBOR tag {outer.tag}, expected COSE_Sign1 (18)")
        outer = outer.value
    # cbor2 decodes containers inside a tag as immutable (tuple, frozendict).
    if not isinstance(outer, list | tuple) or len(outer) != 4:
        raise AttestationError("document is not a COSE_Sign1 array of 4 elements")
    protected, unprotected, payload, signature = outer
    if not isinstance(protected, bytes) or not protected:
        raise AttestationError("COSE protected header must be a non-empty byte string")
    if not isinstance(unprotected, Mapping):
        raise AttestationError("COSE unprotected header must be a map")
    if _COSE_ALG in unprotected:
        raise AttestationError("COSE algorithm must be in the protected header only")
    if not isinstance(payload, bytes) or not payload:
        raise AttestationError("COSE payload must be a non-empty byte string")
    if not isinstance(signature, bytes):
        raise AttestationError("COSE signature must be a byte string")
    header = _strict_loads(protected, "COSE protected header")
    if not isinstance(header, dict):
        raise AttestationError("COSE protected header must encode a map")
    alg = header.get(_COSE_ALG)
    if alg != _COSE_ES384:
        raise AttestationError(f"COSE algorithm must be ES384 (-35), got {alg!r}")
    if len(signature) != 2 * _P384_COORDINATE_BYTES:
        raise AttestationError(
            f"ES384 signature must be 96 bytes (r||s), got {len(signature)} bytes"
        )
    return protected, payload, signature


def _decode_payload(payload_bytes: bytes) -> dict[str, Any]:
    payload = _strict_loads(payload_bytes, "attestation payload")
    if not isinstance(payload, dict):
        raise AttestationError("attestation payload must be a map")
    return payload


def _bytes_field(payload: Mapping[str, Any], name: str, low: int, high: int) -> bytes:
    value = payload.get(name)
    if not isinstance(value, bytes):
        raise AttestationError(f"{name} must be a byte string, got {type(value).__name__}")
    if not low <= len(value) <= high:
        raise AttestationError(f"{name} must be {low}..{high} bytes, got {len(value)}")
    return value


def _optional_bytes(payload: Mapping[str, Any], name: str, high: int) -> bytes | None:
    if payload.get(name) is None:
        return None
    # public_key may be a zero-length byte string in genuine documents, so the floor is 0.
    return _bytes_field(payload, name, 0, high)


def _load_der_certificate(der: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as exc:
        raise AttestationError(f"{what} is not a DER X.509 certificate: {exc}") from exc


def _document_from_payload(payload: dict[str, Any]) -> AttestationDocument:
    module_id = payload.get("module_id")
    if not isinstance(module_id, str) or not module_id:
        raise AttestationError("module_id must be a non-empty text string")
    digest = payload.get("digest")
    if digest != "SHA384":
        raise AttestationError(f"digest must be 'SHA384', got {digest!r}")
    timestamp = payload.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp <= 0:
        raise AttestationError("timestamp must be a positive integer (ms since the epoch)")
    try:
        when = _dt.datetime.fromtimestamp(timestamp / 1000, _dt.UTC)
    except (OverflowError, ValueError, OSError) as exc:
        raise AttestationError(f"timestamp {timestamp} is out of range") from exc
    pcrs = _pcrs_field(payload.get("pcrs"))
    certificate = _load_der_certificate(
        _bytes_field(payload, "certificate", 1, 1024), "certificate"
    )
    bundle = payload.get("cabundle")
    if not isinstance(bundle, list) or not bundle:
        raise AttestationError("cabundle must be a non-empty array")
    cabundle = []
    for index, der in enumerate(bundle):
        if not isinstance(der, bytes) or not 1 <= len(der) <= 1024:
            raise AttestationError(f"cabundle[{index}] must be a byte string of 1..1024 bytes")
        cabundle.append(_load_der_certificate(der, f"cabundle[{index}]"))
    return AttestationDocument(
        module_id=module_id,
        digest=digest,
        timestamp=when,
        pcrs=pcrs,
        certificate=certificate,
        cabundle=tuple(cabundle),
        public_key=_optional_bytes(payload, "public_key", 1024),
        user_data=_optional_bytes(payload, "user_data", 512),
        nonce=_optional_bytes(payload, "nonce", 512),
        raw_payload=payload,
    )


def _pcrs_field(value: Any) -> dict[int, bytes]:
    if not isinstance(value, dict) or not 1 <= len(value) <= 32:
        raise AttestationError("pcrs must be a map of 1..32 entries")
    pcrs: dict[int, bytes] = {}
    for index, pcr in value.items():
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 32:
            raise AttestationError(f"pcrs index must be an integer 0..31, got {index!r}")
        if not isinstance(pcr, bytes) or len(pcr) not in _PCR_LENGTHS:
            raise AttestationError(f"PCR{index} must be 32, 48 or 64 bytes")
        pcrs[index] = pcr
    return pcrs


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _check_validity(cert: x509.Certificate, when: _dt.datetime, what: str) -> None:
    if when < cert.not_valid_before_utc:
        raise AttestationError(
            f"{what} is not yet valid at {when.isoformat()} "
            f"(valid from {cert.not_valid_before_utc.isoformat()})"
        )
    if when > cert.not_valid_after_utc:
        raise AttestationError(
            f"{what} expired at {cert.not_valid_after_utc.isoformat()}, before {when.isoformat()}"
        )


def _check_issuer_role(cert: x509.Certificate, what: str, cas_below: int) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound as exc:
        raise AttestationError(f"{what} issues a certificate but has no BasicConstraints") from exc
    if not constraints.ca:
        raise AttestationError(f"{what} issues a certificate but is not a CA")
    if constraints.path_length is not None and cas_below > constraints.path_length:
        raise AttestationError(
            f"{what} allows {constraints.path_length} CAs below it, chain has {cas_below}"
        )
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise AttestationError(f"{what} issues a certificate but lacks keyCertSign")


def _verify_chain(doc: AttestationDocument, when: _dt.datetime, root_sha256: str) -> None:
    chain = [*doc.cabundle, doc.certificate]
    names = [f"cabundle[{i}]" for i in range(len(doc.cabundle))] + ["certificate"]
    root = chain[0]
    if not hmac.compare_digest(_fingerprint(root), root_sha256.lower()):
        raise AttestationError(
            f"cabundle[0] is not the pinned root: SHA-256 {_fingerprint(root)}, "
            f"expected {root_sha256.lower()}"
        )
    for index, cert in enumerate(chain):
        _check_validity(cert, when, names[index])
        _check_critical_extensions(cert, names[index])
    # The leaf has no AuthorityKeyIdentifier, so an RFC 5280 client policy would reject it; each
    # link is checked directly instead: name chaining and signature, CA role, validity above.
    _verify_issued_by(root, root, names[0], names[0])
    for index in range(1, len(chain)):
        _verify_issued_by(chain[index], chain[index - 1], names[index], names[index - 1])
        # CAs strictly between this issuer and the leaf: chain[index .. len-2].
        _check_issuer_role(chain[index - 1], names[index - 1], len(chain) - 1 - index)
    leaf = doc.certificate
    try:
        leaf_constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        leaf_constraints = None
    if leaf_constraints is not None and leaf_constraints.ca:
        raise AttestationError("certificate (the signing leaf) must not be a CA")
    try:
        leaf_usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        leaf_usage = None
    if leaf_usage is not None and not leaf_usage.digital_signature:
        raise AttestationError("certificate (the signing leaf) lacks digitalSignature key usage")


# RFC 5280: a certificate with a critical extension the verifier does not process is rejected.
_UNDERSTOOD_CRITICAL = {x509.BasicConstraints.oid, x509.KeyUsage.oid}


def _check_critical_extensions(cert: x509.Certificate, what: str) -> None:
    for extension in cert.extensions:
        if extension.critical and extension.oid not in _UNDERSTOOD_CRITICAL:
            raise AttestationError(
                f"{what} has a critical extension this verifier does not process: "
                f"{extension.oid.dotted_string}"
            )


def _verify_issued_by(
    subject: x509.Certificate, issuer: x509.Certificate, subject_name: str, issuer_name: str
) -> None:
    try:
        subject.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        reason = str(exc) or type(exc).__name__
        raise AttestationError(f"{subject_name} is not issued by {issuer_name}: {reason}") from exc


def _verify_signature(
    leaf: x509.Certificate, protected: bytes, payload: bytes, signature: bytes
) -> None:
    try:
        key = leaf.public_key()
    except (ValueError, TypeError) as exc:
        raise AttestationError(f"certificate key cannot be loaded: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError("certificate key must be an EC P-384 key for ES384")
    r = int.from_bytes(signature[:_P384_COORDINATE_BYTES], "big")
    s = int.from_bytes(signature[_P384_COORDINATE_BYTES:], "big")
    try:
        key.verify(
            encode_dss_signature(r, s),
            cose_sig_structure(protected, payload),
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature as exc:
        raise AttestationError("COSE signature does not verify with the certificate key") from exc


def _expected_bytes(index: int, value: bytes | str) -> bytes:
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError as exc:
            raise AttestationError(f"expected PCR{index} is not hex: {value!r}") from exc
    return bytes(value)


def _check_pcrs(doc: AttestationDocument, expected: Mapping[int, bytes | str]) -> None:
    if doc.is_debug_mode:
        raise AttestationError(
            "enclave runs in debug mode (PCR0-2 are all zero); refused because PCRs are pinned"
        )
    for index, value in sorted(expected.items()):
        want = _expected_bytes(index, value)
        got = doc.pcrs.get(index)
        if got is None:
            raise AttestationError(f"PCR{index} is pinned but absent from the document")
        if not hmac.compare_digest(got, want):
            raise AttestationError(f"PCR{index} is {got.hex()}, expected {want.hex()}")
