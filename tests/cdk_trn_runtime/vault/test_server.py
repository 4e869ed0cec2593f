"""The parent-side server: IAM caller proofs, limits, JSON errors that never stop it."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import json
import socket
import time

import pytest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cdk_trn_runtime.vault.admission import ParentLimits, RateLimiter
from cdk_trn_runtime.vault.caller_proof import CallerVerifier, ProofError
from cdk_trn_runtime.vault.client import VaultClient, VaultError, build_caller_proof
from cdk_trn_runtime.vault.enclave_client import EnclaveClient, EnclaveError
from cdk_trn_runtime.vault.key_state import KeyStateFile
from cdk_trn_runtime.vault.protocol import sts_url_for_region
from tests.support.enclave_doubles import StsTestDouble
from tests.support.enclave_harness import (
    HOST_CREDENTIALS,
    KEY_ID,
    NODE_KEY,
    NODE_ROLE_ARN,
    NODE_SESSION_ARN,
    OTHER_KEY,
    REGION,
    start_vault,
    stop_vault,
)
from tests.support.waiting import until

DIGEST = hashlib.sha384(b"a manifest").hexdigest()
STS_URL = sts_url_for_region(REGION)


def _proof(*, key=NODE_KEY, server_id="vault-test-1", digest=DIGEST, url=STS_URL, region=REGION):
    return build_caller_proof(
        sts_url=url,
        region=region,
        server_id=server_id,
        request_digest=digest,
        credentials=Credentials(*key),
    )


@pytest.fixture
def sts() -> StsTestDouble:
    return StsTestDouble(
        {
            NODE_KEY[0]: (NODE_KEY[1], NODE_SESSION_ARN),
            OTHER_KEY[0]: (
                OTHER_KEY[1],
                "arn:aws:sts::111122223333:assumed-role/SomeOtherRole/i-0eeeeffff00001111",
            ),
        },
        region=REGION,
    )


@pytest.fixture
def verifier(sts) -> CallerVerifier:
    return CallerVerifier(
        sts_url=STS_URL, allowed_role_arns=[NODE_ROLE_ARN], server_id="vault-test-1", transport=sts
    )


# --- caller proofs ---------------------------------------------------------------------------


def test_proof_signed_by_the_node_role_is_accepted(verifier, sts):
    caller = verifier.verify(_proof(), request_digest=DIGEST)
    assert (caller.arn, caller.role_name) == (NODE_SESSION_ARN, "TrainiumNodeRole")
    # The server forwarded to the pinned STS endpoint and asked for JSON.
    method, url, headers, body = sts.requests[-1]
    assert (method, url, headers["accept"]) == ("POST", STS_URL, "application/json")


def test_proof_from_another_role_is_forbidden(verifier):
    with pytest.raises(ProofError, match="SomeOtherRole") as caught:
        verifier.verify(_proof(key=OTHER_KEY), request_digest=DIGEST)
    assert caught.value.status == 403


def test_proof_with_a_wrong_secret_is_rejected_by_sts(verifier):
    with pytest.raises(ProofError, match="STS rejected") as caught:
        verifier.verify(_proof(key=(NODE_KEY[0], "guessed")), request_digest=DIGEST)
    assert caught.value.status == 401


@pytest.mark.parametrize(
    "url",
    [
        "https://sts.us-east-2.amazonaws.com.evil.example/",
        "https://evil.example/?x=sts.us-east-2.amazonaws.com",
        "http://sts.us-east-2.amazonaws.com/",
        "https://sts.us-east-2.amazonaws.com:8443/",
        "https://sts.us-east-2.amazonaws.com/other",
        "https://user@sts.us-east-2.amazonaws.com/",
        "https://sts.amazonaws.com/",
    ],
)
def test_proof_for_any_other_url_is_rejected_before_forwarding(verifier, sts, url):
    proof = _proof()
    proof["url"] = url
    with pytest.raises(ProofError, match="auth url"):
        verifier.verify(proof, request_digest=DIGEST)
    assert sts.requests == []


@pytest.mark.parametrize(
    "body",
    [
        "Action=GetCallerIdentity&Version=2011-06-15&Action=AssumeRole",
        "Action=AssumeRole&Version=2011-06-15",
        "",
        "Action=GetCallerIdentity",
    ],
)
def test_proof_for_any_other_action_is_rejected(verifier, body):
    proof = _proof()
    proof["body"] = body
    with pytest.raises(ProofError, match="body"):
        verifier.verify(proof, request_digest=DIGEST)


def test_proof_with_get_method_is_rejected(verifier):
    proof = _proof()
    proof["method"] = "GET"
    with pytest.raises(ProofError, match="POST"):
        verifier.verify(proof, request_digest=DIGEST)


def test_proof_bound_to_another_server_is_rejected(verifier):
    with pytest.raises(ProofError, match="another server"):
        verifier.verify(_proof(server_id="vault-elsewhere"), request_digest=DIGEST)


def test_proof_bound_to_another_digest_is_rejected(verifier):
    other = hashlib.sha384(b"another manifest").hexdigest()
    with pytest.raises(ProofError, match="another digest"):
        verifier.verify(_proof(digest=other), request_digest=DIGEST)


def test_proof_with_edited_binding_header_fails_at_sts(verifier):
    proof = _proof(digest=hashlib.sha384(b"x").hexdigest())
    proof["headers"]["X-Cdk-Trn-Request-Digest"] = DIGEST
    with pytest.raises(ProofError, match="STS rejected"):
        verifier.verify(proof, request_digest=DIGEST)


def test_captured_proof_cannot_be_rebound_by_a_second_spelling_of_a_header(verifier):
    # The attack: keep the signed headers, add lower-case twins naming another digest/server.
    other = hashlib.sha384(b"a manifest the node never asked for").hexdigest()
    proof = _proof(digest=other, server_id="vault-elsewhere")
    proof["headers"] = {
        "x-cdk-trn-request-digest": DIGEST,
        "x-cdk-trn-server-id": "vault-test-1",
        **proof["headers"],
    }
    with pytest.raises(ProofError, match="repeats the header"):
        verifier.verify(proof, request_digest=DIGEST)


def test_stale_proof_is_rejected(sts):
    late = CallerVerifier(
        sts_url=STS_URL,
        allowed_role_arns=[NODE_ROLE_ARN],
        server_id="vault-test-1",
        transport=sts,
        clock=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(minutes=6),
    )
    with pytest.raises(ProofError, match="5 minutes"):
        late.verify(_proof(), request_digest=DIGEST)


@pytest.mark.parametrize(
    "proof",
    [
        None,
        "token",
        {"method": "POST"},
        {"method": "POST", "url": STS_URL, "body": "", "headers": []},
    ],
)
def test_malformed_proofs_are_rejected(verifier, proof):
    with pytest.raises(ProofError):
        verifier.verify(proof, request_digest=DIGEST)


def test_unsigned_proof_is_rejected(verifier):
    proof = _proof()
    del proof["headers"]["Authorization"]
    with pytest.raises(ProofError, match="SigV4"):
        verifier.verify(proof, request_digest=DIGEST)


def test_allowed_roles_must_be_iam_role_arns(sts):
    with pytest.raises(ValueError, match="IAM role ARN"):
        CallerVerifier(
            sts_url=STS_URL, allowed_role_arns=["TrainiumNodeRole"], server_id="x", transport=sts
        )


def test_rate_limiter_refills_over_time():
    now = [0.0]
    limiter = RateLimiter(rate_per_second=1.0, burst=2, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("b")
    now[0] = 1.0
    assert limiter.allow("a") and not limiter.allow("a")


# --- the HTTP server -------------------------------------------------------------------------


def _raw_exchange(url: str, payload: bytes) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def _connections(running) -> int:
    """The connections the vault's server holds a slot for."""
    return running.server._active


