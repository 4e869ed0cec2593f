"""The one Lambda function of a deploy-time custom resource: CloudFormation's protocol, in Python.

CloudFormation invokes the function asynchronously with a request (Create, Update, Delete) and
waits for a JSON answer PUT to the request's pre-signed ``ResponseURL``. The driver keeps the
handler API of aws-cdk-lib's Provider framework, so a handler module written for it runs
unchanged:

* ``on_event(event)`` returns ``{"PhysicalResourceId": ..., "Data": {...}, ...}`` (any other keys
  are passed on to ``is_complete``), or raises;
* ``is_complete(event)`` (optional) gets the request merged with that result and returns
  ``{"IsComplete": bool, "Data": {...}}`` (``Data`` only when complete; any other key of an
  incomplete answer replaces that key of the handler's state for the next poll; an optional
  ``Status``
  string says what it is waiting for), or raises.

What the driver does with them:

1. ``on_event``. A Delete, or a handler without ``is_complete``, is answered at once.
2. ``is_complete`` right away, then every query interval while the invocation has time left for
   another poll; then the wait continues in a new asynchronous invocation of this same function
   (``InvocationType=Event`` on its own ARN) carrying the request, the on-event result and the
   absolute deadline. Past the deadline the answer is FAILED: "timed out after N minutes waiting
   for ...". This is the poll the framework's waiter state machine does, without the state
   machine and the four extra functions.
3. Any exception of a handler is a FAILED answer with its message. A Create that failed answers
   with a marker physical id, and the Delete CloudFormation then sends for it succeeds without
   loading the handler module or reading the settings, the first thing the entry point does (the
   framework does the same): the rollback of a Create that failed because the function is broken
   still completes.

The deadline counts from the start of the first invocation, before ``on_event``, so the driver's
own "timed out" answer comes before CloudFormation's ServiceTimeout (the construct sets that
``SERVICE_TIMEOUT_MARGIN`` later).

One answer, always, and in time:

* A watchdog timer fires :data:`WATCHDOG_MARGIN_SECONDS` before Lambda's hard timeout. If the
  invocation has neither answered nor handed over by then (a hanging ``on_event``,
  ``is_complete``, self-invocation or PUT), it answers FAILED, naming what was running and for how
  long, instead of leaving CloudFormation to wait out ServiceTimeout with a generic message.
* The watchdog and the normal path share a once-only flag: whichever claims it answers (or hands
  over), the other stays silent.
* The answer is an HTTPS PUT with an empty Content-Type (CloudFormation's documentation), retried
  on network errors and 5xx/429 at most :data:`PUT_ATTEMPTS` times with short timeouts, all within
  :data:`ANSWER_BUDGET_SECONDS` (less when the invocation has less time left), which fits in
  :data:`HANDOVER_MARGIN_SECONDS`. It is kept under CloudFormation's 4096-byte limit.
* A failure to answer is logged and raised, never followed by a FAILED answer: a PUT that landed
  and then had a retry refused must not be contradicted. The function does not retry
  asynchronous events; the event goes to the dead-letter queue.
* AWS clients (this function's Lambda client and the handlers') time out after seconds, not
  minutes (``cdk_trn_runtime.deploy_time.clients``).

Duplicates: Lambda delivers an asynchronous event at least once, so a request can, rarely, run
twice; so can a wait whose self-invocation the watchdog gave up on but which landed after all.
Each copy is its own chain: it calls the handlers again and answers once. CloudFormation takes the
first answer for a request and ignores any later one. What the second chain does is the handler's
to keep harmless: the prefix-list lookup and the preflight only read; the EIF build passes the
request id as CodeBuild's idempotency token; the acceptance run's id derives from the request id,
so a duplicate runs the same-named run again.

The response URL is a credential for this one resource: it is never logged and the handlers never
see it.

Lambda Python runtime: standard library and boto3 only. Settings come from the environment
(``cdk_trn_runtime.contract.deploy_time.DeployTimeSettings``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from cdk_trn_runtime.contract import (
    DEPLOY_TIME_FAILURE_MARK,
)
from cdk_trn_runtime.contract.deploy_time import DeployTimeSettings
from cdk_trn_runtime.contract.message import MessageError

LOG = logging.getLogger(__name__)
LOG.setLevel(logging.INFO)

#: CloudFormation rejects a response body above 4096 bytes (custom resource response objects).
RESPONSE_LIMIT = 4096
#: Physical id of a Create that failed: its Delete has nothing to undo.
CREATE_FAILED_MARKER = "cdk-trn::create-failed"
#: Key of the continuation state in a self-invocation's payload.
CONTINUATION_KEY = "CdkTrnContinuation"
#: Time an invocation keeps back for the last poll, the answer or the hand-over.
HANDOVER_MARGIN_SECONDS = 60
#: Attempts at the PUT to the response URL, each one's timeout, and the first back-off (doubling).
PUT_ATTEMPTS = 3
PUT_TIMEOUT_SECONDS = 10.0
PUT_BACKOFF_SECONDS = 1.0
#: The longest an answer takes: every attempt timing out, plus the back-offs (33 s). It fits in
#: the hand-over margin.
ANSWER_BUDGET_SECONDS = PUT_ATTEMPTS * PUT_TIMEOUT_SECONDS + PUT_BACKOFF_SECONDS * (
    2 ** (PUT_ATTEMPTS - 1) - 1
)
#: The watchdog answers FAILED this long before Lambda's hard timeout if nothing has answered.
WATCHDOG_MARGIN_SECONDS = 20
#: Keys the driver owns in the merged event; never passed to or taken from a handler result.
_PRIVATE_KEYS = ("ResponseURL", CONTINUATION_KEY)


class ProtocolError(Exception):
    """A handler returned something the protocol does not allow; the message says what."""


@dataclass(frozen=True)
class Settings:
    """How the function waits (from its environment)."""

    handler_module: str
    query_interval: float
    total_timeout: float
    purpose: str

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        try:
            sent = DeployTimeSettings.from_environment(env)
        except MessageError as error:
            raise ProtocolError(str(error)) from None
        return cls(
            handler_module=sent.handler_module,
            query_interval=float(sent.query_interval_seconds),
            total_timeout=float(sent.total_timeout_seconds),
            purpose=sent.purpose,
        )


@dataclass
class Runtime:
    """What the driver does to the world; tests replace every part."""

    lambda_client: Any = None
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    #: ``put(url, body, timeout=seconds)`` -> HTTP status; default :func:`put_response`.
    put: Callable[..., int] | None = None

    def invoker(self) -> Any:
        if self.lambda_client is None:
            from cdk_trn_runtime.deploy_time.clients import bounded_client

            self.lambda_client = bounded_client("lambda")
        return self.lambda_client


@dataclass(frozen=True)
class Invocation:
    """This invocation: its own ARN and how much time it has left."""

    function_arn: str
    remaining_ms: Callable[[], int] = field(default=lambda: 900_000)


# --- the answer --------------------------------------------------------------------------------


def response_body(
    event: Mapping[str, Any],
    status: str,
    reason: str,
    physical_id: str,
    data: Mapping[str, Any] | None = None,
    *,
    no_echo: bool = False,
) -> bytes:
    """The JSON answer, within :data:`RESPONSE_LIMIT`: the reason is shortened first; Data that
    cannot fit turns a SUCCESS into a FAILED saying so."""
    base = {
        "Status": status,
        "Reason": "",
        "PhysicalResourceId": physical_id or CREATE_FAILED_MARKER,
        "StackId": event["StackId"],
        "RequestId": event["RequestId"],
        "LogicalResourceId": event["LogicalResourceId"],
        "NoEcho": bool(no_echo),
        "Data": {str(k): v for k, v in (data or {}).items()},
    }
    empty = len(json.dumps(base).encode())
    room = RESPONSE_LIMIT - empty
    if room < 0:
        return response_body(
            event,
            "FAILED",
            f"the response Data is {empty} bytes, more than CloudFormation's {RESPONSE_LIMIT}",
            physical_id,
        )
    base["Reason"] = _fit(reason, room)
    return json.dumps(base).encode()


def _fit(text: str, room: int) -> str:
    """``text`` cut so that its JSON encoding takes at most ``room`` bytes."""
    if len(json.dumps(text).encode()) - 2 <= room:
        return text
    marker = " ... (truncated)"
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits with the marker
        middle = (low + high + 1) // 2
        if len(json.dumps(text[:middle] + marker).encode()) - 2 <= room:
            low = middle
        else:
            high = middle - 1
    return text[:low] + marker if low else ""


def put_response(
    url: str,
    body: bytes,
    *,
    timeout: float = PUT_TIMEOUT_SECONDS,
    context: ssl.SSLContext | None = None,
) -> int:
    """One HTTPS PUT of ``body`` to the pre-signed ``url``; the HTTP status (raises on errors).
    ``timeout``: seconds for the connection and each read. ``context``: the TLS settings.
    Default: Python's (system CAs, hostname checked)."""
    if not url.startswith("https://"):
        raise ProtocolError("ResponseURL must be an https URL")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url,
        data=body,
        method="PUT",
        # The pre-signed URL is signed without a content type (CloudFormation's documentation).
        headers={"Content-Type": "", "Content-Length": str(len(body))},
    )
    with urllib.request.urlopen(  # noqa: S310 - https only
        request, timeout=timeout, context=context
    ) as response:
        return int(response.status)


