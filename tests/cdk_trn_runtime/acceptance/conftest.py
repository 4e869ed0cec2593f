"""The handlers' AWS clients behind botocore Stubbers, for every test of this package."""

import pytest

from tests.cdk_trn_runtime.acceptance.handler_doubles import stubbed_aws


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-double-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-double-secret")
    stubs = stubbed_aws()
    yield stubs
    stubs.assert_all_called()
