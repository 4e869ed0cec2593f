"""Fixtures for the enclave tests: the test PKI, the real vectors (when ../shared exists), a vault
on loopback and the node role's credentials."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The helper modules sit beside this file under unique names (enclave_doubles, enclave_harness);
# make them importable whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))

from enclave_doubles import TestPki  # noqa: E402
from enclave_harness import (  # noqa: E402
    NODE_KEY,
    VECTOR_FILES,
    VECTORS,
    start_vault,
    stop_vault,
)


@pytest.fixture(scope="session")
def pki() -> TestPki:
    return TestPki()


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
