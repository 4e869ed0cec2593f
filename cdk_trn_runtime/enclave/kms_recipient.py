"""KMS calls made from inside the enclave with a ``Recipient``, and the signing key they yield.

This module owns the enclave's side of the KMS conversation:

- an ephemeral RSA-2048 key pair per call, whose public half goes into a fresh attestation
  document (``public_key`` field) and whose private half opens ``CiphertextForRecipient``;
- the ``Recipient`` parameter: ``{"AttestationDocument": ..., "KeyEncryptionAlgorithm":
  "RSAES_OAEP_SHA_256"}``;
- first start: ``GenerateDataKeyPair`` (``ECC_NIST_P384``) -> the P-384 signing key, plus the
  encrypted private key and public key the parent stores for later starts;
- later starts: ``Decrypt`` of the stored encrypted private key, again with a ``Recipient``.

KMS only answers with ``CiphertextForRecipient`` when the key policy's
``kms:RecipientAttestation:ImageSha384`` condition holds for the attestation document, so the
plaintext private key exists only inside an enclave running the measured image.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cdk_trn_runtime.enclave.cms import CmsError, open_enveloped_data

__all__ = [
    "KEY_ENCRYPTION_ALGORITHM",
    "AttestationSource",
    "KmsClient",
    "KeyMismatchError",
    "KmsRecipientError",
    "SigningKey",
    "StoredKey",
    "decrypt_signing_key",
    "generate_signing_key",
    "recipient_param",
]

KEY_ENCRYPTION_ALGORITHM = "RSAES_OAEP_SHA_256"
KEY_PAIR_SPEC = "ECC_NIST_P384"
# KMS accepts 2048-bit and larger RSA keys in the attestation document; 2048 keeps the per-call
# key generation short inside a small enclave while the key lives for one call only.
_EPHEMERAL_RSA_BITS = 2048


class KmsRecipientError(Exception):
    """A KMS call with a Recipient did not yield a usable signing key; says why."""


class KeyMismatchError(KmsRecipientError):
    """Key state or a KMS answer names another KMS key than the configured one."""


class AttestationSource(Protocol):
    """Where attestation documents come from: ``/dev/nsm`` in an enclave, a test PKI in tests."""

    def attest(
        self,
        *,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        """Return a COSE_Sign1 attestation document carrying the given fields."""
        ...


class KmsClient(Protocol):
    """The two KMS operations the enclave uses, with boto3's keyword-argument shapes."""

    def generate_data_key_pair(self, **kwargs: Any) -> dict[str, Any]: ...

    def decrypt(self, **kwargs: Any) -> dict[str, Any]: ...


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


