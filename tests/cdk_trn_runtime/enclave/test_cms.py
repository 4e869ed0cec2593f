"""Opening KMS-shaped CMS EnvelopedData (CiphertextForRecipient) with the enclave's RSA key."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from cdk_trn_runtime.enclave.cms import CmsError, open_enveloped_data, subject_key_identifiers
from tests.support.enclave_doubles import kms_enveloped_data

SECRET = b"-----the P-384 private key a KMS data key pair would carry-----" * 3


@pytest.fixture(scope="module")
def enclave_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_kms_shaped_enveloped_data_opens_with_the_enclave_key(enclave_key):
    blob = kms_enveloped_data(SECRET, enclave_key.public_key())
    assert open_enveloped_data(blob, enclave_key) == SECRET


def test_recipient_identifier_computed_like_rfc5280_method_1(enclave_key):
    expected = x509.SubjectKeyIdentifier.from_public_key(enclave_key.public_key()).digest
    assert subject_key_identifiers(enclave_key.public_key())[0] == expected


def test_recipient_with_an_unknown_identifier_is_still_tried(enclave_key):
    blob = kms_enveloped_data(SECRET, enclave_key.public_key(), ski=b"\x01" * 20)
    assert open_enveloped_data(blob, enclave_key) == SECRET


def test_enveloped_data_for_another_key_is_refused(enclave_key):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CmsError, match="no recipient"):
        open_enveloped_data(kms_enveloped_data(SECRET, other.public_key()), enclave_key)


def test_oaep_with_sha1_is_refused(enclave_key):
    blob = kms_enveloped_data(SECRET, enclave_key.public_key(), oaep_hash="sha1")
    with pytest.raises(CmsError, match="RSAES-OAEP SHA-256"):
        open_enveloped_data(blob, enclave_key)


def test_aes128_content_is_refused(enclave_key):
    blob = kms_enveloped_data(SECRET, enclave_key.public_key(), content_algorithm="aes128_cbc")
    with pytest.raises(CmsError):
        open_enveloped_data(blob, enclave_key)


def test_broken_padding_is_refused(enclave_key):
    blob = kms_enveloped_data(SECRET, enclave_key.public_key(), break_padding=True)
    with pytest.raises(CmsError, match="padding"):
        open_enveloped_data(blob, enclave_key)


@pytest.mark.parametrize("blob", [b"", b"\x30\x03\x02\x01", b"garbage" * 10, bytes(70 * 1024)])
def test_malformed_cms_is_refused(enclave_key, blob):
    with pytest.raises(CmsError):
        open_enveloped_data(blob, enclave_key)


def test_truncated_cms_is_refused(enclave_key):
    blob = kms_enveloped_data(SECRET, enclave_key.public_key())
    with pytest.raises(CmsError):
        open_enveloped_data(blob[:-10], enclave_key)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_enveloped_data_made_by_openssl_cms_opens(enclave_key, tmp_path):
    # An independent implementation of the same shape: OAEP SHA-256, AES-256-CBC, recipient by
    # subjectKeyIdentifier (-keyid).
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(enclave_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(enclave_key.public_key()), False)
        .sign(enclave_key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "secret").write_bytes(SECRET)
    subprocess.run(
        [
            "openssl",
            "cms",
            "-encrypt",
            "-binary",
            "-aes256",
            "-keyid",
            "-in",
            "secret",
            "-outform",
            "DER",
            "-out",
            "secret.cms",
            "-recip",
            "cert.pem",
            "-keyopt",
            "rsa_padding_mode:oaep",
            "-keyopt",
            "rsa_oaep_md:sha256",
            "-keyopt",
            "rsa_mgf1_md:sha256",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    assert open_enveloped_data((tmp_path / "secret.cms").read_bytes(), enclave_key) == SECRET