def _retryable(error: Exception) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code in (408, 429)
    return isinstance(error, (urllib.error.URLError, TimeoutError, ConnectionError))


def send(
    event: Mapping[str, Any],
    status: str,
    reason: str,
    physical_id: str,
    data: Mapping[str, Any] | None,
    runtime: Runtime,
    *,
    no_echo: bool = False,
    budget: float = ANSWER_BUDGET_SECONDS,
) -> None:
    """Answer CloudFormation; transient failures are retried with back-off, all within ``budget``
    seconds. Raises :class:`ProtocolError` when the answer did not get through."""
    body = response_body(event, status, reason, physical_id, data, no_echo=no_echo)
    put = runtime.put or put_response
    answered = json.loads(body)
    if answered["Status"] == "FAILED":
        # The mark is what the function's failure metric counts.
        LOG.error(
            "%s %s: %s",
            DEPLOY_TIME_FAILURE_MARK,
            answered["PhysicalResourceId"],
            answered["Reason"],
        )
    else:
        LOG.info("answering SUCCESS %s", answered["PhysicalResourceId"])
    delay = PUT_BACKOFF_SECONDS
    until = runtime.clock() + budget
    for attempt in range(1, PUT_ATTEMPTS + 1):
        timeout = max(1.0, min(PUT_TIMEOUT_SECONDS, until - runtime.clock()))
        try:
            code = put(str(event["ResponseURL"]), body, timeout=timeout)
        except Exception as error:  # noqa: BLE001 - classified below
            # The message of an HTTPError carries no URL; a URLError's reason neither.
            LOG.warning("answer attempt %d failed: %s", attempt, type(error).__name__)
            out_of_time = runtime.clock() + delay + 1 > until
            if attempt == PUT_ATTEMPTS or not _retryable(error) or out_of_time:
                raise ProtocolError(
                    f"could not answer CloudFormation after {attempt} attempts "
                    f"({type(error).__name__}: {getattr(error, 'code', '')})"
                ) from None
            runtime.sleep(delay)
            delay *= 2
            continue
        LOG.info("CloudFormation took the answer: HTTP %s", code)
        return


