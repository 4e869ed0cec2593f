"""Every AWS client a deploy-time function makes gives up within seconds, so one handler call
cannot outlast the driver's hand-over margin (botocore's defaults: 60 s connect and read)."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from cdk_trn_runtime.acceptance import handler as acceptance
from cdk_trn_runtime.deploy_time import clients, driver, prefix_list
from cdk_trn_runtime.eif_builder import handler as eif
from cdk_trn_runtime.preflight import handler as preflight

REGION = "us-east-2"


@pytest.fixture(autouse=True)
def region(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-double")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-double")


def _assert_bounded(client: Any) -> None:
    config = client.meta.config
    assert config.connect_timeout == 5
    assert config.read_timeout == 10
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}


def test_one_call_of_a_bounded_client_fits_in_the_hand_over_margin():
    # Every attempt timing out, plus standard mode's back-off (at most 2 s, then 4 s).
    worst = clients.TOTAL_MAX_ATTEMPTS * (
        clients.CONNECT_TIMEOUT_SECONDS + clients.READ_TIMEOUT_SECONDS
    ) + (2 + 4)
    assert worst < driver.HANDOVER_MARGIN_SECONDS


def test_the_drivers_lambda_client_is_bounded():
    _assert_bounded(driver.Runtime().invoker())


def test_the_acceptance_clients_are_bounded():
    made = acceptance.default_clients()
    for client in (made.ssm, made.autoscaling, made.ec2, made.s3):
        _assert_bounded(client)


def test_the_preflight_clients_are_bounded():
    made = preflight.default_clients()
    _assert_bounded(made.ec2)
    _assert_bounded(made.quotas)


def test_the_eif_build_clients_are_bounded():
    _assert_bounded(eif._client("codebuild", None))
    _assert_bounded(eif._client("s3", None))


def test_the_prefix_list_lookup_makes_a_bounded_client(monkeypatch):
    made: list[Any] = []

    def recording(service: str, **kwargs: Any) -> Any:
        client = original(service, **kwargs)
        made.append(client)
        raise RuntimeError("recorded; no AWS call in a unit test")

    original = clients.bounded_client
    monkeypatch.setattr(prefix_list, "bounded_client", functools.partial(recording))
    with pytest.raises(RuntimeError, match="recorded"):
        prefix_list.on_event({"RequestType": "Create"})
    (client,) = made
    _assert_bounded(client)
