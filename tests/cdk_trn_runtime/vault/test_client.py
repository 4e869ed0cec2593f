"""The vault client turns every malformed answer and every credential failure into VaultError,
so that a caller catching VaultError (the signing hook) sees all of them: a loopback HTTP server
answers what a broken or wrong vault could."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import botocore.session
import pytest
from botocore.credentials import Credentials
from botocore.exceptions import CredentialRetrievalError

from cdk_trn_runtime.vault.client import VaultClient, VaultError
from tests.support.servers import serving

INFO = {
    "server_id": "vault-1",
    "sts_url": "https://sts.us-east-2.amazonaws.com/",
    "region": "us-east-2",
    "public_key": "AAAA",
}


class AnswersTestDouble(BaseHTTPRequestHandler):
    """Answers each path with the (status, body) the test put in ``server.answers``."""

    def _answer(self) -> None:
        status, body = self.server.answers[self.path.split("?")[0]]  # type: ignore[attr-defined]
        self.server.seen.append(self.path)  # type: ignore[attr-defined]
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer  # noqa: N815 - stdlib naming

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), AnswersTestDouble)
    httpd.answers = {}  # type: ignore[attr-defined]
    httpd.seen = []  # type: ignore[attr-defined]
    with serving(httpd):
        yield httpd


def _client(httpd: ThreadingHTTPServer, credentials=None) -> VaultClient:
    host, port = httpd.server_address[:2]
    return VaultClient(
        f"http://{host}:{port}", credentials=credentials or Credentials("AKIATEST", "s"), timeout=5
    )


@pytest.mark.parametrize(
    "body",
    [b"<html>proxy login</html>", b"\xff\xfe not utf-8", b"[1, 2]", b'"a string"'],
    ids=["html", "undecodable", "list", "string"],
)
def test_a_200_without_a_json_object_is_a_vault_error(server, body):
    server.answers["/v1/info"] = (200, body)
    with pytest.raises(VaultError) as caught:
        _client(server).info()
    assert caught.value.code == "bad_response" and caught.value.status == 200


def test_info_without_the_sts_url_is_a_vault_error_not_a_key_error(server):
    server.answers["/v1/info"] = (200, {k: v for k, v in INFO.items() if k != "sts_url"})
    with pytest.raises(VaultError, match="lacks 'sts_url'") as caught:
        _client(server).sign_digest(bytes(48))
    assert caught.value.code == "bad_response"
    assert server.seen == ["/v1/info"]  # nothing was sent to /v1/sign


def test_a_sign_answer_that_is_not_json_is_a_vault_error(server):
    server.answers["/v1/info"] = (200, INFO)
    server.answers["/v1/sign"] = (200, b"Service Unavailable")
    with pytest.raises(VaultError, match="answered no JSON"):
        _client(server).sign_digest(bytes(48))


def test_node_credentials_that_cannot_be_retrieved_are_a_vault_error(server, monkeypatch):
    def refuse(self):
        raise CredentialRetrievalError(provider="iam-role", error_msg="IMDS timed out")

    monkeypatch.setattr(botocore.session.Session, "get_credentials", refuse)
    server.answers["/v1/info"] = (200, INFO)
    host, port = server.server_address[:2]
    with pytest.raises(VaultError, match="IMDS timed out") as caught:
        VaultClient(f"http://{host}:{port}", timeout=5).sign_digest(bytes(48))
    assert caught.value.code == "no_credentials"


def test_an_http_error_keeps_the_servers_code(server):
    server.answers["/v1/info"] = (
        503,
        {"error": {"code": "enclave_unavailable", "message": "enclave down"}},
    )
    with pytest.raises(VaultError, match="enclave down") as caught:
        _client(server).info()
    assert (caught.value.status, caught.value.code) == (503, "enclave_unavailable")


def test_the_signing_hook_survives_a_vault_answering_no_json(server, tmp_path):
    from cdk_trn_runtime.provenance.signing import CheckpointSigner, VaultLocator
    from cdk_trn_runtime.train import checkpoint

    server.answers["/v1/info"] = (200, b"<html>captive portal</html>")
    host, port = server.server_address[:2]
    lines: list[str] = []
    signer = CheckpointSigner(
        locator=VaultLocator(url=f"http://{host}:{port}"),
        cluster="trn-test",
        run_id="1",
        make_signer=lambda url: _client(server),
        log=lines.append,
    )
    path = checkpoint.save(tmp_path, 5, lambda handle: handle.write(b"five"))

    assert signer.after_commit(path, signer.manifest_of(path, path)) == []

    assert checkpoint.latest(tmp_path) == path
    assert any("answered no JSON" in line and "retried" in line for line in lines), lines