# --- the request -------------------------------------------------------------------------------


def _sanitized(event: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in _PRIVATE_KEYS}


def merge_on_event_result(event: Mapping[str, Any], result: Any) -> dict[str, Any]:
    """The request merged with ``on_event``'s result, as the framework merges them."""
    if result is None:
        result = {}
    if not isinstance(result, Mapping):
        raise ProtocolError(f"on_event must return a dict or None, got {type(result).__name__}")
    request_type = event["RequestType"]
    default = event["RequestId"] if request_type == "Create" else event.get("PhysicalResourceId")
    physical_id = result.get("PhysicalResourceId") or default
    if request_type == "Delete" and physical_id != event.get("PhysicalResourceId"):
        raise ProtocolError("on_event may not change the physical resource id on Delete")
    data = result.get("Data") or {}
    if not isinstance(data, Mapping):
        raise ProtocolError("on_event's Data must be a dict")
    merged = {**_sanitized(event), **_sanitized(result)}
    merged["PhysicalResourceId"] = str(physical_id)
    merged["Data"] = dict(data)
    return merged


def _waiting_for(settings: Settings, resource: Mapping[str, Any], status: str) -> str:
    what = f"{settings.purpose} {resource.get('PhysicalResourceId', '')}".strip()
    return f"{what} ({status})" if status else what