@dataclass(frozen=True)
class StoredKey:
    """What the parent keeps between enclave starts: nothing here is secret outside KMS."""

    key_id: str
    encrypted_private_key: bytes
    public_key: bytes  # DER SubjectPublicKeyInfo

    def to_json(self) -> dict[str, str]:
        return {
            "key_id": self.key_id,
            "encrypted_private_key": base64.b64encode(self.encrypted_private_key).decode(),
            "public_key": base64.b64encode(self.public_key).decode(),
        }

    @classmethod
    def from_json(cls, data: Any) -> StoredKey:
        try:
            return cls(
                key_id=str(data["key_id"]),
                encrypted_private_key=_b64(data["encrypted_private_key"]),
                public_key=_b64(data["public_key"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KmsRecipientError(f"stored key state is malformed: {exc}") from exc


@dataclass(frozen=True)
class SigningKey:
    """The P-384 signing key, in enclave memory only, and the state to store outside."""

    private_key: ec.EllipticCurvePrivateKey
    stored: StoredKey

    @property
    def public_key_der(self) -> bytes:
        return self.stored.public_key


def recipient_param(attestation_document: bytes) -> dict[str, Any]:
    """The ``Recipient`` request parameter of Decrypt / GenerateDataKey(Pair) / GenerateRandom."""
    return {
        "AttestationDocument": attestation_document,
        "KeyEncryptionAlgorithm": KEY_ENCRYPTION_ALGORITHM,
    }


class _EphemeralRecipient:
    """One RSA key pair, used for exactly one KMS call."""

    def __init__(self, attestation: AttestationSource) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=_EPHEMERAL_RSA_BITS)
        public_der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.param = recipient_param(attestation.attest(public_key=public_der))

    def open(self, response: dict[str, Any], operation: str) -> bytes:
        if response.get("Plaintext") or response.get("PrivateKeyPlaintext"):
            # KMS omits plaintext when a Recipient is given; plaintext here means the request was
            # answered by something other than KMS honouring the Recipient, so refuse it.
            raise KmsRecipientError(f"{operation} returned plaintext despite the Recipient")
        blob = response.get("CiphertextForRecipient")
        if not isinstance(blob, bytes | bytearray) or not blob:
            raise KmsRecipientError(f"{operation} returned no CiphertextForRecipient")
        try:
            return open_enveloped_data(bytes(blob), self._key)
        except CmsError as exc:
            raise KmsRecipientError(f"{operation} CiphertextForRecipient: {exc}") from exc


def _load_p384(
    pkcs8_der: bytes, expected_public: bytes, operation: str
) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_der_private_key(pkcs8_der, password=None)
    except (ValueError, TypeError) as exc:
        raise KmsRecipientError(f"{operation} did not yield a DER private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise KmsRecipientError(f"{operation} did not yield an EC P-384 private key")
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not hmac.compare_digest(public, expected_public):
        raise KmsRecipientError(f"{operation}: private key does not match the stored public key")
    return key


def _call(operation: str, method: Any, **params: Any) -> dict[str, Any]:
    try:
        response = method(**params)
    except Exception as exc:
        # botocore's ClientError and connection errors alike: the parent gets KMS's own words
        # (e.g. AccessDeniedException when the attestation condition fails).
        raise KmsRecipientError(f"KMS {operation} failed: {exc}") from exc
    if not isinstance(response, dict):
        raise KmsRecipientError(f"KMS {operation} returned no response")
    return response


def _require_key_id(response: dict[str, Any], key_id: str, operation: str) -> None:
    # KMS answers with the ARN of the key it used. Anything else means the ciphertext (or the
    # answer) belongs to another key than the one this enclave is configured for.
    answered = response.get("KeyId")
    if answered != key_id:
        raise KeyMismatchError(
            f"{operation} used KMS key {answered!r}, not the configured key {key_id}"
        )


def generate_signing_key(kms: KmsClient, key_id: str, attestation: AttestationSource) -> SigningKey:
    """First start: a new P-384 key pair from ``GenerateDataKeyPair`` with a Recipient.

    ``key_id`` is the configured key's ARN; KMS must answer that it used exactly that key.
    """
    recipient = _EphemeralRecipient(attestation)
    response = _call(
        "GenerateDataKeyPair",
        kms.generate_data_key_pair,
        KeyId=key_id,
        KeyPairSpec=KEY_PAIR_SPEC,
        Recipient=recipient.param,
    )
    _require_key_id(response, key_id, "GenerateDataKeyPair")
    public = response.get("PublicKey")
    encrypted = response.get("PrivateKeyCiphertextBlob")
    if not isinstance(public, bytes) or not isinstance(encrypted, bytes) or not encrypted:
        raise KmsRecipientError("GenerateDataKeyPair returned no PublicKey or ciphertext blob")
    private_der = recipient.open(response, "GenerateDataKeyPair")
    private_key = _load_p384(private_der, public, "GenerateDataKeyPair")
    stored = StoredKey(
        key_id=key_id,
        encrypted_private_key=encrypted,
        public_key=public,
    )
    return SigningKey(private_key=private_key, stored=stored)


def decrypt_signing_key(
    kms: KmsClient, stored: StoredKey, attestation: AttestationSource, key_id: str
) -> SigningKey:
    """Later starts: the stored encrypted private key, opened by ``Decrypt`` with a Recipient.

    Key state naming any key but the configured ``key_id`` is refused before KMS is asked, and
    Decrypt is pinned to ``key_id`` and must answer that it used it: state written under a key
    someone else controls (whose policy lets them decrypt it outside the enclave) never loads.
    """
    if stored.key_id != key_id:
        raise KeyMismatchError(
            f"key state names KMS key {stored.key_id}, but this enclave is configured for {key_id}"
        )
    recipient = _EphemeralRecipient(attestation)
    response = _call(
        "Decrypt",
        kms.decrypt,
        CiphertextBlob=stored.encrypted_private_key,
        KeyId=key_id,
        Recipient=recipient.param,
    )
    _require_key_id(response, key_id, "Decrypt")
    private_der = recipient.open(response, "Decrypt")
    private_key = _load_p384(private_der, stored.public_key, "Decrypt")
    return SigningKey(private_key=private_key, stored=stored)


def boto3_kms_client(
    region: str, credentials: dict[str, str], *, endpoint_url: str | None = None
) -> KmsClient:
    """A boto3 KMS client for use inside the enclave.

    The enclave has no network and no instance metadata: the parent passes the host role's
    temporary credentials over vsock, and KMS is reached through ``vsock-proxy`` on the parent
    (CID 3, port 8000 by default) by way of
    :class:`cdk_trn_runtime.enclave.service.StreamForwarder`, with
    ``kms.<region>.amazonaws.com`` resolved to 127.0.0.1 in the image. TLS still terminates at KMS,
    not at the parent. Not exercised by the tests (no enclave, no KMS here).
    """
    import boto3  # noqa: PLC0415 - only the production path needs boto3

    client: KmsClient = boto3.client(
        "kms",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=credentials["access_key_id"],
        aws_secret_access_key=credentials["secret_access_key"],
        aws_session_token=credentials.get("session_token"),
    )
    return client
