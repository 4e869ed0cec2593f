"""The parent-side server on the enclave host (the node side is ``cdk_trn_runtime.vault.client``).

The server owns everything between the cluster's nodes and the enclave:

- start-up: loads the stored key state (KMS ciphertext + public key; nothing secret), sends the
  enclave ``init`` with the host role's credentials, stores the state the enclave returns on first
  start, and refuses to serve when the enclave holds a key other than the stored one
  (:class:`KeyStateFile`, :class:`EnclaveClient`);
- caller authentication, the HashiCorp Vault AWS IAM pattern: the caller sends a SigV4-signed
  ``sts:GetCallerIdentity`` request (method, URL, headers, body) instead of a secret. The server
  checks it is a POST of exactly ``Action=GetCallerIdentity`` to the one STS endpoint it expects,
  that the signature covers the server id and the digest to sign (so a captured proof is useless
  against another server or for another digest), forwards it to STS itself and accepts the caller
  only if STS answers with an assumed-role ARN of an allowed role (:class:`CallerVerifier`);
- admission before a byte is parsed (source network, connection caps in total and per address,
  rate limit), a wall-clock deadline per request on top of per-read socket timeouts, bounded
  sizes, only an allowlist of headers forwarded to STS, a strictly parsed SigV4 Authorization
  header (one Credential for ``sts`` in the configured region, one SignedHeaders, one
  Signature), and JSON errors for every failure; no request can stop the server
  (:class:`ParentServer`);
- forwarding ``sign`` (and ``public_key`` / ``attest``) to the enclave over vsock.

The security group in front of the hosts admits only the cluster's nodes; this server adds the
IAM check so that membership of the network alone is not enough.

"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from cdk_trn_runtime.enclave.channel import DEFAULT_ENCLAVE_PORT, ChannelAddress, FrameError
from cdk_trn_runtime.vault.protocol import (
    DIGEST_HEADER,
    SERVER_ID_HEADER,
    STS_BODY,
    sts_url_for_region,
)

__all__ = [
    "CallerIdentity",
    "CallerVerifier",
    "EnclaveChannel",
    "EnclaveClient",
    "KeyStateFile",
    "ParentServer",
    "ProofError",
    "RateLimiter",
]

LOG = logging.getLogger("cdk_trn_runtime.vault.server")

_ROLE_ARN = re.compile(
    r"^arn:(aws[a-z-]*):iam::(\d{12}):role/(?:[\w+=,.@/-]*/)?([\w+=,.@-]{1,64})$"
)
_ASSUMED_ROLE_ARN = re.compile(
    r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([\w+=,.@-]{1,64})/([\w+=,.@-]{1,128})$"
)
_SHA384_HEX = re.compile(r"^[0-9a-f]{96}$")
# STS itself refuses signatures older than 15 minutes; 5 keeps captured proofs short-lived.
_MAX_PROOF_AGE = timedelta(minutes=5)
_MAX_PROOF_HEADERS = 32
_MAX_PROOF_FIELD = 8192

StsTransport = Callable[[str, str, Mapping[str, str], bytes], tuple[int, bytes]]

# RFC 9110 token: what a header name may be. "Host " (trailing space) is not one.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
_STS_HOST = re.compile(r"^sts\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
# The only headers a proof may carry, and so the only ones that reach STS. Host and
# Content-Length come from the pinned URL and the body, never from the caller.
_FORWARDED_HEADERS = frozenset(
    {
        "accept",
        "authorization",
        "content-type",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-amz-security-token",
        SERVER_ID_HEADER.lower(),
        DIGEST_HEADER.lower(),
    }
)
_SIGV4_PREFIX = "AWS4-HMAC-SHA256 "
_CREDENTIAL = re.compile(
    r"^([A-Z0-9]{1,128})/(\d{8})/([a-z0-9-]{1,32})/([a-z0-9-]{1,32})/aws4_request$"
)
_SIGNED_HEADERS = re.compile(r"^[a-z0-9-]+(?:;[a-z0-9-]+)*$")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class _Authorization:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: frozenset[str]
    signature: str


def _parse_authorization(value: str | None) -> _Authorization:
    """Strict SigV4 ``Authorization``: exactly one Credential, SignedHeaders and Signature."""
    if not value or not value.startswith(_SIGV4_PREFIX):
        raise ProofError("auth must carry a SigV4 (AWS4-HMAC-SHA256) Authorization header")
    fields: dict[str, str] = {}
    for part in value[len(_SIGV4_PREFIX) :].split(","):
        name, sep, field_value = part.strip().partition("=")
        if not sep or name not in ("Credential", "SignedHeaders", "Signature"):
            raise ProofError(f"auth Authorization has an unexpected component {part.strip()!r}")
        if name in fields:
            raise ProofError(f"auth Authorization repeats {name}")
        fields[name] = field_value
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if n not in fields]
    if missing:
        raise ProofError(f"auth Authorization lacks {', '.join(missing)}")
    credential = _CREDENTIAL.match(fields["Credential"])
    if not credential:
        raise ProofError("auth Credential is not KEY/DATE/REGION/SERVICE/aws4_request")
    if not _SIGNED_HEADERS.match(fields["SignedHeaders"]):
        raise ProofError("auth SignedHeaders is not a ;-separated list of lower-case names")
    names = fields["SignedHeaders"].split(";")
    if names != sorted(set(names)):
        raise ProofError("auth SignedHeaders must be sorted and name each header once")
    if not _SIGNATURE.match(fields["Signature"]):
        raise ProofError("auth Signature is not 64 lower-case hex digits")
    access_key_id, date, region, service = credential.groups()
    return _Authorization(
        access_key_id=access_key_id,
        date=date,
        region=region,
        service=service,
        signed_headers=frozenset(names),
        signature=fields["Signature"],
    )


class ProofError(Exception):
    """The caller's identity proof is invalid (401) or names a role that is not allowed (403)."""

    def __init__(self, message: str, *, status: int = 401, code: str = "unauthenticated") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class CallerIdentity:
    arn: str
    account: str
    role_name: str