@dataclass(frozen=True)
class Outcome:
    """The answer the request gets."""

    status: str
    reason: str
    physical_id: str
    data: Mapping[str, Any] = field(default_factory=dict)
    no_echo: bool = False


class Answering:
    """The once-only flag of an invocation, shared by the normal path and the watchdog: whoever
    claims it first answers (or hands the wait over); the other one stays silent. It also says
    what is running, for the watchdog's message."""

    def __init__(self, clock: Callable[[], float], physical_id: str) -> None:
        self._lock = threading.Lock()
        self._claimed = False
        self._clock = clock
        self.physical_id = physical_id
        self.activity = "starting"
        self.since = clock()

    def doing(self, activity: str) -> None:
        self.activity, self.since = activity, self._clock()

    @property
    def claimed(self) -> bool:
        """Whether this invocation has answered (or handed over) already."""
        with self._lock:
            return self._claimed

    def claim(self) -> bool:
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True


def _answer_once(
    event: Mapping[str, Any],
    outcome: Outcome,
    answering: Answering,
    runtime: Runtime,
    budget: float,
) -> None:
    """Send ``outcome`` unless this invocation has answered already. A failure to answer is logged
    and raised (the event goes to the dead-letter queue), never turned into a second answer."""
    if not answering.claim():
        LOG.warning("not answering %s: this invocation has answered already", outcome.status)
        return
    try:
        send(
            event, outcome.status, outcome.reason, outcome.physical_id, outcome.data, runtime,
            no_echo=outcome.no_echo, budget=budget,
        )  # fmt: skip
    except Exception:
        LOG.exception("CloudFormation did not get the %s answer", outcome.status)
        raise


def _answer_budget(invocation: Invocation) -> float:
    """Seconds the answer may take: :data:`ANSWER_BUDGET_SECONDS`, less if the invocation ends
    sooner."""
    left = invocation.remaining_ms() / 1000 - 1
    return max(1.0, min(ANSWER_BUDGET_SECONDS, left))


def _start_watchdog(
    event: Mapping[str, Any],
    settings: Settings,
    invocation: Invocation,
    runtime: Runtime,
    answering: Answering,
) -> threading.Timer:
    """A timer that answers FAILED :data:`WATCHDOG_MARGIN_SECONDS` before Lambda's hard timeout,
    unless the invocation answered or handed over first."""

    def fire() -> None:
        ran = runtime.clock() - answering.since
        reason = (
            f"{settings.purpose}: {answering.activity} was still running after {ran:.0f} s, "
            f"{WATCHDOG_MARGIN_SECONDS} s before the function's timeout; no answer would have "
            "reached CloudFormation"
        )
        physical_id = answering.physical_id
        if not physical_id:
            physical_id = CREATE_FAILED_MARKER if event.get("RequestType") == "Create" else ""
        # A failure is logged in _answer_once; a timer thread has no one to raise to.
        with contextlib.suppress(Exception):
            _answer_once(
                event, Outcome("FAILED", reason, physical_id), answering, runtime,
                budget=WATCHDOG_MARGIN_SECONDS - 2,
            )  # fmt: skip

    delay = max(0.0, invocation.remaining_ms() / 1000 - WATCHDOG_MARGIN_SECONDS)
    timer = threading.Timer(delay, fire)
    timer.daemon = True
    timer.start()
    return timer


