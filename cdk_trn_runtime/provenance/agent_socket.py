"""The signing agent's unix socket: one JSON request per connection, the caller identified by
``SO_PEERCRED``; any local user may connect (the kernel and Slurm say who they are)."""

from __future__ import annotations

import json
import os
import socketserver
import threading
from pathlib import Path
from typing import Any

from cdk_trn_runtime.provenance.agent_client import CLIENT_TIMEOUT_SECONDS, MAX_REQUEST_BYTES
from cdk_trn_runtime.provenance.peer_identity import peer_credentials
from cdk_trn_runtime.provenance.signing_agent import SigningAgent

__all__ = ["AgentServer", "serve"]


class _Handler(socketserver.StreamRequestHandler):
    timeout = CLIENT_TIMEOUT_SECONDS
    server: AgentServer

    def handle(self) -> None:
        pid, uid, gid = peer_credentials(self.request)
        line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
        if len(line) > MAX_REQUEST_BYTES:
            answer: dict[str, Any] = {"ok": False, "error": "request too long"}
        else:
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                answer = {"ok": False, "error": f"request is not a JSON object: {exc}"}
            else:
                answer = self.server.agent.handle(request, pid=pid, uid=uid, gid=gid)
        self.wfile.write((json.dumps(answer) + "\n").encode())


class AgentServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, agent: SigningAgent) -> None:
        self.agent = agent
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        os.chmod(Path(path).parent, 0o755)  # noqa: S103 - root's, readable: jobs connect
        Path(path).unlink(missing_ok=True)
        super().__init__(path, _Handler)
        # Any local user may ask; the kernel and Slurm say who they are.
        os.chmod(path, 0o666)  # noqa: S103


def serve(agent: SigningAgent, path: str, *, poll_interval: float = 0.5) -> AgentServer:
    """Start serving ``path`` in a thread; the caller stops it with ``shutdown()``, which
    returns within ``poll_interval`` seconds."""
    server = AgentServer(path, agent)
    threading.Thread(target=server.serve_forever, args=(poll_interval,), daemon=True).start()
    return server
