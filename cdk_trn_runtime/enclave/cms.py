"""Opening KMS ``CiphertextForRecipient`` inside the enclave.

When a KMS request carries a ``Recipient`` (an attestation document holding the enclave's RSA
public key), KMS returns the secret as a CMS EnvelopedData (RFC 5652) instead of plaintext:

- one KeyTransRecipientInfo, recipient named by subjectKeyIdentifier, whose content-encryption
  key is wrapped with RSAES-OAEP (SHA-256, MGF1 with SHA-256, empty label);
- content type id-data, encrypted with AES-256-CBC (IV in the algorithm parameters, PKCS#7
  padding).

asn1crypto parses the structure (cryptography's PKCS#7 decryption does not accept a
subjectKeyIdentifier recipient); cryptography does the RSA and AES. Anything else - another key
transport, another hash, another cipher, a detached content - is refused, because KMS never sends
it and accepting it would only widen what an attacker controlling the parent can feed the enclave.
"""

from __future__ import annotations

import hashlib

from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import keys as asn1_keys
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["CmsError", "open_enveloped_data", "subject_key_identifiers"]

_AES_256_KEY_BYTES = 32
_AES_BLOCK_BYTES = 16
# A KMS data key pair's private key is the largest thing KMS returns for a recipient (an RSA-4096
# PKCS#8 is about 2.4 KB); 64 KiB leaves ample room and bounds what the parent can make us parse.
_MAX_CMS_BYTES = 64 * 1024


class CmsError(Exception):
    """The CMS structure is not a KMS-shaped EnvelopedData this key can open; says why."""


def subject_key_identifiers(public_key: rsa.RSAPublicKey) -> tuple[bytes, ...]:
    """The identifiers a recipient may be named by: SHA-1 (RFC 5280 method 1) and SHA-256 of the
    subjectPublicKey bits."""
    spki = asn1_keys.PublicKeyInfo.load(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    # The BIT STRING contents start with the count of unused bits (always 0 for a key).
    bits = bytes(spki["public_key"].contents[1:])
    return (hashlib.sha1(bits).digest(), hashlib.sha256(bits).digest())  # noqa: S324


def open_enveloped_data(data: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """Decrypt a KMS ``CiphertextForRecipient`` with the enclave's ephemeral RSA key.

    Raises:
        CmsError: if the structure is malformed, uses algorithms KMS does not use, names no
            recipient this key can open, or fails to decrypt.
    """
    enveloped = _parse(data)
    content_key = _unwrap_content_key(enveloped, private_key)
    return _decrypt_content(enveloped["encrypted_content_info"], content_key)


def _parse(data: bytes) -> asn1_cms.EnvelopedData:
    if not isinstance(data, bytes | bytearray) or not data:
        raise CmsError("CiphertextForRecipient must be non-empty bytes")
    if len(data) > _MAX_CMS_BYTES:
        raise CmsError(f"CiphertextForRecipient is {len(data)} bytes, limit {_MAX_CMS_BYTES}")
    try:
        info = asn1_cms.ContentInfo.load(bytes(data), strict=True)
        content_type = info["content_type"].native
        enveloped = info["content"]
        # Force a full parse now so malformed inner DER fails here, with a CmsError.
        enveloped.native  # noqa: B018
    except (ValueError, TypeError, KeyError) as exc:
        raise CmsError(f"CiphertextForRecipient is not DER CMS ContentInfo: {exc}") from exc
    if content_type != "enveloped_data" or not isinstance(enveloped, asn1_cms.EnvelopedData):
        raise CmsError(f"CMS content type must be enveloped_data, got {content_type!r}")
    return enveloped


def _oaep_sha256(algorithm: asn1_cms.KeyEncryptionAlgorithm) -> bool:
    if algorithm["algorithm"].native != "rsaes_oaep":
        return False
    params = algorithm["parameters"]
    if not isinstance(params, asn1_core.Sequence):
        return False
    mgf = params["mask_gen_algorithm"]
    return (
        params["hash_algorithm"]["algorithm"].native == "sha256"
        and mgf["algorithm"].native == "mgf1"
        and mgf["parameters"]["algorithm"].native == "sha256"
        and params["p_source_algorithm"]["parameters"].native in (b"", None)
    )


def _unwrap_content_key(enveloped: asn1_cms.EnvelopedData, private_key: rsa.RSAPrivateKey) -> bytes:
    ours = subject_key_identifiers(private_key.public_key())
    named: list[asn1_cms.KeyTransRecipientInfo] = []
    others: list[asn1_cms.KeyTransRecipientInfo] = []
    reasons: list[str] = []
    for info in enveloped["recipient_infos"]:
        if info.name != "ktri":
            reasons.append(f"recipient of type {info.name} ignored")
            continue
        ktri = info.chosen
        if ktri["rid"].name != "subject_key_identifier":
            reasons.append("recipient not named by subjectKeyIdentifier ignored")
            continue
        if not _oaep_sha256(ktri["key_encryption_algorithm"]):
            reasons.append("recipient without RSAES-OAEP SHA-256 ignored")
            continue
        ski = bytes(ktri["rid"].chosen.native)
        (named if ski in ours else others).append(ktri)
    # KMS does not document how it derives the subjectKeyIdentifier, so recipients whose identifier
    # is not one we compute are still tried, after ours; OAEP's integrity check makes a wrong key
    # fail cleanly rather than yield a wrong content key.
    oaep = asym_padding.OAEP(
        mgf=asym_padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    )
    for ktri in named + others:
        try:
            key = private_key.decrypt(bytes(ktri["encrypted_key"].native), oaep)
        except ValueError:
            reasons.append("a recipient's key did not decrypt with this RSA key")
            continue
        if len(key) != _AES_256_KEY_BYTES:
            raise CmsError(f"content-encryption key is {len(key)} bytes, AES-256 needs 32")
        return key
    detail = "; ".join(reasons) or "no recipients"
    raise CmsError(f"no recipient of the EnvelopedData can be opened with this key ({detail})")


def _decrypt_content(info: asn1_cms.EncryptedContentInfo, key: bytes) -> bytes:
    if info["content_type"].native != "data":
        raise CmsError(f"encrypted content type must be data, got {info['content_type'].native!r}")
    algorithm = info["content_encryption_algorithm"]
    if algorithm["algorithm"].native != "aes256_cbc":
        raise CmsError(
            f"content encryption must be aes256_cbc, got {algorithm['algorithm'].native!r}"
        )
    iv = algorithm["parameters"].native
    if not isinstance(iv, bytes) or len(iv) != _AES_BLOCK_BYTES:
        raise CmsError("AES-256-CBC parameters must be a 16-byte IV")
    ciphertext = info["encrypted_content"].native
    if not isinstance(ciphertext, bytes) or not ciphertext:
        raise CmsError("EnvelopedData has no encrypted content (detached content is not accepted)")
    if len(ciphertext) % _AES_BLOCK_BYTES:
        raise CmsError("encrypted content is not a whole number of AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise CmsError("encrypted content has invalid PKCS#7 padding") from exc
