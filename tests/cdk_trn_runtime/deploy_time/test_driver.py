"""The deploy-time driver: CloudFormation's custom-resource protocol around a handler module.

Answers go to a real local HTTPS server (a self-signed certificate the test trusts), so the PUT,
its headers and body are what CloudFormation would receive. The self-invocation goes through a
real boto3 Lambda client under botocore's Stubber, which checks the request against the API
model. Handlers are test doubles (``handler_double``) or the real prefix-list handler."""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import json
import logging
import ssl
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cdk_trn_runtime.contract import DEPLOY_TIME_ENV_HANDLER
from cdk_trn_runtime.deploy_time import driver, prefix_list
from tests.support.servers import serving

REGION = "us-east-2"
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:123456789012:function:trncluster-Acceptance-Provider"
SECRET_QUERY = "X-Amz-Signature=0123456789abcdef-do-not-log"
SETTINGS = driver.Settings(
    handler_module="cdk_trn_runtime.acceptance.handler",
    query_interval=30,
    total_timeout=55 * 60,
    purpose="acceptance run",
)


# --- a real HTTPS server standing in for CloudFormation's response bucket ---------------------


@dataclass
class ReceivedPut:
    path: str
    content_type: str | None
    body: dict[str, Any]


@dataclass
class ResponseBucketDouble:
    """A local HTTPS server that records PUTs; ``statuses`` are the HTTP codes it answers with,
    in order (then 200)."""

    url: str
    context: ssl.SSLContext
    received: list[ReceivedPut] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    @property
    def only(self) -> dict[str, Any]:
        assert len(self.received) == 1, self.received
        return self.received[0].body


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def bucket(tmp_path: Path) -> Iterator[ResponseBucketDouble]:
    cert, key = _self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    state: dict[str, ResponseBucketDouble] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 - the http.server API
            length = int(self.headers["Content-Length"])
            double = state["double"]
            double.received.append(
                ReceivedPut(
                    self.path, self.headers.get("Content-Type"), json.loads(self.rfile.read(length))
                )
            )
            code = double.statuses.pop(0) if double.statuses else 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("localhost", 0), Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    state["double"] = ResponseBucketDouble(
        url=f"https://localhost:{port}/cloudformation-custom-resource-response-useast2/arn%3Astack"
        f"?{SECRET_QUERY}",
        context=client_context,
    )
    with serving(server):
        yield state["double"]


# --- the driver's world ------------------------------------------------------------------------


@dataclass
class FakeClock:
    """A clock the test moves; ``sleep`` advances it."""

    now: float = 1_800_000_000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def runtime_for(bucket: ResponseBucketDouble, clock: FakeClock, lambda_client: Any = None):
    return driver.Runtime(
        lambda_client=lambda_client,
        clock=clock,
        sleep=clock.sleep,
        put=functools.partial(driver.put_response, context=bucket.context),
    )


def request(bucket: ResponseBucketDouble, request_type: str = "Create", **extra: Any):
    event = {
        "RequestType": request_type,
        "ServiceToken": FUNCTION_ARN,
        "ResponseURL": bucket.url,
        "StackId": f"arn:aws:cloudformation:{REGION}:123456789012:stack/trn-cluster/abc",
        "RequestId": "7bfb-request",
        "LogicalResourceId": "AcceptanceE131C3C5",
        "ResourceType": "Custom::TrnAcceptanceRun",
        "ResourceProperties": {"ServiceToken": FUNCTION_ARN, "Nodes": "2"},
    }
    if request_type != "Create":
        event["PhysicalResourceId"] = "run-1"
    return {**event, **extra}


