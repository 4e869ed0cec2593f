"""Caller authentication on the vault host, the HashiCorp Vault AWS IAM pattern.

The caller sends a SigV4-signed ``sts:GetCallerIdentity`` request (method, URL, headers, body)
instead of a secret. :class:`CallerVerifier` checks it is a POST of exactly
``Action=GetCallerIdentity`` to the one STS endpoint it expects, that the signature covers the
server id and the digest to sign (so a captured proof is useless against another server or for
another digest), that the Authorization header is strictly SigV4 (one Credential for ``sts`` in the
configured region, one SignedHeaders, one Signature) and that only an allowlist of headers is
carried; it forwards the request to STS itself and accepts the caller only if STS answers with an
assumed-role ARN of an allowed role. Standard library only.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cdk_trn_runtime.vault.protocol import DIGEST_HEADER, SERVER_ID_HEADER, STS_BODY

__all__ = ["CallerIdentity", "CallerVerifier", "ProofError", "StsTransport", "urllib_sts_transport"]

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
