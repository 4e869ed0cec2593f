"""Test doubles for the enclave tests: a test PKI, an NSM stand-in, KMS and STS test doubles.

- :class:`TestPki`: root -> intermediate -> leaf, all P-384, shaped like the AWS Nitro PKI (the
  leaf has no AuthorityKeyIdentifier), so negative attestation cases run without ../shared.
- :class:`TestPkiNsm`: an attestation source that signs COSE_Sign1 documents with the test PKI,
  as ``/dev/nsm`` would with the AWS one.
- :func:`kms_enveloped_data`: a KMS-shaped CMS EnvelopedData (RSA-OAEP SHA-256 key transport,
  AES-256-CBC, recipient by subjectKeyIdentifier), built with asn1crypto.
- :class:`KmsTestDouble`: GenerateDataKeyPair / Decrypt that validate their parameters against
  botocore's KMS model and enforce the key policy's attestation condition (Recipient present,
  document valid under the test PKI, ImageSha384 = PCR0, optional PCR8), answering with
  ``CiphertextForRecipient`` as real CMS.
- :class:`StsTestDouble`: an STS transport that recomputes the SigV4 signature of the forwarded
  GetCallerIdentity request with the caller's secret key and answers who signed it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2
from asn1crypto import algos as asn1_algos
from asn1crypto import cms as asn1_cms
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.session import get_session
from botocore.validate import ParamValidator
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from cdk_trn_runtime.enclave.attestation import (
    AttestationError,
    cose_sig_structure,
    verify_attestation,
)

UTC = dt.UTC
IMAGE_PCR0 = hashlib.sha384(b"cdk-trn test enclave image").digest()
OTHER_PCR0 = hashlib.sha384(b"some other enclave image").digest()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cdk-trn test PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    path_length: int | None,
    not_before: dt.datetime,
    not_after: dt.datetime,
    authority_key_id: bool = True,
    unknown_critical: bool = False,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=ca,
        )
    )
    if unknown_critical:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"),
            critical=True,
        )
    if authority_key_id and issuer != subject:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA384())


@dataclass
class TestPki:
    """Root -> intermediate -> leaf (P-384). ``not_before``/``not_after`` bound every cert."""

    __test__ = False  # not a pytest test class

    not_before: dt.datetime = field(default_factory=lambda: dt.datetime(2026, 1, 1, tzinfo=UTC))
    not_after: dt.datetime = field(default_factory=lambda: dt.datetime(2027, 1, 1, tzinfo=UTC))
    intermediate_is_ca: bool = True
    leaf_unknown_critical: bool = False

    def __post_init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.intermediate_key = ec.generate_private_key(ec.SECP384R1())
        self.leaf_key = ec.generate_private_key(ec.SECP384R1())
        window: dict[str, Any] = {"not_before": self.not_before, "not_after": self.not_after}
        self.root = _certificate(
            "test-root",
            self.root_key,
            "test-root",
            self.root_key,
            ca=True,
            path_length=None,
            **window,
        )
        self.intermediate = _certificate(
            "test-intermediate",
            self.intermediate_key,
            "test-root",
            self.root_key,
            ca=self.intermediate_is_ca,
            path_length=0 if self.intermediate_is_ca else None,
            **window,
        )
        # Like the AWS leaf: no AuthorityKeyIdentifier, which strict RFC 5280 policies reject.
        self.leaf = _certificate(
            "test-enclave-leaf",
            self.leaf_key,
            "test-intermediate",
            self.intermediate_key,
            ca=False,
            path_length=None,
            authority_key_id=False,
            unknown_critical=self.leaf_unknown_critical,
            **window,
        )

    @property
    def root_sha256(self) -> str:
        return hashlib.sha256(self.root.public_bytes(serialization.Encoding.DER)).hexdigest()

    @staticmethod
    def der(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.DER)

    def payload(
        self,
        *,
        pcrs: Mapping[int, bytes] | None = None,
        timestamp: dt.datetime | None = None,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        module_id: str = "i-0123456789abcdef0-enc0123456789abcdef",
    ) -> dict[str, Any]:
        when = timestamp or (self.not_before + dt.timedelta(days=30))
        all_pcrs = {i: bytes(48) for i in range(16)}
        all_pcrs.update(
            pcrs if pcrs is not None else {0: IMAGE_PCR0, 1: bytes([1]) * 48, 2: bytes([2]) * 48}
        )
        return {
            "module_id": module_id,
            "digest": "SHA384",
            "timestamp": int(when.timestamp() * 1000),
            "pcrs": all_pcrs,
            "certificate": self.der(self.leaf),
            "cabundle": [self.der(self.root), self.der(self.intermediate)],
            "public_key": public_key,
            "user_data": user_data,
            "nonce": nonce,
        }

    def sign_document(
        self,
        payload: Mapping[str, Any] | bytes,
        *,
        protected: Mapping[int, Any] | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        tagged: bool = False,
    ) -> bytes:
        protected_bytes = cbor2.dumps(dict(protected) if protected is not None else {1: -35})
        payload_bytes = payload if isinstance(payload, bytes) else cbor2.dumps(dict(payload))
        der = (key or self.leaf_key).sign(
            cose_sig_structure(protected_bytes, payload_bytes), ec.ECDSA(hashes.SHA384())
        )
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
        cose = [protected_bytes, {}, payload_bytes, signature]
        return cbor2.dumps(cbor2.CBORTag(18, cose) if tagged else cose)

    def document(self, **fields: Any) -> bytes:
        return self.sign_document(self.payload(**fields))

    @property
    def valid_at(self) -> dt.datetime:
        return self.not_before + dt.timedelta(days=30)


class TestPkiNsm:
    """Attestation source double: what ``/dev/nsm`` returns, signed by a :class:`TestPki`."""

    __test__ = False

    def __init__(
        self,
        pki: TestPki,
        *,
        pcr0: bytes = IMAGE_PCR0,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.pki = pki
        self.pcr0 = pcr0
        self.clock = clock or (lambda: pki.valid_at)
        self.requests: list[dict[str, Any]] = []

    def attest(
        self,
        *,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        self.requests.append({"public_key": public_key, "user_data": user_data, "nonce": nonce})
        return self.pki.document(
            pcrs={0: self.pcr0, 1: bytes([1]) * 48, 2: bytes([2]) * 48},
            timestamp=self.clock(),
            public_key=public_key,
            user_data=user_data,
            nonce=nonce,
        )


def subject_key_identifier_sha1(public_key: rsa.RSAPublicKey) -> bytes:
    """RFC 5280 method 1, computed independently of cdk_trn_runtime.enclave.cms."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


