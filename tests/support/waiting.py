"""Waiting on a condition, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(
    what: str, check: Callable[[], object], timeout: float = 10, interval: float = 0.01
) -> float:
    """Seconds until ``check()`` held (polled every ``interval``); an AssertionError naming
    ``what`` after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(interval)
    return time.monotonic() - start
