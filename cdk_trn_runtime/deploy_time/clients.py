"""AWS clients for deploy-time handlers, with time bounds that fit an invocation.

A custom-resource invocation keeps ``driver.HANDOVER_MARGIN_SECONDS`` (60 s) back for the last
poll and the answer, so one AWS call must not outlast it. botocore's defaults (60 s connect, 60 s
read, retried) let a single call hang for minutes; these clients give up after at most
``TOTAL_MAX_ATTEMPTS`` x (``CONNECT_TIMEOUT_SECONDS`` + ``READ_TIMEOUT_SECONDS``) plus the
standard mode's short back-off, about 50 s. The driver's watchdog answers if a handler makes
several slow calls in a row.
"""

from __future__ import annotations

from typing import Any

CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 10
#: The first attempt included (botocore's ``total_max_attempts``).
TOTAL_MAX_ATTEMPTS = 3


def bounded_config() -> Any:
    """The botocore ``Config`` of every deploy-time client."""
    from botocore.config import Config

    return Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"mode": "standard", "total_max_attempts": TOTAL_MAX_ATTEMPTS},
    )


def bounded_client(service: str, **kwargs: Any) -> Any:
    """``boto3.client(service)`` with :func:`bounded_config`."""
    import boto3  # imported lazily so handler modules load without boto3 in unit tests

    return boto3.client(service, config=bounded_config(), **kwargs)  # type: ignore[call-overload]