def kms_enveloped_data(
    plaintext: bytes,
    recipient: rsa.RSAPublicKey,
    *,
    ski: bytes | None = None,
    oaep_hash: str = "sha256",
    content_algorithm: str = "aes256_cbc",
    break_padding: bool = False,
) -> bytes:
    """A CMS EnvelopedData shaped like KMS ``CiphertextForRecipient``."""
    key_bytes = 16 if content_algorithm == "aes128_cbc" else 32
    content_key, iv = os.urandom(key_bytes), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    if break_padding:
        padded = padded[:-1] + bytes([0])
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    hash_cls = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}[oaep_hash]
    wrapped = recipient.encrypt(
        content_key,
        asym_padding.OAEP(
            mgf=asym_padding.MGF1(algorithm=hash_cls()), algorithm=hash_cls(), label=None
        ),
    )
    ktri = asn1_cms.KeyTransRecipientInfo(
        {
            "version": "v2",
            "rid": asn1_cms.RecipientIdentifier(
                name="subject_key_identifier",
                value=ski if ski is not None else subject_key_identifier_sha1(recipient),
            ),
            "key_encryption_algorithm": {
                "algorithm": "rsaes_oaep",
                "parameters": asn1_algos.RSAESOAEPParams(
                    {
                        "hash_algorithm": {"algorithm": oaep_hash},
                        "mask_gen_algorithm": {
                            "algorithm": "mgf1",
                            "parameters": {"algorithm": oaep_hash},
                        },
                    }
                ),
            },
            "encrypted_key": wrapped,
        }
    )
    enveloped = asn1_cms.EnvelopedData(
        {
            "version": "v2",
            "recipient_infos": [asn1_cms.RecipientInfo(name="ktri", value=ktri)],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {"algorithm": content_algorithm, "parameters": iv},
                "encrypted_content": ciphertext,
            },
        }
    )
    return asn1_cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def _access_denied(operation: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": "AccessDeniedException", "Message": message}}, operation)


class KmsTestDouble:
    """KMS as the enclave sees it, enforcing the vault's key policy on every call.

    The policy modelled is the one EnclaveKeyVault writes: Decrypt / GenerateDataKeyPair are
    allowed only with a Recipient whose attestation document verifies (here: under the test PKI)
    and whose PCR0 equals ``image_sha384`` (and PCR8 when set); explicitly denied otherwise.
    """

    def __init__(
        self,
        *,
        key_id: str,
        image_sha384: bytes,
        trusted_root_sha256: str,
        clock: Callable[[], dt.datetime],
        pcr8: bytes | None = None,
    ) -> None:
        self.key_id = key_id
        self.image_sha384 = image_sha384
        self.pcr8 = pcr8
        self.trusted_root_sha256 = trusted_root_sha256
        self.clock = clock
        self.calls: list[str] = []
        self._sealing_key = AESGCM.generate_key(bit_length=256)
        self._model = get_session().get_service_model("kms")

    def _validate(self, operation: str, params: Mapping[str, Any]) -> None:
        shape = self._model.operation_model(operation).input_shape
        report = ParamValidator().validate(dict(params), shape)
        if report.has_errors():
            raise AssertionError(f"invalid {operation} parameters: {report.generate_report()}")

    def _authorise(self, operation: str, params: Mapping[str, Any]) -> rsa.RSAPublicKey:
        recipient = params.get("Recipient")
        if not recipient:
            raise _access_denied(operation, "explicit deny: no kms:RecipientAttestation")
        if recipient.get("KeyEncryptionAlgorithm") != "RSAES_OAEP_SHA_256":
            raise _access_denied(operation, "unsupported KeyEncryptionAlgorithm")
        expected = {0: self.image_sha384, **({8: self.pcr8} if self.pcr8 else {})}
        try:
            document = verify_attestation(
                recipient["AttestationDocument"],
                at=self.clock(),
                expected_pcrs=expected,
                root_sha256=self.trusted_root_sha256,
            )
        except AttestationError as exc:
            raise _access_denied(operation, f"attestation condition not met: {exc}") from exc
        if not document.public_key:
            raise _access_denied(operation, "attestation document carries no public key")
        public_key = serialization.load_der_public_key(document.public_key)
        assert isinstance(public_key, rsa.RSAPublicKey)
        return public_key

    def _seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self._sealing_key).encrypt(nonce, plaintext, self.key_id.encode())

    def _unseal(self, blob: bytes) -> bytes:
        return AESGCM(self._sealing_key).decrypt(blob[:12], blob[12:], self.key_id.encode())

    def generate_data_key_pair(self, **params: Any) -> dict[str, Any]:
        self._validate("GenerateDataKeyPair", params)
        self.calls.append("GenerateDataKeyPair")
        if params["KeyPairSpec"] != "ECC_NIST_P384":
            raise AssertionError("this double only models ECC_NIST_P384")
        recipient = self._authorise("GenerateDataKeyPair", params)
        private_key = ec.generate_private_key(ec.SECP384R1())
        private_der = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {
            "PrivateKeyCiphertextBlob": self._seal(private_der),
            "PublicKey": private_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "KeyId": self.key_id,
            "KeyPairSpec": "ECC_NIST_P384",
            "CiphertextForRecipient": kms_enveloped_data(private_der, recipient),
        }

    def decrypt(self, **params: Any) -> dict[str, Any]:
        self._validate("Decrypt", params)
        self.calls.append("Decrypt")
        recipient = self._authorise("Decrypt", params)
        plaintext = self._unseal(params["CiphertextBlob"])
        return {
            "KeyId": self.key_id,
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "CiphertextForRecipient": kms_enveloped_data(plaintext, recipient),
        }