def _read_refusal(url: str, source: str = "127.0.0.1") -> tuple[int, dict]:
    """Connect and read what the server says without sending anything: a server that refuses
    before reading answers at once, and a client that sent nothing gets no reset that could
    discard that answer (data left unread in the server's buffer turns its close into a RST)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0)) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _post(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _healthy(url: str) -> bool:
    return VaultClient(url)._request("GET", "/v1/health") == {"status": "ok"}


@pytest.mark.parametrize(
    "payload, status, code",
    [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, "request-uri_too_long"),
        (b"BREW /v1/sign HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented"),
        (b"POST /v1/sign HTTP/1.1\r\nHost: x\r\n\r\n", 411, "length_required"),
        (b"POST /v1/sign HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413, "too_large"),
        (b"POST /v1/sign HTTP/1.1\r\nContent-Length: nine\r\n\r\n", 400, "bad_request"),
        (b"POST /v1/sign HTTP/1.1\r\nContent-Length: 5\r\n\r\n{nope", 400, "bad_json"),
        (b"POST /v1/sign HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]", 400, "bad_request"),
        (
            b'POST /v1/sign HTTP/1.1\r\nContent-Length: 20\r\n\r\n{"digest": "abc"}   ',
            400,
            "bad_request",
        ),
        (b"GET /v1/secrets HTTP/1.1\r\n\r\n", 404, "not_found"),
    ],
)
def test_malformed_and_oversized_requests_get_json_errors_and_the_server_keeps_serving(
    vault, payload, status, code
):
    got_status, body = _raw_exchange(vault.url, payload)
    assert got_status == status
    assert body["error"]["code"] == code and body["error"]["message"]
    assert _healthy(vault.url)


def test_sign_without_proof_is_unauthenticated(vault):
    status, body = _post(vault.url, "/v1/sign", json.dumps({"digest": DIGEST}).encode())
    assert (status, body["error"]["code"]) == (401, "unauthenticated")


def test_sign_with_another_roles_proof_is_forbidden(vault):
    payload = {"digest": DIGEST, "auth": _proof(key=OTHER_KEY)}
    status, body = _post(vault.url, "/v1/sign", json.dumps(payload).encode())
    assert (status, body["error"]["code"]) == (403, "forbidden")


def test_sign_with_the_node_roles_proof_returns_a_signature(vault):
    payload = {"digest": DIGEST, "auth": _proof()}
    status, body = _post(vault.url, "/v1/sign", json.dumps(payload).encode())
    assert status == 200
    assert body["caller"] == NODE_SESSION_ARN and body["algorithm"] == "ECDSA_P384_SHA384"


def test_info_names_the_server_the_sts_endpoint_and_the_key(vault):
    info = VaultClient(vault.url).info()
    assert info["server_id"] == "vault-test-1" and info["sts_url"] == STS_URL
    assert len(info["key_sha256"]) == 64


def test_requests_beyond_the_rate_limit_get_429_and_later_ones_are_served(pki, tmp_path):
    running = start_vault(pki, tmp_path, limits=ParentLimits(rate_per_second=0.001, burst=3))
    try:
        statuses = []
        for _ in range(5):
            try:
                VaultClient(running.url)._request("GET", "/v1/health")
                statuses.append(200)
            except VaultError as exc:
                statuses.append(exc.status)
                assert exc.code == "rate_limited"
        assert statuses == [200, 200, 200, 429, 429]
        running.server.rate_limiter = RateLimiter(100.0, 10)
        assert _healthy(running.url)
    finally:
        stop_vault(running)


def test_silent_client_is_cut_off_and_does_not_block_others(pki, tmp_path):
    running = start_vault(pki, tmp_path, limits=ParentLimits(socket_timeout=0.5))
    try:
        host, port = running.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as idle:
            idle.sendall(b"POST /v1/sign HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
            assert _healthy(running.url)
            idle.settimeout(5)
            answer = b""
            while chunk := idle.recv(4096):  # answered, then closed, after the server's timeout
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 408") and b"request_timeout" in answer
    finally:
        stop_vault(running)


def test_connections_beyond_the_cap_get_503(pki, tmp_path):
    running = start_vault(pki, tmp_path, limits=ParentLimits(max_connections=1, socket_timeout=5))
    try:
        host, port = running.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as holder:
            holder.sendall(b"GET /v1/health HTTP/1.1\r\n")  # unfinished: holds the one slot
            until("the holder holds the one slot", lambda: _connections(running) == 1)
            status, body = _read_refusal(running.url)
            assert (status, body["error"]["code"]) == (503, "busy")
        # Once the holder hangs up its slot frees; allow the server thread time to notice.
        deadline = time.monotonic() + 10
        while True:
            try:
                assert _healthy(running.url)
                break
            except VaultError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        stop_vault(running)


def test_calls_from_outside_the_allowed_networks_are_forbidden(pki, tmp_path):
    running = start_vault(pki, tmp_path, limits=ParentLimits(allowed_networks=("10.0.0.0/16",)))
    try:
        with pytest.raises(VaultError) as caught:
            VaultClient(running.url).info()
        assert (caught.value.status, caught.value.code) == (403, "forbidden")
    finally:
        stop_vault(running)


# --- start-up: the enclave's key must be the stored key --------------------------------------


def _public_key_der() -> bytes:
    return (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _stored_key(public_der: bytes) -> dict[str, str]:
    return {
        "key_id": KEY_ID,
        "encrypted_private_key": base64.b64encode(b"kms ciphertext").decode(),
        "public_key": base64.b64encode(public_der).decode(),
    }


class KeptKeyEnclaveDouble:
    """An enclave that already holds a key in memory: init answers with it, created=False."""

    def __init__(self, public_der: bytes) -> None:
        self.public_der = public_der
        self.requests: list[dict] = []

    def request(self, message: dict, *, timeout: float = 30.0) -> dict:
        self.requests.append(message)
        return {
            "ok": True,
            "public_key": base64.b64encode(self.public_der).decode(),
            "key_sha256": hashlib.sha256(self.public_der).hexdigest(),
            "stored_key": _stored_key(self.public_der),
            "created": False,
        }


def _client(enclave: KeptKeyEnclaveDouble, state: KeyStateFile) -> EnclaveClient:
    return EnclaveClient(
        enclave, key_id=KEY_ID, region=REGION, state=state, credentials=lambda: HOST_CREDENTIALS
    )


def test_initialise_refuses_an_enclave_holding_a_key_other_than_the_stored_one(tmp_path):
    state = KeyStateFile(tmp_path / "signing-key.json")
    stored = _stored_key(_public_key_der())
    state.save(stored)
    enclave = KeptKeyEnclaveDouble(_public_key_der())
    with pytest.raises(EnclaveError, match="restart the enclave") as excinfo:
        _client(enclave, state).initialise()
    assert excinfo.value.code == "key_mismatch"
    assert enclave.requests[0]["stored_key"] == stored
    assert state.load() == stored


def test_initialise_accepts_an_enclave_holding_the_stored_key(tmp_path):
    public_der = _public_key_der()
    state = KeyStateFile(tmp_path / "signing-key.json")
    state.save(_stored_key(public_der))
    reply = _client(KeptKeyEnclaveDouble(public_der), state).initialise()
    assert reply["key_sha256"] == hashlib.sha256(public_der).hexdigest()
    assert state.load() == _stored_key(public_der)


# --- findings of the security review, each reproduced -----------------------------------------


class SlowClient:
    """A slowloris connection: sends a request header one byte per ``pause`` seconds."""

    def __init__(self, url: str, *, source: str = "127.0.0.1") -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection(
            (host, int(port)), timeout=10, source_address=(source, 0)
        )
        self.request = b"GET /v1/health HTTP/1.1\r\nX-Padding: " + b"a" * 10000

    def trickle(self, index: int) -> bool:
        try:
            self.sock.sendall(self.request[index : index + 1])
            return True
        except OSError:
            return False

    def answer(self) -> bytes:
        self.sock.settimeout(5)
        data = b""
        try:
            while chunk := self.sock.recv(4096):
                data += chunk
        except OSError:
            pass
        return data

    def close(self) -> None:
        self.sock.close()


def _health_from(url: str, source: str) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0)) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_slow_connections_are_cut_off_by_the_wall_clock_deadline(pki, tmp_path):
    # Finding: 32 connections sending one header byte every 5 s held every slot indefinitely
    # (each byte reset the per-read socket timeout). Here: every slot is held by a trickling
    # client whose pace (0.2 s) stays well inside the per-read timeout (3 s); the deadline (2 s)
    # still frees all of them.
    limits = ParentLimits(
        max_connections=8,
        max_connections_per_address=8,
        socket_timeout=3.0,
        request_deadline=2.0,
        rate_per_second=1000,
        burst=1000,
    )
    running = start_vault(pki, tmp_path, limits=limits)
    slow = [SlowClient(running.url) for _ in range(8)]
    try:
        for client in slow:
            client.trickle(0)
        until("every slot held", lambda: _connections(running) == 8)
        status, body = _read_refusal(running.url, "127.0.0.2")
        assert (status, body["error"]["code"]) == (503, "busy")  # every slot is held...
        started = time.monotonic()
        index = 1
        while time.monotonic() - started < 2.5:
            for client in slow:
                client.trickle(index)
            index += 1
            time.sleep(0.2)
        # ...until the deadline: each slow client got a 408 and its slot back.
        for client in slow:
            answer = client.answer()
            assert answer.startswith(b"HTTP/1.0 408") and b"request_timeout" in answer
        assert _health_from(running.url, "127.0.0.2") == (200, {"status": "ok"})
    finally:
        for client in slow:
            client.close()
        stop_vault(running)


def test_one_address_cannot_take_every_connection_slot(pki, tmp_path):
    limits = ParentLimits(
        max_connections=32,
        max_connections_per_address=4,
        request_deadline=30.0,
        rate_per_second=1000,
        burst=1000,
    )
    running = start_vault(pki, tmp_path, limits=limits)
    slow = [SlowClient(running.url) for _ in range(32)]
    try:
        for client in slow[:4]:
            client.trickle(0)  # the four this address may hold
        until("the four slots held", lambda: _connections(running) == 4)
        # The rest send nothing: their answer comes from the count alone, and a client that sent
        # nothing gets no reset that could discard it.
        refused = [c for c in slow[4:] if c.answer().startswith(b"HTTP/1.0 503")]
        assert len(refused) == 28  # refused at once, before any parsing
        # Another address is served although 4 connections are still trickling.
        assert _health_from(running.url, "127.0.0.2") == (200, {"status": "ok"})
        assert _read_refusal(running.url, "127.0.0.1")[0] == 503
    finally:
        for client in slow:
            client.close()
        stop_vault(running)


def test_the_request_line_and_headers_have_a_short_deadline_of_their_own(pki, tmp_path):
    """A slow client is cut off after header_deadline, long before request_deadline."""
    limits = ParentLimits(
        header_deadline=1.0, request_deadline=30.0, rate_per_second=1000, burst=1000
    )
    running = start_vault(pki, tmp_path, limits=limits)
    client = SlowClient(running.url)
    try:
        client.trickle(0)
        answer = client.answer()  # waits at most 5 s: the header deadline, not the request's
        assert answer.startswith(b"HTTP/1.0 408") and b"within 1 seconds" in answer
    finally:
        client.close()
        stop_vault(running)


def test_slots_are_sized_so_every_client_node_has_its_share():
    """Eight nodes with four slow connections each used to hold all 32 slots."""
    assert ParentLimits.for_clients(8).max_connections == 4 * 8 + ParentLimits.RESERVE
    assert ParentLimits.for_clients(64).max_connections == 4 * 64 + ParentLimits.RESERVE
    assert ParentLimits.for_clients(0).max_connections == ParentLimits().max_connections


def test_network_check_answers_before_reading_the_request(pki, tmp_path):
    running = start_vault(pki, tmp_path, limits=ParentLimits(allowed_networks=("10.0.0.0/16",)))
    try:
        host, port = running.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            # Not a byte sent: the answer comes from the address alone.
            data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.0 403") and b'"forbidden"' in data
    finally:
        stop_vault(running)


@pytest.mark.parametrize("name", ["Host ", "Content-Length ", "Host\t", "X-Forwarded-For"])
def test_headers_outside_the_allowlist_never_reach_sts(verifier, sts, name):
    # Finding: a name with a trailing space passed the filter and went to STS next to urllib's
    # own Host and Content-Length.
    proof = _proof()
    proof["headers"][name] = "evil.example"
    with pytest.raises(ProofError, match="auth header") as caught:
        verifier.verify(proof, request_digest=DIGEST)
    assert caught.value.status == 401
    assert sts.requests == []


def test_only_allowlisted_headers_are_forwarded(verifier, sts):
    verifier.verify(_proof(), request_digest=DIGEST)
    forwarded = set(sts.requests[-1][2])
    assert forwarded <= {
        "accept",
        "authorization",
        "content-type",
        "x-amz-date",
        "x-amz-security-token",
        "x-cdk-trn-server-id",
        "x-cdk-trn-request-digest",
    }
    assert "host" not in forwarded and "content-length" not in forwarded


def _with_authorization(edit) -> dict:
    proof = _proof()
    proof["headers"]["Authorization"] = edit(proof["headers"]["Authorization"])
    return proof


@pytest.mark.parametrize(
    "edit, message",
    [
        # Finding: SignedHeaders= was taken from its first match; a second one is now refused.
        (
            lambda a: a.replace(
                "SignedHeaders=", "SignedHeaders=host;x-amz-date, SignedHeaders=", 1
            ),
            "repeats SignedHeaders",
        ),
        (lambda a: a + ", Signature=" + "0" * 64, "repeats Signature"),
        (
            lambda a: a.replace(
                "Credential=",
                "Credential=AKIAX/20260101/us-east-2/sts/aws4_request, Credential=",
                1,
            ),
            "repeats Credential",
        ),
        (lambda a: a.replace("/sts/", "/iam/"), "service 'iam'"),
        (lambda a: a.replace(f"/{REGION}/", "/eu-west-1/"), "region 'eu-west-1'"),
        (lambda a: a.split(", Signature=")[0], "lacks Signature"),
        (lambda a: a + ", Extra=1", "unexpected component"),
        (
            lambda a: a.replace(
                "SignedHeaders=content-type;host", "SignedHeaders=host;content-type"
            ),
            "sorted",
        ),
        (lambda a: a.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"), "SigV4"),
    ],
)
def test_authorization_header_is_parsed_strictly(verifier, sts, edit, message):
    with pytest.raises(ProofError, match=message):
        verifier.verify(_with_authorization(edit), request_digest=DIGEST)
    assert sts.requests == []


def test_proof_signing_a_header_it_does_not_carry_is_rejected(verifier):
    proof = _proof()
    del proof["headers"]["Content-Type"]
    with pytest.raises(ProofError, match="does not carry"):
        verifier.verify(proof, request_digest=DIGEST)


@pytest.mark.parametrize("url", ["https://[::1/", "https://sts.us-east-2.amazonaws.com:99999/"])
def test_unparseable_proof_url_is_a_clean_client_error(vault, url):
    # Finding: "https://[::1/" raised ValueError in urlsplit and gave a 500 with a traceback.
    proof = _proof()
    proof["url"] = url
    status, body = _post(
        vault.url, "/v1/sign", json.dumps({"digest": DIGEST, "auth": proof}).encode()
    )
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert "not a URL" in body["error"]["message"]
    assert _healthy(vault.url)


def test_deeply_nested_request_body_is_a_clean_client_error(vault):
    status, body = _post(vault.url, "/v1/sign", b"[" * 30000)
    assert (status, body["error"]["code"]) == (400, "bad_json")
    assert _healthy(vault.url)


OTHER_KEY_ID = "arn:aws:kms:us-east-2:444455556666:key/99999999-aaaa-bbbb-cccc-dddddddddddd"


def test_parent_refuses_key_state_naming_another_kms_key(tmp_path):
    # Finding (key substitution): a planted state file naming the attacker's key was loaded.
    public_der = _public_key_der()
    state = KeyStateFile(tmp_path / "signing-key.json")
    planted = dict(_stored_key(public_der), key_id=OTHER_KEY_ID)
    state.save(planted)
    enclave = KeptKeyEnclaveDouble(public_der)
    with pytest.raises(EnclaveError, match="configured for") as caught:
        _client(enclave, state).initialise()
    assert caught.value.code == "key_mismatch"
    assert enclave.requests == []  # never sent to the enclave
    assert state.load() == planted


class OtherKeyEnclaveDouble(KeptKeyEnclaveDouble):
    """An enclave (or something on its port) answering with key state under another KMS key."""

    def request(self, message: dict, *, timeout: float = 30.0) -> dict:
        reply = super().request(message, timeout=timeout)
        return {
            **reply,
            "stored_key": {**reply["stored_key"], "key_id": OTHER_KEY_ID},
            "created": True,
        }


def test_parent_refuses_to_store_state_under_another_kms_key(tmp_path):
    state = KeyStateFile(tmp_path / "signing-key.json")
    with pytest.raises(EnclaveError, match="enclave's key state") as caught:
        _client(OtherKeyEnclaveDouble(_public_key_der()), state).initialise()
    assert caught.value.code == "key_mismatch"
    assert state.load() is None
