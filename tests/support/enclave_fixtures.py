"""Fixtures for the enclave, vault, provenance and cli tests (a plugin of tests/conftest.py): the
test PKI, the real vectors (when ../shared exists), a vault on loopback and the node role's
credentials."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tests.support.enclave_doubles import TestPki
from tests.support.enclave_harness import (
    NODE_KEY,
    VECTOR_FILES,
    VECTORS,
    start_vault,
    stop_vault,
)


@pytest.fixture(scope="session")
def pki() -> TestPki:
    # Valid around the wall clock (valid_at is today), so the verifier CLI, which checks the
    # chain at the current time, accepts its documents in any year these tests run.
    today = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return TestPki(
        not_before=today - dt.timedelta(days=30), not_after=today + dt.timedelta(days=30)
    )


@pytest.fixture
def trust_test_root(pki, monkeypatch):
    """Make the test PKI's root the trusted root in place of the AWS Nitro root."""
    monkeypatch.setattr(
        "cdk_trn_runtime.enclave.attestation.AWS_NITRO_ROOT_G1_SHA256", pki.root_sha256
    )


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    assert (VECTORS / VECTOR_FILES[0]).is_file(), f"test data missing: {VECTORS}"
    return VECTORS


@pytest.fixture
def vault(pki, tmp_path):
    running = start_vault(pki, tmp_path)
    yield running
    stop_vault(running)


@pytest.fixture
def node_credentials(monkeypatch):
    """The node role's credentials, where botocore looks for them (the environment)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", NODE_KEY[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", NODE_KEY[1])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