class StsTestDouble:
    """STS GetCallerIdentity: checks the SigV4 signature with the caller's secret, says who it is.

    ``identities`` maps an access key id to (secret access key, caller ARN).
    """

    def __init__(self, identities: Mapping[str, tuple[str, str]], *, region: str) -> None:
        self.identities = dict(identities)
        self.region = region
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, bytes]:
        self.requests.append((method, url, dict(headers), body))
        lowered = {k.lower(): v for k, v in headers.items()}
        match = re.match(
            r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/sts/aws4_request, "
            r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$",
            lowered.get("authorization", ""),
        )
        if not match or match.group(3) != self.region:
            return 403, b'{"Error": {"Code": "IncompleteSignature"}}'
        access_key, _day, region, signed_headers, signature = match.groups()
        if access_key not in self.identities:
            return 403, b'{"Error": {"Code": "InvalidClientTokenId"}}'
        secret, arn = self.identities[access_key]
        names = signed_headers.split(";")
        request = AWSRequest(
            method=method,
            url=url,
            data=body,
            headers={n: lowered[n] for n in names if n in lowered and n != "host"},
        )
        request.context["timestamp"] = lowered.get("x-amz-date", "")
        auth = SigV4Auth(Credentials(access_key, secret), "sts", region)
        canonical = auth.canonical_request(request)
        if auth.signature(auth.string_to_sign(request, canonical), request) != signature:
            return 403, b'{"Error": {"Code": "SignatureDoesNotMatch"}}'
        if urllib.parse.parse_qs(body.decode()) != {
            "Action": ["GetCallerIdentity"],
            "Version": ["2011-06-15"],
        }:
            return 400, b'{"Error": {"Code": "InvalidAction"}}'
        if lowered.get("accept") != "application/json":
            return 200, b"<GetCallerIdentityResponse/>"
        account = arn.split(":")[4]
        answer = {
            "GetCallerIdentityResponse": {
                "GetCallerIdentityResult": {
                    "Arn": arn,
                    "Account": account,
                    "UserId": "AROATEST:i-0",
                },
                "ResponseMetadata": {"RequestId": "00000000-0000-0000-0000-000000000000"},
            }
        }
        return 200, json.dumps(answer).encode()
