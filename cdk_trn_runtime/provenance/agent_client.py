"""The job side of the node's signing agent: :class:`AgentClient` sends one JSON request over the
agent's unix socket and gets one answer; :func:`signed_file` turns a ``sign`` answer into the
signed manifest file, its signature checked. Standard library only (plus what ``signing``
imports for the check)."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CLIENT_TIMEOUT_SECONDS",
    "DEFAULT_SOCKET",
    "ENV_SOCKET",
    "MAX_REQUEST_BYTES",
    "AgentClient",
    "AgentError",
    "signed_file",
]

#: Where jobs find the agent (inside the node's Slurm container).
DEFAULT_SOCKET = "/run/cdk-trn/signer.sock"
ENV_SOCKET = "CDK_TRN_SIGNER_SOCKET"
MAX_REQUEST_BYTES = 64 * 1024
CLIENT_TIMEOUT_SECONDS = 120.0


class AgentError(Exception):
    """A request the agent refuses or cannot serve now; the message says why."""


class AgentClient:
    """What a job uses: ``request`` one JSON object, get one back."""

    def __init__(self, path: str | None = None, timeout: float = CLIENT_TIMEOUT_SECONDS) -> None:
        self.path = path or os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET
        self.timeout = timeout

    def available(self) -> bool:
        try:
            return stat.S_ISSOCK(os.stat(self.path).st_mode)
        except OSError:
            return False

    def request(self, message: Mapping[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            sock.sendall((json.dumps(dict(message)) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        answer = json.loads(data)
        if not answer.get("ok"):
            raise AgentError(str(answer.get("error")))
        result: dict[str, Any] = answer
        return result


def signed_file(answer: Mapping[str, Any]) -> dict[str, Any] | None:
    """The signed manifest file's content from a ``sign`` answer, its signature checked (None
    when the cluster has no vault)."""
    from cdk_trn_runtime.provenance.signing import checked_vault_signature  # noqa: PLC0415

    signature = answer.get("signature")
    if not signature:
        return None
    return checked_vault_signature(answer["manifest"], signature)
