"""The one error type cdk-trn raises for bad input, and the helper that words it.

Every validation in the library raises :class:`CdkTrnError` before any resource is created, with a
message that names the prop, the value received and what is allowed. It is a ``ValueError`` so
callers that already catch that keep working; ``app.py`` prints it without a traceback.
"""

from __future__ import annotations

from typing import Any


class CdkTrnError(ValueError):
    """Bad input to a cdk-trn construct, found at synth time."""


def invalid(prop: str, value: Any, allowed: str) -> CdkTrnError:
    """Build the standard message: ``<prop> must be <allowed>, got <value>``."""
    return CdkTrnError(f"{prop} must be {allowed}, got {value!r}")