def urllib_sts_transport(timeout: float = 5.0) -> StsTransport:
    """Send the caller's request to STS: no proxies, no redirects, bounded time and size."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def send(method: str, url: str, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        request = urllib.request.Request(url, data=body, headers=dict(headers), method=method)  # noqa: S310 - URL checked against the pinned STS host
        try:
            with opener.open(request, timeout=timeout) as response:
                return response.status, response.read(65536)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(65536)

    return send


def _parse_role_arn(arn: str) -> tuple[str, str, str]:
    match = _ROLE_ARN.match(arn)
    if not match:
        raise ValueError(f"allowed role must be an IAM role ARN, got {arn!r}")
    partition, account, name = match.groups()
    return partition, account, name


class CallerVerifier:
    """Checks a caller's presigned GetCallerIdentity request and asks STS who signed it."""

    def __init__(
        self,
        *,
        sts_url: str,
        allowed_role_arns: Iterable[str],
        server_id: str,
        transport: StsTransport,
        region: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        parsed = urllib.parse.urlsplit(sts_url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise ValueError(f"sts_url must be an https URL, got {sts_url!r}")
        self.sts_url = sts_url
        self._sts_host = parsed.hostname.lower()
        region_match = _STS_HOST.match(self._sts_host)
        if region is None and region_match is None:
            raise ValueError(f"cannot tell the region of {sts_url!r}; pass region")
        self.region = region or (region_match.group(1) if region_match else "")
        self._allowed = {_parse_role_arn(arn) for arn in allowed_role_arns}
        if not self._allowed:
            raise ValueError("allowed_role_arns must name at least one IAM role")
        self.server_id = server_id
        self._transport = transport
        self._clock = clock

    def verify(self, proof: Any, *, request_digest: str) -> CallerIdentity:
        method, url, headers, body = self._shape(proof)
        self._check_target(method, url, body)
        authorization = _parse_authorization(headers.get("authorization"))
        self._check_credential_scope(authorization, headers)
        self._check_binding(authorization.signed_headers, headers, request_digest)
        # Only the allowlisted headers reach STS (``_shape`` refused every other name); urllib
        # adds Host and Content-Length itself from the pinned URL and the body.
        forward = {name: value for name, value in headers.items() if name in _FORWARDED_HEADERS}
        if "accept" not in authorization.signed_headers:
            forward["accept"] = "application/json"
        try:
            # Sent to the configured endpoint, not the caller's spelling of it.
            status, payload = self._transport("POST", self.sts_url, forward, body.encode())
        except (OSError, urllib.error.URLError) as exc:
            raise ProofError(
                f"STS could not be reached: {exc}", status=502, code="sts_unavailable"
            ) from exc
        if status != 200:
            raise ProofError(f"STS rejected the identity proof (HTTP {status})")
        return self._identity(payload)

    @staticmethod
    def _shape(proof: Any) -> tuple[str, str, dict[str, str], str]:
        if not isinstance(proof, dict):
            raise ProofError("auth must be an object with method, url, headers and body")
        method, url, headers, body = (proof.get(k) for k in ("method", "url", "headers", "body"))
        strings = all(isinstance(v, str) for v in (method, url, body))
        if not strings or not isinstance(headers, dict):
            raise ProofError("auth needs string method, url, body and an object of headers")
        assert isinstance(method, str) and isinstance(url, str) and isinstance(body, str)
        if len(headers) > _MAX_PROOF_HEADERS:
            raise ProofError(f"auth has more than {_MAX_PROOF_HEADERS} headers")
        clean: dict[str, str] = {}
        for name, value in headers.items():
            if not isinstance(value, str) or len(name) > 256 or len(value) > _MAX_PROOF_FIELD:
                raise ProofError("auth headers must be short strings")
            if any(c in name + value for c in "\r\n\x00") or not name.isascii():
                raise ProofError("auth headers must not contain line breaks or NUL")
            if not _HEADER_NAME.match(name):
                raise ProofError(f"auth header name {name[:64]!r} is not an HTTP token")
            if name.lower() not in _FORWARDED_HEADERS:
                allowed = ", ".join(sorted(_FORWARDED_HEADERS))
                raise ProofError(f"auth header {name!r} is not one of: {allowed}")
            # One spelling per header: what is checked here is exactly what STS receives, so a
            # second "X-Cdk-Trn-Request-Digest" cannot shadow the signed one.
            key = name.lower()
            if key in clean:
                raise ProofError(f"auth repeats the header {key!r}")
            clean[key] = value
        return method, url, clean, body

    def _check_target(self, method: str, url: str, body: str) -> None:
        if method != "POST":
            raise ProofError(f"auth method must be POST, got {method!r}")
        try:
            parsed = urllib.parse.urlsplit(url)
            port = parsed.port
        except ValueError as exc:
            raise ProofError(
                f"auth url is not a URL: {exc}", status=400, code="bad_request"
            ) from exc
        if (
            parsed.scheme != "https"
            or (parsed.hostname or "").lower() != self._sts_host
            or port not in (None, 443)
            or parsed.username
            or parsed.password
            or parsed.path not in ("", "/")
            or parsed.query
            or parsed.fragment
        ):
            raise ProofError(f"auth url must be {self.sts_url}, got {url[:200]!r}")
        fields = urllib.parse.parse_qs(body, keep_blank_values=True, strict_parsing=False)
        if fields != {"Action": ["GetCallerIdentity"], "Version": ["2011-06-15"]}:
            raise ProofError(f"auth body must be exactly {STS_BODY}")

    def _check_credential_scope(
        self, authorization: _Authorization, headers: Mapping[str, str]
    ) -> None:
        if authorization.service != "sts":
            raise ProofError(f"auth is signed for service {authorization.service!r}, not sts")
        if authorization.region != self.region:
            raise ProofError(
                f"auth is signed for region {authorization.region!r}, not {self.region!r}"
            )
        missing = sorted(n for n in authorization.signed_headers - {"host"} if n not in headers)
        if missing:
            raise ProofError(f"auth signs headers it does not carry: {missing}")
        if authorization.date != headers.get("x-amz-date", "")[:8]:
            raise ProofError("auth credential scope date differs from X-Amz-Date")

    def _check_binding(
        self, signed: frozenset[str], headers: Mapping[str, str], request_digest: str
    ) -> None:
        for name in ("host", "x-amz-date", SERVER_ID_HEADER.lower(), DIGEST_HEADER.lower()):
            if name not in signed:
                raise ProofError(f"auth signature must cover the {name} header")
        if headers.get(SERVER_ID_HEADER.lower()) != self.server_id:
            raise ProofError(f"auth is bound to another server (expected {self.server_id!r})")
        if headers.get(DIGEST_HEADER.lower()) != request_digest:
            raise ProofError("auth is bound to another digest than the one to sign")
        stamp = headers.get("x-amz-date") or ""
        try:
            signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError as exc:
            raise ProofError("auth X-Amz-Date is not a SigV4 timestamp") from exc
        if abs(self._clock() - signed_at) > _MAX_PROOF_AGE:
            raise ProofError("auth was signed more than 5 minutes from now; sign a fresh one")

    def _identity(self, payload: bytes) -> CallerIdentity:
        try:
            result = json.loads(payload)["GetCallerIdentityResponse"]["GetCallerIdentityResult"]
            arn = result["Arn"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProofError(
                "STS answer is not a GetCallerIdentity JSON response",
                status=502,
                code="sts_unavailable",
            ) from exc
        match = _ASSUMED_ROLE_ARN.match(str(arn))
        if not match:
            raise ProofError(
                f"caller {arn} is not an assumed IAM role", status=403, code="forbidden"
            )
        partition, account, role_name, _session = match.groups()
        if (partition, account, role_name) not in self._allowed:
            raise ProofError(
                f"caller role {role_name} in {account} is not allowed", status=403, code="forbidden"
            )
        return CallerIdentity(arn=str(arn), account=account, role_name=role_name)


class KeyStateFile:
    """The enclave's key state on the host's disk: KMS ciphertext and public key, mode 0600."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        if not isinstance(data, dict):
            raise ValueError(f"{self.path} does not hold a JSON object")
        return data

    def save(self, state: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".key-state-")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(state, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class EnclaveError(Exception):
    """The enclave is unreachable or answered with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class EnclaveChannel(Protocol):
    """Sends one request frame to the enclave and returns its reply (:class:`ChannelAddress`)."""

    def request(self, message: dict[str, Any], *, timeout: float = 30.0) -> dict[str, Any]: ...


class EnclaveClient:
    """Requests to the enclave; initialises it (again) when it reports no key loaded."""

    def __init__(
        self,
        channel: EnclaveChannel,
        *,
        key_id: str,
        region: str,
        state: KeyStateFile,
        credentials: Callable[[], Mapping[str, str]],
        timeout: float = 30.0,
    ) -> None:
        self._channel = channel
        self._key_id = key_id
        self._region = region
        self._state = state
        self._credentials = credentials
        self._timeout = timeout
        self._init_lock = threading.Lock()

    def initialise(self) -> dict[str, Any]:
        with self._init_lock:
            stored = self._state.load()
            if stored is not None:
                self._require_configured_key(stored, f"the key state in {self._state.path}")
            reply = self._raw(
                {
                    "op": "init",
                    "key_id": self._key_id,
                    "region": self._region,
                    "credentials": dict(self._credentials()),
                    "stored_key": stored,
                }
            )
            self._require_configured_key(reply.get("stored_key"), "the enclave's key state")
            if stored is not None:
                self._require_stored_key(stored, reply)
            if reply.get("created") or stored is None:
                self._state.save(reply["stored_key"])
            LOG.info("enclave ready, signing key sha256 %s", reply.get("key_sha256"))
            return reply

    def _require_configured_key(self, state: Any, what: str) -> None:
        # Key substitution: state naming another KMS key (one whose policy someone else controls)
        # would let that someone decrypt the signing key outside the enclave. Never load it,
        # never store it.
        key_id = state.get("key_id") if isinstance(state, Mapping) else None
        if key_id != self._key_id:
            raise EnclaveError(
                "key_mismatch",
                f"{what} names KMS key {key_id!r}, but this vault is configured for "
                f"{self._key_id}; refusing it",
            )

    def _require_stored_key(self, stored: Mapping[str, Any], reply: Mapping[str, Any]) -> None:
        # An enclave that kept its own key in memory answers init with that key (created=False);
        # signing with it would produce signatures no published public key verifies.
        try:
            stored_public = base64.b64decode(str(stored["public_key"]), validate=True)
            enclave_public = base64.b64decode(str(reply["public_key"]), validate=True)
        except (KeyError, ValueError) as exc:
            raise EnclaveError(
                "key_mismatch", f"cannot compare the enclave's key with {self._state.path}: {exc}"
            ) from exc
        if stored_public != enclave_public:
            raise EnclaveError(
                "key_mismatch",
                f"the enclave holds signing key sha256 {hashlib.sha256(enclave_public).hexdigest()}"
                f" but {self._state.path} holds sha256 {hashlib.sha256(stored_public).hexdigest()};"
                " restart the enclave so that it loads the stored key",
            )

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._raw(message)
        except EnclaveError as exc:
            if exc.code != "not_initialised":
                raise
        # The enclave restarted and lost its in-memory key: load it again, then retry once.
        self.initialise()
        return self._raw(message)

    def _raw(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = self._channel.request(message, timeout=self._timeout)
        except (OSError, FrameError) as exc:
            raise EnclaveError("enclave_unavailable", f"enclave unreachable: {exc}") from exc
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise EnclaveError(
                str(error.get("code", "enclave_error")), str(error.get("message", "enclave error"))
            )
        return reply


class RateLimiter:
    """Token buckets per client address, with a bounded number of tracked addresses."""

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_second
        self._burst = float(burst)
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
            return allowed


@dataclass
class ParentLimits:
    """Bounds that keep one caller from exhausting the server.

    ``socket_timeout`` bounds each wait for bytes; ``header_deadline`` bounds the request line
    and headers by the wall clock (a few seconds: an honest client sends them at once), and
    ``request_deadline`` the whole request, so a client trickling one byte at a time holds a slot
    for seconds only; ``max_connections_per_address`` keeps one address from taking every one of
    ``max_connections``, which :meth:`for_clients` sizes so that every client node's share fits.
    """

    max_body_bytes: int = 32 * 1024
    rate_per_second: float = 5.0
    burst: int = 20
    max_connections: int = 32
    max_connections_per_address: int = 4
    socket_timeout: float = 10.0
    request_deadline: float = 20.0
    header_deadline: float = 3.0
    allowed_networks: tuple[str, ...] = field(default_factory=tuple)

    #: Slots kept beyond the client nodes' shares (operators, a replaced node's new address).
    RESERVE = 8

    @classmethod
    def for_clients(cls, nodes: int, **limits: Any) -> ParentLimits:
        """Limits where ``nodes`` client nodes (one address each) each have their full share of
        slots: the slow connections of every job on every node cannot crowd out one node's
        signing agent."""
        made = cls(**limits)
        made.max_connections = max(
            made.max_connections, made.max_connections_per_address * nodes + cls.RESERVE
        )
        return made


class ParentServer(ThreadingHTTPServer):
    """HTTP API on the enclave host: ``GET /v1/health``, ``GET /v1/info``,
    ``GET /v1/attestation?nonce=...``, ``POST /v1/sign``.

    Admission happens on the accepting thread before a byte of the request is read: the source
    network, the per-address and total connection caps and the rate limit. Each admitted
    connection then has ``request_deadline`` seconds of wall-clock time to send its request.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        *,
        enclave: EnclaveClient,
        verifier: CallerVerifier,
        region: str,
        limits: ParentLimits | None = None,
    ) -> None:
        self.enclave = enclave
        self.verifier = verifier
        self.region = region
        self.limits = limits or ParentLimits()
        self.rate_limiter = RateLimiter(self.limits.rate_per_second, self.limits.burst)
        self.networks = [ipaddress.ip_network(n) for n in self.limits.allowed_networks]
        self._active = 0
        self._per_address: dict[str, int] = {}
        self._active_lock = threading.Lock()
        super().__init__(address, _Handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # Runs before any parsing; a refused connection gets a fixed answer and is closed.
        client = str(client_address[0])
        if self.networks:
            try:
                address = ipaddress.ip_address(client)
            except ValueError:
                address = None
            if address is None or not any(address in network for network in self.networks):
                _refuse(request, 403, "forbidden", "caller address is not allowed")
                return False
        if not self.rate_limiter.allow(client):
            _refuse(request, 429, "rate_limited", "too many requests; slow down")
            return False
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0])
        with self._active_lock:
            busy = self._active >= self.limits.max_connections
            crowded = self._per_address.get(client, 0) >= self.limits.max_connections_per_address
            if not busy and not crowded:
                self._active += 1
                self._per_address[client] = self._per_address.get(client, 0) + 1
        if busy or crowded:
            message = (
                "too many connections; retry"
                if busy
                else "too many connections from this address; retry"
            )
            _refuse(request, 503, "busy", message)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints tracebacks to stderr by default; a dropped connection is routine.
        LOG.warning("connection from %s ended with an error", client_address, exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0])
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1
                left = self._per_address.get(client, 1) - 1
                if left > 0:
                    self._per_address[client] = left
                else:
                    self._per_address.pop(client, None)


_PHRASES = {403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}


def _refuse(sock: socket.socket, status: int, code: str, message: str) -> None:
    """Answer a connection that is not admitted, without reading its request."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.0 {status} {_PHRASES[status]}\r\nContent-Type: application/json\r\n"
        f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        # Non-blocking: the accepting thread never waits on a refused client.
        sock.setblocking(False)
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_WR)
        # Take what the client already sent, so that closing does not reset the connection
        # (and discard the answer) because of unread data.
        for _ in range(16):
            if not sock.recv(65536):
                break


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


class _Handler(BaseHTTPRequestHandler):
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


_IMDS = "http://169.254.169.254/latest"


def _host_credentials(timeout: float = 2.0) -> Mapping[str, str]:
    """The host role's temporary credentials from IMDSv2 (standard library only: the host runs
    this module with a bare python3.11, without botocore)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def fetch(path: str, token: str | None = None, method: str = "GET") -> str:
        headers = (
            {"X-aws-ec2-metadata-token": token}
            if token
            else {"X-aws-ec2-metadata-token-ttl-seconds": "300"}
        )
        request = urllib.request.Request(_IMDS + path, headers=headers, method=method)  # noqa: S310 - fixed link-local IMDS URL
        with opener.open(request, timeout=timeout) as response:
            return str(response.read(65536).decode())

    token = fetch("/api/token", method="PUT")
    role = fetch("/meta-data/iam/security-credentials/", token).split()[0]
    document = json.loads(fetch(f"/meta-data/iam/security-credentials/{role}", token))
    if document.get("Code") != "Success":
        raise RuntimeError(f"instance metadata has no credentials for role {role}")
    return {
        "access_key_id": document["AccessKeyId"],
        "secret_access_key": document["SecretAccessKey"],
        "session_token": document["Token"],
    }


def _initialise_when_up(enclave: EnclaveClient, *, attempts: int = 60, pause: float = 2.0) -> None:
    # The enclave boots for a few seconds after `nitro-cli run-enclave` returns; wait for it.
    for attempt in range(1, attempts + 1):
        try:
            enclave.initialise()
            return
        except EnclaveError as exc:
            if exc.code != "enclave_unavailable" or attempt == attempts:
                raise
            LOG.info("enclave not reachable yet (%s); retrying", exc)
            time.sleep(pause)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cdk-trn vault: parent-side signing server")
    parser.add_argument("--listen", default="0.0.0.0:8443", help="host:port (default 0.0.0.0:8443)")  # noqa: S104 - the security group admits only the cluster
    parser.add_argument("--enclave-cid", type=int, required=True)
    parser.add_argument("--enclave-port", type=int, default=DEFAULT_ENCLAVE_PORT)
    parser.add_argument("--key-id", required=True, help="KMS key ARN for the enclave")
    parser.add_argument("--region", required=True)
    parser.add_argument(
        "--allowed-role-arn",
        action="append",
        required=True,
        help="IAM role ARN whose sessions may sign (repeatable)",
    )
    parser.add_argument("--state", default="/var/lib/cdk-trn/signing-key.json")
    parser.add_argument(
        "--server-id",
        default=None,
        help="value callers bind their proofs to (default: this host's name)",
    )
    parser.add_argument(
        "--allowed-network",
        action="append",
        default=[],
        help="CIDR allowed to call (repeatable; default: any, rely on the SG)",
    )
    parser.add_argument(
        "--max-clients",
        type=int,
        default=0,
        help="client nodes the vault serves: connection slots are sized so each has its share",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    sts_url = sts_url_for_region(args.region)
    enclave = EnclaveClient(
        ChannelAddress.vsock(args.enclave_cid, args.enclave_port),
        key_id=args.key_id,
        region=args.region,
        state=KeyStateFile(args.state),
        credentials=_host_credentials,
    )
    _initialise_when_up(enclave)
    verifier = CallerVerifier(
        sts_url=sts_url,
        allowed_role_arns=args.allowed_role_arn,
        server_id=args.server_id or socket.getfqdn(),
        transport=urllib_sts_transport(),
        region=args.region,
    )
    host, _, port = args.listen.rpartition(":")
    limits = ParentLimits.for_clients(
        args.max_clients, allowed_networks=tuple(args.allowed_network)
    )
    with ParentServer(
        (host, int(port)), enclave=enclave, verifier=verifier, region=args.region, limits=limits
    ) as server:
        LOG.info("vault listening on %s", args.listen)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