def run(
    event: Mapping[str, Any],
    handler: ModuleType,
    settings: Settings,
    invocation: Invocation,
    runtime: Runtime,
    *,
    started: float | None = None,
) -> None:
    """Serve one invocation: answer CloudFormation, or hand the wait to a new invocation.
    ``started``: when the first invocation began (default: now); the deadline counts from it."""
    request_type = event.get("RequestType")
    physical_id = str(event.get("PhysicalResourceId") or "")
    if request_type == "Delete" and physical_id == CREATE_FAILED_MARKER:
        _answer_failed_create_delete(event, runtime)
        return
    if started is None:
        started = runtime.clock()
    answering = Answering(runtime.clock, physical_id)
    watchdog = _start_watchdog(event, settings, invocation, runtime, answering)
    try:
        try:
            outcome = _serve(event, handler, settings, invocation, runtime, answering, started)
        except Exception as error:  # noqa: BLE001 - every handler failure must reach CloudFormation
            LOG.exception("%s failed", settings.purpose)
            physical_id = answering.physical_id
            if not physical_id:
                physical_id = CREATE_FAILED_MARKER if request_type == "Create" else ""
            outcome = Outcome("FAILED", str(error) or type(error).__name__, physical_id)
        if outcome is not None:
            _answer_once(event, outcome, answering, runtime, _answer_budget(invocation))
    finally:
        watchdog.cancel()


def _answer_failed_create_delete(event: Mapping[str, Any], runtime: Runtime) -> None:
    send(
        event, "SUCCESS", "nothing to delete: the create had failed", CREATE_FAILED_MARKER, {},
        runtime,
    )  # fmt: skip


def _serve(
    event: Mapping[str, Any],
    handler: ModuleType,
    settings: Settings,
    invocation: Invocation,
    runtime: Runtime,
    answering: Answering,
    started: float,
) -> Outcome | None:
    """The outcome of the request, or None when the wait continues in a new invocation."""
    continuation = event.get(CONTINUATION_KEY)
    if continuation is None:
        answering.doing("on_event")
        result = handler.on_event(_sanitized(event))
        resource = merge_on_event_result(event, result)
        answering.physical_id = resource["PhysicalResourceId"]
        waits = hasattr(handler, "is_complete") and event.get("RequestType") != "Delete"
        if not waits:
            return Outcome(
                "SUCCESS", "", resource["PhysicalResourceId"], resource["Data"],
                bool(resource.get("NoEcho")),
            )  # fmt: skip
        deadline = started + settings.total_timeout
    else:
        resource = dict(continuation["Resource"])
        answering.physical_id = str(resource["PhysicalResourceId"])
        deadline = float(continuation["Deadline"])
        started = float(continuation["Started"])
    return _wait(event, handler, settings, invocation, runtime, answering, resource, started,
                 deadline)  # fmt: skip


