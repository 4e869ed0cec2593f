"""What the vault's attestation binds, and how a verifier checks it without trusting any host.

The enclave answers ``attest`` with an NSM attestation document whose

- ``public_key`` is the DER SubjectPublicKeyInfo of its P-384 signing key,
- ``user_data`` is the canonical JSON ``{"format": ..., "kms_key_arn": ..., "public_key_sha384":
  ...}``: the KMS key the enclave obtained the signing key through, and the key again,
- ``nonce`` is the verifier's fresh nonce.

:func:`verify_vault_attestation` checks, in this order and naming the first that fails: the
document (COSE signature, chain to the pinned AWS Nitro root, every certificate valid at the given
time), the PCRs, the nonce, that the attested key is the key the vault returned, the binding in
``user_data`` and, when given, the KMS key ARN. A host can relay such a document but cannot make
one: only an enclave with the measured image holds the NSM that signs it.

Depends on cbor2 and cryptography only (through :mod:`cdk_trn_runtime.enclave.attestation`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cdk_trn_runtime.enclave import attestation as _attestation
from cdk_trn_runtime.enclave.attestation import (
    AttestationDocument,
    AttestationError,
    verify_attestation,
)

__all__ = [
    "BINDING_FORMAT",
    "KMS_KEY_ARN",
    "VaultAttestation",
    "VaultAttestationError",
    "vault_user_data",
    "verify_vault_attestation",
]

BINDING_FORMAT = "cdk-trn.vault-attestation/1"
# A KMS key ARN (not an alias): what the vault is configured with and what KMS answers with.
KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]{1,128}$")


class VaultAttestationError(AttestationError):
    """A vault attestation failed one check; ``check`` names it (document, pcrs, nonce,
    public_key, user_data, kms_key)."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check


def vault_user_data(kms_key_arn: str, public_key_der: bytes) -> bytes:
    """The ``user_data`` the enclave puts in its attestation (canonical JSON, < 512 bytes)."""
    if not KMS_KEY_ARN.match(kms_key_arn):
        raise ValueError(f"not a KMS key ARN: {kms_key_arn!r}")
    binding = {
        "format": BINDING_FORMAT,
        "kms_key_arn": kms_key_arn,
        "public_key_sha384": hashlib.sha384(public_key_der).hexdigest(),
    }
    return json.dumps(binding, sort_keys=True, separators=(",", ":")).encode("ascii")


@dataclass(frozen=True)
class VaultAttestation:
    """What a verified vault attestation establishes."""

    document: AttestationDocument
    public_key_der: bytes
    kms_key_arn: str

    @property
    def key_sha256(self) -> str:
        return hashlib.sha256(self.public_key_der).hexdigest()


def _binding(user_data: bytes | None) -> dict[str, Any]:
    if not user_data:
        raise VaultAttestationError("user_data", "the document binds no KMS key (no user_data)")
    try:
        binding = json.loads(user_data.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise VaultAttestationError(
            "user_data", f"user_data is not the vault binding: {exc}"
        ) from exc
    if not isinstance(binding, dict) or binding.get("format") != BINDING_FORMAT:
        raise VaultAttestationError("user_data", f"user_data is not a {BINDING_FORMAT} binding")
    return binding


def verify_vault_attestation(
    document: bytes,
    *,
    public_key_der: bytes,
    nonce: bytes,
    expected_pcrs: Mapping[int, bytes | str],
    kms_key_arn: str | None = None,
    at: _dt.datetime | None = None,
    root_sha256: str | None = None,
) -> VaultAttestation:
    """Check that ``document`` attests ``public_key_der`` in an enclave with ``expected_pcrs``.

    ``nonce`` is the fresh value the verifier sent; ``at`` defaults to now; ``root_sha256``
    defaults to the AWS Nitro Enclaves Root-G1 fingerprint. Raises
    :class:`VaultAttestationError` naming the first failed check.
    """
    if not expected_pcrs or 0 not in expected_pcrs:
        raise ValueError("expected_pcrs must pin at least PCR0 (the enclave image)")
    root = root_sha256 or _attestation.AWS_NITRO_ROOT_G1_SHA256
    try:
        doc = verify_attestation(document, at=at, root_sha256=root)
    except AttestationError as exc:
        raise VaultAttestationError("document", str(exc)) from exc
    try:
        _attestation._check_pcrs(doc, expected_pcrs)
    except AttestationError as exc:
        raise VaultAttestationError("pcrs", str(exc)) from exc
    if not nonce:
        raise ValueError("nonce must be the fresh, non-empty value sent to the vault")
    if doc.nonce is None:
        raise VaultAttestationError("nonce", "the document carries no nonce (it may be replayed)")
    if not hmac.compare_digest(doc.nonce, nonce):
        raise VaultAttestationError("nonce", "the document's nonce is not the one sent")
    if not doc.public_key:
        raise VaultAttestationError("public_key", "the document attests no public key")
    if not hmac.compare_digest(doc.public_key, public_key_der):
        raise VaultAttestationError(
            "public_key",
            f"the vault returned key sha256 {hashlib.sha256(public_key_der).hexdigest()} but the "
            f"enclave attests sha256 {hashlib.sha256(doc.public_key).hexdigest()}",
        )
    binding = _binding(doc.user_data)
    if binding.get("public_key_sha384") != hashlib.sha384(doc.public_key).hexdigest():
        raise VaultAttestationError("user_data", "user_data names another public key")
    attested_arn = binding.get("kms_key_arn")
    if not isinstance(attested_arn, str) or not KMS_KEY_ARN.match(attested_arn):
        raise VaultAttestationError("user_data", "user_data names no KMS key ARN")
    if kms_key_arn is not None and attested_arn != kms_key_arn:
        raise VaultAttestationError(
            "kms_key", f"the enclave's key comes from {attested_arn}, expected {kms_key_arn}"
        )
    return VaultAttestation(document=doc, public_key_der=doc.public_key, kms_key_arn=attested_arn)