def handler_double(
    *, on_event: Any = None, polls: list[dict[str, Any]] | None = None
) -> types.SimpleNamespace:
    """A handler module double: ``on_event`` returns (or raises) what it is given; ``is_complete``
    returns the ``polls`` in order. Every event they receive is recorded in ``seen``."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def on_event_double(event: dict[str, Any]) -> Any:
        seen.append(("on_event", event))
        if isinstance(on_event, Exception):
            raise on_event
        return on_event

    module = types.SimpleNamespace(on_event=on_event_double, seen=seen)
    if polls is not None:

        def is_complete_double(event: dict[str, Any]) -> dict[str, Any]:
            seen.append(("is_complete", event))
            result = polls.pop(0)
            if isinstance(result, Exception):
                raise result
            return result

        module.is_complete = is_complete_double
    return module


def invocation(remaining_ms: int = 900_000) -> driver.Invocation:
    return driver.Invocation(FUNCTION_ARN, lambda: remaining_ms)


STARTED = {"PhysicalResourceId": "run-1", "Data": {"RunId": "run-1"}, "AcceptanceRun": {"n": 2}}


# --- tests --------------------------------------------------------------------------------------


def test_a_create_without_wait_is_answered_by_an_https_put_with_an_empty_content_type(bucket):
    ec2 = boto3.client("ec2", region_name=REGION)
    with Stubber(ec2) as stub:
        stub.add_response(
            "describe_managed_prefix_lists",
            {"PrefixLists": [{"PrefixListId": "pl-7ba54012", "PrefixListName": "x"}]},
            {"Filters": [{"Name": "prefix-list-name", "Values": [f"com.amazonaws.{REGION}.s3"]}]},
        )
        lookup = types.SimpleNamespace(on_event=functools.partial(prefix_list.on_event, ec2=ec2))
        driver.run(
            request(bucket), lookup, SETTINGS, invocation(), runtime_for(bucket, FakeClock())
        )
        stub.assert_no_pending_responses()
    (put,) = bucket.received
    assert put.content_type == ""
    assert put.path.startswith("/cloudformation-custom-resource-response-useast2/")
    assert put.body == {
        "Status": "SUCCESS",
        "Reason": "",
        "PhysicalResourceId": f"com.amazonaws.{REGION}.s3",
        "StackId": f"arn:aws:cloudformation:{REGION}:123456789012:stack/trn-cluster/abc",
        "RequestId": "7bfb-request",
        "LogicalResourceId": "AcceptanceE131C3C5",
        "NoEcho": False,
        "Data": {"PrefixListId": "pl-7ba54012"},
    }


def test_the_response_url_reaches_neither_the_handlers_nor_the_logs(bucket, caplog):
    handler = handler_double(
        on_event=STARTED, polls=[{"IsComplete": False}, {"IsComplete": True, "Data": {"A": "1"}}]
    )
    with caplog.at_level(logging.DEBUG):
        driver.run(
            request(bucket), handler, SETTINGS, invocation(), runtime_for(bucket, FakeClock())
        )
    assert bucket.only["Status"] == "SUCCESS"
    assert all("ResponseURL" not in event for _, event in handler.seen)
    assert SECRET_QUERY not in caplog.text and "localhost" not in caplog.text


def test_the_wait_polls_every_interval_and_merges_the_data_of_both_handlers(bucket):
    clock = FakeClock()
    handler = handler_double(
        on_event=STARTED,
        polls=[
            {"IsComplete": False},
            {"IsComplete": False},
            {"IsComplete": True, "Data": {"gemm_bf16_tflops_per_chip": "512"}},
        ],
    )
    driver.run(request(bucket), handler, SETTINGS, invocation(), runtime_for(bucket, clock))
    assert clock.slept == [30, 30]
    assert bucket.only["Status"] == "SUCCESS"
    assert bucket.only["PhysicalResourceId"] == "run-1"
    assert bucket.only["Data"] == {"RunId": "run-1", "gemm_bf16_tflops_per_chip": "512"}
    # is_complete sees the request merged with on_event's result, as under the framework.
    (kind, polled) = handler.seen[1]
    assert kind == "is_complete" and polled["AcceptanceRun"] == {"n": 2}
    assert polled["ResourceProperties"]["Nodes"] == "2"


def test_state_an_incomplete_poll_returns_is_what_the_next_poll_sees(bucket):
    # A wait that changes course (the acceptance run replacing a node, then running again).
    clock = FakeClock()
    handler = handler_double(
        on_event=STARTED,
        polls=[
            {"IsComplete": False, "AcceptanceRun": {"n": 2, "Round": 1}, "Status": "replacing"},
            {"IsComplete": True},
        ],
    )
    driver.run(request(bucket), handler, SETTINGS, invocation(), runtime_for(bucket, clock))
    assert bucket.only["Status"] == "SUCCESS"
    (_, first), (_, second) = handler.seen[1], handler.seen[2]
    assert first["AcceptanceRun"] == {"n": 2}
    assert second["AcceptanceRun"] == {"n": 2, "Round": 1}
    assert "Status" not in second and "IsComplete" not in second


def continued(bucket, *, started: float, deadline: float) -> dict:
    """A self-invocation's event: the request plus the wait's state (on-event result merged,
    no response URL in the resource, as the driver hands it over)."""
    resource = {**request(bucket), **STARTED}
    del resource["ResponseURL"]
    return request(
        bucket,
        **{
            driver.CONTINUATION_KEY: {
                "Resource": resource,
                "Started": started,
                "Deadline": deadline,
            }
        },
    )


def test_a_wait_longer_than_the_invocation_continues_in_an_asynchronous_self_invocation(bucket):
    clock = FakeClock()
    handler = handler_double(on_event=STARTED, polls=[{"IsComplete": False}])
    event = request(bucket)
    expected = {
        **event,
        driver.CONTINUATION_KEY: {
            "Resource": {
                **{k: v for k, v in event.items() if k != "ResponseURL"},
                **STARTED,
            },
            "Started": clock.now,
            "Deadline": clock.now + 55 * 60,
        },
    }
    lambda_client = boto3.client("lambda", region_name=REGION)
    with Stubber(lambda_client) as stub:
        stub.add_response(
            "invoke",
            {"StatusCode": 202},
            {
                "FunctionName": FUNCTION_ARN,
                "InvocationType": "Event",
                "Payload": json.dumps(expected).encode(),
            },
        )
        # 80 s left: not enough for a 30 s pause plus the 60 s hand-over margin.
        driver.run(
            event, handler, SETTINGS, invocation(80_000), runtime_for(bucket, clock, lambda_client)
        )
        stub.assert_no_pending_responses()
    assert bucket.received == []  # CloudFormation hears from the next invocation
    assert clock.slept == []


def test_a_continued_wait_keeps_its_deadline_and_skips_on_event(bucket):
    clock = FakeClock()
    handler = handler_double(on_event=AssertionError("on_event must not run again"), polls=[
        {"IsComplete": False}, {"IsComplete": True, "Data": {"Passed": "true"}},
    ])  # fmt: skip
    event = continued(bucket, started=clock.now - 900, deadline=clock.now + 40)
    driver.run(event, handler, SETTINGS, invocation(), runtime_for(bucket, clock))
    assert [kind for kind, _ in handler.seen] == ["is_complete", "is_complete"]
    assert clock.slept == [30]
    assert bucket.only["Data"] == {"RunId": "run-1", "Passed": "true"}


def test_past_the_deadline_the_answer_is_failed_with_the_minutes_and_what_it_waited_for(bucket):
    clock = FakeClock()
    handler = handler_double(
        on_event=STARTED, polls=[{"IsComplete": False, "Status": "node 1 InProgress"}]
    )
    event = continued(bucket, started=clock.now - 55 * 60, deadline=clock.now)
    driver.run(event, handler, SETTINGS, invocation(), runtime_for(bucket, clock))
    assert bucket.only["Status"] == "FAILED"
    assert bucket.only["Reason"] == (
        "timed out after 55 minutes waiting for acceptance run run-1 (node 1 InProgress)"
    )
    assert bucket.only["PhysicalResourceId"] == "run-1"


def test_an_exception_answers_failed_with_its_message_and_a_create_marks_its_id(bucket):
    handler = handler_double(on_event=RuntimeError("SendCommand to node 0 failed: Throttling"))
    driver.run(request(bucket), handler, SETTINGS, invocation(), runtime_for(bucket, FakeClock()))
    assert bucket.only["Status"] == "FAILED"
    assert bucket.only["Reason"] == "SendCommand to node 0 failed: Throttling"
    assert bucket.only["PhysicalResourceId"] == driver.CREATE_FAILED_MARKER


def test_an_exception_while_waiting_answers_failed_with_the_resources_id(bucket):
    handler = handler_double(on_event=STARTED, polls=[RuntimeError("gemm 12 TFLOPS < min 300")])
    driver.run(request(bucket), handler, SETTINGS, invocation(), runtime_for(bucket, FakeClock()))
    assert bucket.only["Status"] == "FAILED"
    assert bucket.only["Reason"] == "gemm 12 TFLOPS < min 300"
    assert bucket.only["PhysicalResourceId"] == "run-1"


def test_the_delete_of_a_failed_create_succeeds_without_calling_the_handler(bucket):
    handler = handler_double(on_event=AssertionError("no call"), polls=[])
    event = request(bucket, "Delete", PhysicalResourceId=driver.CREATE_FAILED_MARKER)
    driver.run(event, handler, SETTINGS, invocation(), runtime_for(bucket, FakeClock()))
    assert bucket.only["Status"] == "SUCCESS"
    assert handler.seen == []


def test_a_delete_is_answered_after_on_event_without_waiting(bucket):
    handler = handler_double(on_event={"PhysicalResourceId": "run-1"}, polls=[])
    driver.run(
        request(bucket, "Delete"), handler, SETTINGS, invocation(), runtime_for(bucket, FakeClock())
    )
    assert bucket.only["Status"] == "SUCCESS"
    assert [kind for kind, _ in handler.seen] == ["on_event"]


def test_the_real_acceptance_handler_answers_a_delete_without_any_aws_call(bucket):
    from cdk_trn_runtime.acceptance import handler as acceptance

    driver.run(
        request(bucket, "Delete"),
        acceptance,
        SETTINGS,
        invocation(),
        runtime_for(bucket, FakeClock()),
    )
    assert bucket.only["Status"] == "SUCCESS" and bucket.only["PhysicalResourceId"] == "run-1"


def test_data_from_an_incomplete_poll_is_a_protocol_failure(bucket):
    handler = handler_double(on_event=STARTED, polls=[{"IsComplete": False, "Data": {"x": "1"}}])
    driver.run(request(bucket), handler, SETTINGS, invocation(), runtime_for(bucket, FakeClock()))
    assert bucket.only["Status"] == "FAILED"
    assert "Data only with IsComplete" in bucket.only["Reason"]


def test_a_long_reason_is_cut_to_cloudformations_4096_bytes(bucket):
    handler = handler_double(on_event=RuntimeError("ü" * 10_000))
    driver.run(request(bucket), handler, SETTINGS, invocation(), runtime_for(bucket, FakeClock()))
    body = bucket.received[0].body
    assert len(json.dumps(body).encode()) <= driver.RESPONSE_LIMIT
    assert body["Reason"].endswith("(truncated)") and body["Status"] == "FAILED"


def test_data_too_large_for_a_response_turns_into_a_failed_answer(bucket):
    handler = handler_double(on_event={"PhysicalResourceId": "x", "Data": {"Big": "a" * 5000}})
    driver.run(request(bucket), handler, SETTINGS, invocation(), runtime_for(bucket, FakeClock()))
    assert bucket.only["Status"] == "FAILED"
    assert "more than CloudFormation's 4096" in bucket.only["Reason"]


def test_a_transient_server_error_is_retried_with_back_off(bucket):
    bucket.statuses = [503, 500]
    clock = FakeClock()
    handler = handler_double(on_event={"PhysicalResourceId": "x"})
    driver.run(request(bucket), handler, SETTINGS, invocation(), runtime_for(bucket, clock))
    assert [put.body["Status"] for put in bucket.received] == ["SUCCESS"] * 3
    assert clock.slept == [1.0, 2.0]


def test_a_forbidden_put_is_not_retried(bucket):
    bucket.statuses = [403, 403]
    handler = handler_double(on_event={"PhysicalResourceId": "x"})
    with pytest.raises(driver.ProtocolError, match="could not answer CloudFormation"):
        driver.run(
            request(bucket), handler, SETTINGS, invocation(), runtime_for(bucket, FakeClock())
        )
    # One SUCCESS, not retried, and no FAILED after it: the event goes to the dead-letter queue.
    assert [put.body["Status"] for put in bucket.received] == ["SUCCESS"]


def test_settings_refuse_a_handler_outside_the_runtime_package():
    with pytest.raises(driver.ProtocolError, match="cdk_trn_runtime"):
        driver.Settings.from_environment({"CDK_TRN_HANDLER_MODULE": "os"})


# --- one answer, in time ------------------------------------------------------------------------


def test_a_put_that_landed_before_a_failed_retry_is_never_followed_by_a_failed_answer(bucket):
    # The first PUT is stored but answered 500; the retry is refused: the answer stands as SUCCESS.
    bucket.statuses = [500, 403]
    handler = handler_double(on_event={"PhysicalResourceId": "x"})
    with pytest.raises(driver.ProtocolError, match="could not answer CloudFormation"):
        driver.run(
            request(bucket), handler, SETTINGS, invocation(), runtime_for(bucket, FakeClock())
        )
    assert [put.body["Status"] for put in bucket.received] == ["SUCCESS", "SUCCESS"]


def test_the_answer_gives_up_within_the_hand_over_margin_when_every_put_times_out(bucket):
    clock = FakeClock()
    timeouts: list[float] = []

    def put_timing_out(url: str, body: bytes, *, timeout: float) -> int:
        timeouts.append(timeout)
        clock.now += timeout
        raise TimeoutError("the response bucket does not answer")

    runtime = driver.Runtime(clock=clock, sleep=clock.sleep, put=put_timing_out)
    handler = handler_double(on_event={"PhysicalResourceId": "x"})
    started = clock.now
    with pytest.raises(driver.ProtocolError, match="after 3 attempts"):
        driver.run(request(bucket), handler, SETTINGS, invocation(), runtime)
    assert timeouts == [10.0, 10.0, 10.0]
    assert clock.now - started <= driver.ANSWER_BUDGET_SECONDS < driver.HANDOVER_MARGIN_SECONDS


def test_an_answer_with_less_time_left_shortens_its_attempts_to_fit(bucket):
    clock = FakeClock()
    timeouts: list[float] = []

    def put_timing_out(url: str, body: bytes, *, timeout: float) -> int:
        timeouts.append(timeout)
        clock.now += timeout
        raise TimeoutError

    runtime = driver.Runtime(clock=clock, sleep=clock.sleep, put=put_timing_out)
    with pytest.raises(driver.ProtocolError):
        driver.send(request(bucket), "FAILED", "late", "x", {}, runtime, budget=18)
    assert clock.now - 1_800_000_000.0 <= 18
    assert timeouts[0] == 10.0 and len(timeouts) == 2


def test_the_deadline_counts_from_the_first_invocation_not_from_the_end_of_on_event(bucket):
    clock = FakeClock()

    def slow_on_event(event: dict[str, Any]) -> dict[str, Any]:
        clock.now += SETTINGS.total_timeout  # on_event alone used up the whole wait
        return STARTED

    handler = handler_double(on_event=STARTED, polls=[{"IsComplete": False, "Status": "pending"}])
    handler.on_event = slow_on_event
    driver.run(request(bucket), handler, SETTINGS, invocation(), runtime_for(bucket, clock))
    assert bucket.only["Status"] == "FAILED"
    assert bucket.only["Reason"] == (
        "timed out after 55 minutes waiting for acceptance run run-1 (pending)"
    )
    assert clock.slept == []


def _wait_for_puts(bucket: ResponseBucketDouble, count: int, seconds: float = 10) -> None:
    limit = time.monotonic() + seconds
    while len(bucket.received) < count and time.monotonic() < limit:
        time.sleep(0.05)


def _almost_out_of_time() -> driver.Invocation:
    """An invocation whose watchdog fires 0.3 s after it starts."""
    return invocation(int((driver.WATCHDOG_MARGIN_SECONDS + 0.3) * 1000))


def test_a_hanging_on_event_gets_one_failed_answer_before_lambdas_timeout(bucket):
    clock = FakeClock()

    def hanging_on_event(event: dict[str, Any]) -> dict[str, Any]:
        clock.now += 200
        _wait_for_puts(bucket, 1)  # returns once the watchdog has answered
        return {"PhysicalResourceId": "late", "Data": {"A": "1"}}

    handler = types.SimpleNamespace(on_event=hanging_on_event)
    driver.run(
        request(bucket), handler, SETTINGS, _almost_out_of_time(), runtime_for(bucket, clock)
    )
    # The watchdog's FAILED, and not the SUCCESS on_event returned after it.
    assert bucket.only["Status"] == "FAILED"
    assert bucket.only["Reason"] == (
        "acceptance run: on_event was still running after 200 s, 20 s before the function's "
        "timeout; no answer would have reached CloudFormation"
    )
    assert bucket.only["PhysicalResourceId"] == driver.CREATE_FAILED_MARKER


def test_a_hanging_is_complete_gets_a_failed_answer_naming_it_and_the_resource(bucket):
    clock = FakeClock()
    handler = handler_double(on_event=STARTED, polls=[])

    def hanging_is_complete(event: dict[str, Any]) -> dict[str, Any]:
        clock.now += 45
        _wait_for_puts(bucket, 1)
        return {"IsComplete": True}

    handler.is_complete = hanging_is_complete
    driver.run(
        request(bucket), handler, SETTINGS, _almost_out_of_time(), runtime_for(bucket, clock)
    )
    assert bucket.only["Status"] == "FAILED"
    assert bucket.only["Reason"].startswith(
        "acceptance run: is_complete was still running after 45 s"
    )
    assert bucket.only["PhysicalResourceId"] == "run-1"


def test_a_wait_the_watchdog_answered_is_not_handed_over(bucket):
    clock = FakeClock()
    handler = handler_double(on_event=STARTED, polls=[])

    def hanging_is_complete(event: dict[str, Any]) -> dict[str, Any]:
        _wait_for_puts(bucket, 1)
        return {"IsComplete": False}  # would continue in a new invocation: little time is left

    handler.is_complete = hanging_is_complete
    lambda_double = HangingLambdaDouble(bucket)
    driver.run(
        request(bucket), handler, SETTINGS, _almost_out_of_time(),
        runtime_for(bucket, clock, lambda_double),
    )  # fmt: skip
    assert bucket.only["Status"] == "FAILED"
    assert lambda_double.invoked == []
    assert clock.slept == []


@dataclass
class HangingLambdaDouble:
    """A Lambda client double whose ``invoke`` takes until the bucket got an answer."""

    bucket: ResponseBucketDouble
    invoked: list[dict[str, Any]] = field(default_factory=list)

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        _wait_for_puts(self.bucket, 1)
        self.invoked.append(kwargs)
        return {"StatusCode": 202}


def test_a_hanging_hand_over_gets_a_failed_answer_saying_it_was_continuing(bucket):
    clock = FakeClock()
    handler = handler_double(on_event=STARTED, polls=[{"IsComplete": False}])
    lambda_double = HangingLambdaDouble(bucket)
    runtime = runtime_for(bucket, clock, lambda_double)
    driver.run(request(bucket), handler, SETTINGS, _almost_out_of_time(), runtime)
    assert bucket.only["Status"] == "FAILED"
    assert "continuing in a new invocation was still running" in bucket.only["Reason"]
    assert len(lambda_double.invoked) == 1


def test_an_invocation_that_answers_in_time_leaves_the_watchdog_silent(bucket, monkeypatch):
    timers: list[threading.Timer] = []

    class RecordedTimer(threading.Timer):
        """The real timer, recorded so that the test can see it stopped."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            timers.append(self)

    monkeypatch.setattr(driver.threading, "Timer", RecordedTimer)
    handler = handler_double(on_event={"PhysicalResourceId": "x"})
    driver.run(
        request(bucket), handler, SETTINGS, _almost_out_of_time(), runtime_for(bucket, FakeClock())
    )
    [watchdog] = timers
    watchdog.join()  # cancelled: its thread ends without waiting out the 0.3 s
    assert watchdog.finished.is_set()
    # Had it fired all the same (the answer racing the timer), the once-only flag keeps it silent.
    watchdog.function()
    assert bucket.only["Status"] == "SUCCESS"


