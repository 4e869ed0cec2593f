"""The HTTP API of the vault host, one request per connection: ``GET /v1/health``,
``GET /v1/info``, ``GET /v1/attestation?nonce=...``, ``POST /v1/sign``.

Each request has a wall-clock deadline on top of per-read socket timeouts, a bounded body, and a
JSON answer for every failure (the standard library's HTML error pages included); no request can
stop the server. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from cdk_trn_runtime.vault.caller_proof import ProofError
from cdk_trn_runtime.vault.enclave_client import EnclaveError

if TYPE_CHECKING:
    from cdk_trn_runtime.vault.server import ParentServer

__all__ = ["VaultRequestHandler"]

LOG = logging.getLogger(__name__)

_SHA384_HEX = re.compile(r"^[0-9a-f]{96}$")


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


class VaultRequestHandler(BaseHTTPRequestHandler):
    server: ParentServer
    server_version = "cdk-trn-vault"
    sys_version = ""
    error_content_type = "application/json"
    # HTTP/0.9 is not spoken here; with 1.0 as the default, even a garbage request line gets a
    # status line and headers in front of its JSON error.
    default_request_version = "HTTP/1.0"

    def setup(self) -> None:
        # StreamRequestHandler applies `timeout` to the socket: a silent client is cut off. A
        # client that trickles bytes is cut off by the wall-clock deadline: the watchdog closes
        # the reading side, the pending read returns, and the handler answers 408.
        limits = self.server.limits
        self.request.settimeout(limits.socket_timeout)
        self._expired = threading.Event()
        self._started = time.monotonic()
        # First the request line and headers, within header_deadline; parse_request then gives
        # the body what is left of request_deadline.
        self._deadline = min(limits.header_deadline, limits.request_deadline)
        self._watch(self._deadline)
        super().setup()

    def _watch(self, seconds: float) -> None:
        self._watchdog = threading.Timer(max(seconds, 0.0), self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _expire(self) -> None:
        self._expired.set()
        with contextlib.suppress(OSError):
            self.request.shutdown(socket.SHUT_RD)

    def finish(self) -> None:
        self._watchdog.cancel()
        super().finish()

    def handle_one_request(self) -> None:
        super().handle_one_request()
        if self._expired.is_set() and not self._answered:
            self._request_timeout()

    _answered = False

    def _request_timeout(self) -> None:
        # The request line may not even be complete: give the stdlib what send_response needs.
        self.command = getattr(self, "command", None) or "GET"
        self.requestline = getattr(self, "requestline", "") or "(incomplete request)"
        self.request_version = "HTTP/1.0"
        deadline = self._deadline
        with contextlib.suppress(OSError):
            self._json(
                408,
                {
                    "error": {
                        "code": "request_timeout",
                        "message": f"request not received within {deadline:g} seconds",
                    }
                },
            )

    def parse_request(self) -> bool:
        if self._expired.is_set():
            # What arrived before the deadline is incomplete: do not act on it.
            return False
        parsed = super().parse_request()
        # The headers may have been cut short by the deadline; nothing incomplete is acted on.
        if not parsed or self._expired.is_set():
            return False
        self._watchdog.cancel()
        self._deadline = self.server.limits.request_deadline
        self._watch(self._deadline - (time.monotonic() - self._started))
        return True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOG.info("%s %s", self.client_address[0], format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Replaces the stdlib HTML error page (bad request line, header overflow, 501) with JSON.
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self._json(
            code,
            {
                "error": {
                    "code": phrase.lower().replace(" ", "_"),
                    "message": message or explain or phrase,
                }
            },
        )

    def _json(
        self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(payload, sort_keys=True).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self._answered = True
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def _dispatch(self, routes: Mapping[str, Callable[[], dict[str, Any]]]) -> None:
        headers: dict[str, str] = {}
        try:
            path = urllib.parse.urlsplit(self.path).path
            route = routes.get(path)
            if route is None:
                raise _HttpError(404, "not_found", f"no such endpoint: {path[:100]}")
            status, payload = 200, route()
        except _HttpError as exc:
            status, headers = exc.status, exc.headers
            payload = {"error": {"code": exc.code, "message": str(exc)}}
        except Exception:
            LOG.exception("request failed")
            status, payload = 500, {"error": {"code": "internal", "message": "internal error"}}
        try:
            self._json(status, payload, headers)
        except OSError:
            # The caller hung up before reading its answer; nothing to tell it.
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch(
            {
                "/v1/health": lambda: {"status": "ok"},
                "/v1/info": self._info,
                "/v1/attestation": self._attestation,
            }
        )

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch({"/v1/sign": self._sign})

    def _enclave(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.server.enclave.call(message)
        except EnclaveError as exc:
            status = 502 if exc.code in ("enclave_unavailable", "kms", "internal") else 400
            raise _HttpError(status, exc.code, str(exc)) from exc

    def _info(self) -> dict[str, Any]:
        reply = self._enclave({"op": "public_key"})
        return {
            "server_id": self.server.verifier.server_id,
            "sts_url": self.server.verifier.sts_url,
            "region": self.server.region,
            "algorithm": "ECDSA_P384_SHA384",
            "public_key": reply["public_key"],
            "key_sha256": reply["key_sha256"],
        }

    def _attestation(self) -> dict[str, Any]:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        nonce = query.get("nonce", [None])[0]
        reply = self._enclave({"op": "attest", "nonce": nonce})
        return {k: reply[k] for k in ("attestation_document", "public_key", "key_sha256")}

    def _read_json(self) -> dict[str, Any]:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise _HttpError(411, "length_required", "send a Content-Length (no chunked bodies)")
        try:
            length = int(length_header)
        except ValueError as exc:
            raise _HttpError(400, "bad_request", "Content-Length is not a number") from exc
        limit = self.server.limits.max_body_bytes
        if length < 0 or length > limit:
            raise _HttpError(413, "too_large", f"body of {length} bytes exceeds {limit} bytes")
        try:
            raw = self.rfile.read(length)
        except TimeoutError as exc:
            raise _HttpError(408, "request_timeout", "body not received in time") from exc
        if len(raw) != length:
            if self._expired.is_set():
                deadline = self.server.limits.request_deadline
                raise _HttpError(
                    408, "request_timeout", f"request not received within {deadline:g} seconds"
                )
            raise _HttpError(400, "bad_request", "body shorter than Content-Length")
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _HttpError(400, "bad_json", f"body is not JSON: {exc}") from exc
        except RecursionError as exc:
            raise _HttpError(400, "bad_json", "body nests too deeply") from exc
        if not isinstance(body, dict):
            raise _HttpError(400, "bad_request", "body must be a JSON object")
        return body

    def _sign(self) -> dict[str, Any]:
        body = self._read_json()
        digest = body.get("digest")
        if not isinstance(digest, str) or not _SHA384_HEX.match(digest):
            raise _HttpError(400, "bad_request", "digest must be 96 lowercase hex digits (SHA-384)")
        try:
            caller = self.server.verifier.verify(body.get("auth"), request_digest=digest)
        except ProofError as exc:
            raise _HttpError(exc.status, exc.code, str(exc)) from exc
        reply = self._enclave({"op": "sign", "digest": digest})
        LOG.info("signed digest %s for %s with key %s", digest, caller.arn, reply["key_sha256"])
        return {
            "signature": reply["signature"],
            "algorithm": reply["algorithm"],
            "public_key": reply["public_key"],
            "key_sha256": reply["key_sha256"],
            "caller": caller.arn,
        }
