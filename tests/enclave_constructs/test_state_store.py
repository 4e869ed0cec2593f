"""The key-state write the vault host makes instead of ``aws s3api put-object --if-none-match``:
its SigV4 signature equals botocore's for the same request, and against an S3 test double server
it stores once, reports an existing object as exit 3 and any other refusal as exit 1."""

from __future__ import annotations

import datetime as dt
import hashlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cdk_trn_runtime.vault import state_store
from tests.support.servers import serving

REGION = "us-east-2"
BUCKET = "trn-vault-state-bucket"
KEY = "vault/key-state/signing-key.json"
CREDENTIALS = {
    "access_key_id": "ASIATESTDOUBLE000001",
    "secret_access_key": "test-double-secret-access-key",
    "session_token": "test-double-session-token",
}
NOW = dt.datetime(2026, 11, 29, 12, 0, 0, tzinfo=dt.UTC)


def test_signature_matches_botocores_for_the_same_put(monkeypatch):
    url = state_store.s3_object_url(BUCKET, KEY, REGION)
    body = b'{"public_key": "test-double"}'
    extra = {"If-None-Match": "*", "Content-Type": "application/json"}
    ours = state_store.signed_put_headers(
        url, body, region=REGION, credentials=CREDENTIALS, headers=extra, now=NOW
    )
    request = AWSRequest(method="PUT", url=url, data=body, headers=dict(extra))
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: NOW.replace(tzinfo=None))
    S3SigV4Auth(
        Credentials(
            CREDENTIALS["access_key_id"],
            CREDENTIALS["secret_access_key"],
            CREDENTIALS["session_token"],
        ),
        "s3",
        REGION,
    ).add_auth(request)
    assert ours["authorization"] == request.headers["Authorization"]
    assert ours["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    assert "if-none-match" in ours["authorization"].split("SignedHeaders=")[1]


class _S3Double(BaseHTTPRequestHandler):
    """Test double of S3's conditional create on a directory (path-style URLs)."""

    root: Path
    refuse_with: int | None = None
    seen: list[dict[str, str]]

    def do_PUT(self) -> None:  # noqa: N802 - http.server's method name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append({k.lower(): v for k, v in self.headers.items()})
        if self.refuse_with:
            self._answer(self.refuse_with, b"<Error><Code>AccessDenied</Code></Error>")
            return
        target = self.root / self.path.lstrip("/")
        if self.headers.get("If-None-Match") == "*" and target.exists():
            self._answer(412, b"<Error><Code>PreconditionFailed</Code></Error>")
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
        self._answer(200, b"")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def s3(tmp_path, monkeypatch):
    handler = type("S3Double", (_S3Double,), {"root": tmp_path / "s3", "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["secret_access_key"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", CREDENTIALS["session_token"])
    with serving(server):
        yield handler, f"http://127.0.0.1:{server.server_address[1]}"


def _store(endpoint: str, state: Path) -> int:
    return state_store.main(
        [
            "--bucket", BUCKET, "--key", KEY, "--file", str(state),
            "--region", REGION, "--endpoint-url", endpoint,
        ]
    )  # fmt: skip


def test_first_write_stores_and_a_second_finds_the_object_and_exits_3(s3, tmp_path, capsys):
    handler, endpoint = s3
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text('{"host": "first"}')
    second.write_text('{"host": "second"}')
    assert _store(endpoint, first) == state_store.EXIT_STORED
    assert _store(endpoint, second) == state_store.EXIT_EXISTS
    stored = handler.root / BUCKET / KEY
    assert stored.read_text() == '{"host": "first"}'
    assert "PreconditionFailed" in capsys.readouterr().err
    assert all(h["if-none-match"] == "*" for h in handler.seen)
    assert all(
        h["authorization"].startswith("AWS4-HMAC-SHA256 Credential=ASIA") for h in handler.seen
    )
    assert all(h["x-amz-security-token"] == "test-double-session-token" for h in handler.seen)


def test_any_other_refusal_exits_1_with_the_status(s3, tmp_path, capsys):
    handler, endpoint = s3
    handler.refuse_with = 403
    state = tmp_path / "state.json"
    state.write_text("{}")
    assert _store(endpoint, state) == state_store.EXIT_FAILED
    assert "HTTP 403" in capsys.readouterr().err
    assert not (handler.root / BUCKET / KEY).exists()