def _wait(
    event: Mapping[str, Any],
    handler: ModuleType,
    settings: Settings,
    invocation: Invocation,
    runtime: Runtime,
    answering: Answering,
    resource: dict[str, Any],
    started: float,
    deadline: float,
) -> Outcome | None:
    physical_id = resource["PhysicalResourceId"]
    while True:
        answering.doing("is_complete")
        result = handler.is_complete(dict(resource))
        if not isinstance(result, Mapping) or not isinstance(result.get("IsComplete"), bool):
            raise ProtocolError("is_complete must return a dict with a boolean IsComplete")
        if result["IsComplete"]:
            data = {**resource.get("Data", {}), **(result.get("Data") or {})}
            return Outcome("SUCCESS", "", physical_id, data, bool(resource.get("NoEcho")))
        if result.get("Data"):
            raise ProtocolError("is_complete may return Data only with IsComplete true")
        # The handler's own state keys (as on_event returns them) carry to the next poll, and to
        # a new invocation: a wait that changes course (a node replaced, a run started again).
        resource.update({k: v for k, v in _sanitized(result).items() if k not in _IS_COMPLETE_KEYS})
        status = str(result.get("Status") or "")
        now = runtime.clock()
        if now >= deadline:
            minutes = (now - started) / 60
            return Outcome(
                "FAILED",
                f"timed out after {minutes:.0f} minutes waiting for "
                + _waiting_for(settings, resource, status),
                physical_id,
            )
        if answering.claimed:
            # The watchdog answered while is_complete ran: no hand-over, no further poll.
            LOG.warning("the wait ends: this invocation has answered already")
            return None
        pause = min(settings.query_interval, max(0.0, deadline - now))
        if invocation.remaining_ms() / 1000 < pause + HANDOVER_MARGIN_SECONDS:
            answering.doing("continuing in a new invocation")
            _continue_in_new_invocation(event, invocation, runtime, resource, started, deadline)
            if not answering.claim():
                # The watchdog answered while the invoke was slow: the next invocation's answer
                # comes second, and CloudFormation ignores it.
                LOG.warning("the wait was handed over after this invocation had answered")
            return None
        answering.doing("waiting between polls")
        runtime.sleep(pause)


#: What is_complete's answer means to the driver; any other key is the handler's state.
_IS_COMPLETE_KEYS = frozenset({"IsComplete", "Data", "Status"})


def _continue_in_new_invocation(
    event: Mapping[str, Any],
    invocation: Invocation,
    runtime: Runtime,
    resource: Mapping[str, Any],
    started: float,
    deadline: float,
) -> None:
    payload = {
        **{k: v for k, v in event.items() if k != CONTINUATION_KEY},
        CONTINUATION_KEY: {"Resource": dict(resource), "Started": started, "Deadline": deadline},
    }
    runtime.invoker().invoke(
        FunctionName=invocation.function_arn,
        InvocationType="Event",
        Payload=json.dumps(payload, default=str).encode(),
    )
    LOG.info("the wait continues in a new invocation (deadline %.0f)", deadline)


# --- Lambda entry point --------------------------------------------------------------------------


def handler(event: dict[str, Any], context: Any) -> None:
    """Lambda entry point; the function's ARN is the custom resource's service token."""
    started = time.time()
    LOG.info(
        "request %s %s%s",
        event.get("RequestType"),
        event.get("LogicalResourceId"),
        " (continued)" if CONTINUATION_KEY in event else "",
    )
    runtime = Runtime()
    if (
        event.get("RequestType") == "Delete"
        and event.get("PhysicalResourceId") == CREATE_FAILED_MARKER
    ):
        # Before anything that can fail: a Create that failed because the module does not load
        # must not make the rollback's Delete fail too.
        _answer_failed_create_delete(event, runtime)
        return
    invocation = Invocation(context.invoked_function_arn, context.get_remaining_time_in_millis)
    try:
        settings = Settings.from_environment()
        module = importlib.import_module(settings.handler_module)
    except Exception as error:  # noqa: BLE001 - CloudFormation must hear of it, not time out
        LOG.exception("the function is misconfigured")
        physical_id = str(event.get("PhysicalResourceId") or CREATE_FAILED_MARKER)
        outcome = Outcome("FAILED", f"the function is misconfigured: {error}", physical_id)
        answering = Answering(runtime.clock, physical_id)
        _answer_once(event, outcome, answering, runtime, _answer_budget(invocation))
        return
    run(event, module, settings, invocation, runtime, started=started)
