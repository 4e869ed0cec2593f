"""The key-state write the vault host makes instead of ``aws s3api put-object --if-none-match``:
botocore's real S3 signer reproduces AWS's published SigV4 example, and against an S3 test double
server that verifies every signature it stores once, reports an existing object as exit 3 and any
other refusal as exit 1; on this Python and, as the host runs it, on AL2023's system python3 (3.9,
with botocore)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from botocore.credentials import Credentials

from cdk_trn_runtime.vault import state_store
from tests.support.host_python import REPO, host_python
from tests.support.servers import serving

REGION = "us-east-2"
BUCKET = "trn-vault-state-bucket"
KEY = "vault/key-state/signing-key.json"
CREDENTIALS = {
    "access_key_id": "ASIATESTDOUBLE000001",
    "secret_access_key": "test-double-secret-access-key",
    "session_token": "test-double-session-token",
}

# AWS's published example (Amazon S3 API Reference, "Signature Calculations for the Authorization
# Header: Transferring Payload in a Single Chunk", GET Object): its documented credentials, time,
# request and signature.
EXAMPLE_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EXAMPLE_TIME = dt.datetime(2013, 5, 24, 0, 0, 0)
EXAMPLE_SIGNATURE = "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"


def sigv4_signature_double(
    method: str, path: str, headers: dict[str, str], body: bytes, *, secret: str
) -> str:
    """Test double of S3's signature check, written from the AWS General Reference ("Create a
    signed AWS API request") independently of botocore: the signature S3 expects for a request
    whose lower-cased ``headers`` carry its Authorization (S3 paths are encoded once, not
    normalized; no query string here)."""
    fields = dict(
        part.strip().split("=", 1) for part in headers["authorization"].split(" ", 1)[1].split(",")
    )
    _key, day, region, service, _terminator = fields["Credential"].split("/")
    names = fields["SignedHeaders"].split(";")
    payload_hash = hashlib.sha256(body).hexdigest()
    assert headers["x-amz-content-sha256"] == payload_hash
    canonical_request = "\n".join(
        [
            method,
            path or "/",
            "",
            "".join(f"{name}:{headers[name].strip()}\n" for name in names),
            ";".join(names),
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            headers.get("x-amz-date") or "",
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _example_headers(monkeypatch) -> dict[str, str]:
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: EXAMPLE_TIME)
    return state_store.signed_s3_headers(
        "GET",
        "https://examplebucket.s3.amazonaws.com/test.txt",
        b"",
        region="us-east-1",
        credentials=Credentials(EXAMPLE_ACCESS_KEY, EXAMPLE_SECRET),
        headers={"Range": "bytes=0-9"},
    )


def test_botocores_signer_reproduces_the_signature_of_aws_s3_example(monkeypatch):
    headers = _example_headers(monkeypatch)
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        f"SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature={EXAMPLE_SIGNATURE}"
    )
    assert headers["X-Amz-Date"] == "20130524T000000Z"


def test_the_verifying_double_accepts_aws_s3_example(monkeypatch):
    headers = {k.lower(): v for k, v in _example_headers(monkeypatch).items()}
    headers["host"] = "examplebucket.s3.amazonaws.com"
    assert (
        sigv4_signature_double("GET", "/test.txt", headers, b"", secret=EXAMPLE_SECRET)
        == EXAMPLE_SIGNATURE
    )


class _S3Double(BaseHTTPRequestHandler):
    """Test double of S3's conditional create on a directory (path-style URLs); like S3, it
    refuses a request whose SigV4 signature it does not compute itself."""

    root: Path
    refuse_with: int | None = None
    seen: list[dict[str, str]]

    def do_PUT(self) -> None:  # noqa: N802 - http.server's method name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.seen.append(headers)
        expected = sigv4_signature_double(
            "PUT", self.path, headers, body, secret=CREDENTIALS["secret_access_key"]
        )
        if not headers["authorization"].endswith(f"Signature={expected}"):
            self._answer(403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>")
            return
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
    signed = [h["authorization"].split("SignedHeaders=")[1].split(",")[0] for h in handler.seen]
    assert all("if-none-match" in names.split(";") for names in signed)


def test_the_host_s_python_3_9_stores_once_and_then_exits_3(s3, tmp_path):
    """As host_bootstrap.sh runs it: ``python3 -E -s -m`` from the bundle's source directory."""
    handler, endpoint = s3
    args = ["--bucket", BUCKET, "--key", KEY, "--region", REGION, "--endpoint-url", endpoint]
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")} | {"PATH": "/usr/bin:/bin"}
    codes = []
    for host in ("first", "second"):
        state = tmp_path / f"{host}.json"
        state.write_text(f'{{"host": "{host}"}}')
        done = subprocess.run(
            [host_python(), "-E", "-s", "-m", "cdk_trn_runtime.vault.state_store", *args,
             "--file", str(state)],
            cwd=REPO, env=env, capture_output=True, text=True,
        )  # fmt: skip
        codes.append(done.returncode)
    assert codes == [state_store.EXIT_STORED, state_store.EXIT_EXISTS], done.stderr
    assert (handler.root / BUCKET / KEY).read_text() == '{"host": "first"}'


def test_a_signature_s3_does_not_accept_exits_1(s3, tmp_path, monkeypatch, capsys):
    handler, endpoint = s3
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-s3-knows")
    state = tmp_path / "state.json"
    state.write_text("{}")
    assert _store(endpoint, state) == state_store.EXIT_FAILED
    assert "HTTP 403: <Error><Code>SignatureDoesNotMatch" in capsys.readouterr().err
    assert not (handler.root / BUCKET / KEY).exists()


def test_no_credentials_at_all_exits_1_naming_the_cause(s3, tmp_path, monkeypatch, capsys):
    _handler, endpoint = s3
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    state = tmp_path / "state.json"
    state.write_text("{}")
    assert _store(endpoint, state) == state_store.EXIT_FAILED
    assert "no AWS credentials" in capsys.readouterr().err


def test_any_other_refusal_exits_1_with_the_status(s3, tmp_path, capsys):
    handler, endpoint = s3
    handler.refuse_with = 403
    state = tmp_path / "state.json"
    state.write_text("{}")
    assert _store(endpoint, state) == state_store.EXIT_FAILED
    assert "HTTP 403" in capsys.readouterr().err
    assert not (handler.root / BUCKET / KEY).exists()