# --- the Lambda entry point ----------------------------------------------------------------------


@pytest.fixture
def trusting_put(bucket, monkeypatch):
    """The entry point builds its own Runtime: its PUTs trust the test's certificate."""
    monkeypatch.setattr(
        driver, "put_response", functools.partial(driver.put_response, context=bucket.context)
    )


def _lambda_context() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        invoked_function_arn=FUNCTION_ARN, get_remaining_time_in_millis=lambda: 900_000
    )


def test_the_delete_of_a_failed_create_succeeds_even_if_the_handler_module_cannot_load(
    bucket, trusting_put, monkeypatch
):
    monkeypatch.setenv(DEPLOY_TIME_ENV_HANDLER, "cdk_trn_runtime.no_such_handler")
    event = request(bucket, "Delete", PhysicalResourceId=driver.CREATE_FAILED_MARKER)
    driver.handler(event, _lambda_context())
    assert bucket.only["Status"] == "SUCCESS"
    assert bucket.only["PhysicalResourceId"] == driver.CREATE_FAILED_MARKER


def test_a_create_whose_handler_module_cannot_load_fails_with_the_marker(
    bucket, trusting_put, monkeypatch
):
    monkeypatch.setenv(DEPLOY_TIME_ENV_HANDLER, "cdk_trn_runtime.no_such_handler")
    driver.handler(request(bucket), _lambda_context())
    assert bucket.only["Status"] == "FAILED"
    assert bucket.only["Reason"].startswith("the function is misconfigured: No module named")
    assert bucket.only["PhysicalResourceId"] == driver.CREATE_FAILED_MARKER
