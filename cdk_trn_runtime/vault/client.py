"""The node-side client of the enclave vault: proves the node's IAM role with a SigV4-signed
``sts:GetCallerIdentity`` request (never sent by the node) and asks for a signature over a digest.
Runs wherever botocore is installed with the node role's credentials (the training image)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from cdk_trn_runtime.vault.protocol import DIGEST_HEADER, SERVER_ID_HEADER, STS_BODY

__all__ = ["VaultClient", "VaultError", "build_caller_proof"]


def build_caller_proof(
    *,
    sts_url: str,
    region: str,
    server_id: str,
    request_digest: str,
    credentials: Any,
) -> dict[str, Any]:
    """A SigV4-signed ``GetCallerIdentity`` request, bound to a server and a digest.

    ``credentials`` is a botocore ``Credentials`` (e.g. ``boto3.Session().get_credentials()``,
    the node's instance-profile role). The request is signed, never sent by the node.
    """
    from botocore.auth import SigV4Auth  # noqa: PLC0415 - keeps the server import light
    from botocore.awsrequest import AWSRequest  # noqa: PLC0415

    request = AWSRequest(
        method="POST",
        url=sts_url,
        data=STS_BODY,
        headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            SERVER_ID_HEADER: server_id,
            DIGEST_HEADER: request_digest,
        },
    )
    SigV4Auth(credentials, "sts", region).add_auth(request)
    return {
        "method": "POST",
        "url": sts_url,
        "headers": {name: str(value) for name, value in request.headers.items()},
        "body": STS_BODY,
    }


class VaultError(Exception):
    """The vault refused or failed a request; ``code`` is the server's error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status = status
        self.code = code


class VaultClient:
    """Node-side client of :class:`ParentServer`: proves the node's IAM role and asks for a
    signature over a SHA-384 digest."""

    def __init__(self, base_url: str, *, credentials: Any = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._credentials = credentials
        self._timeout = timeout

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/v1/info")

    def attestation(self, nonce: bytes) -> dict[str, Any]:
        """``GET /v1/attestation``: the enclave's attestation document over ``nonce``, and the
        public key the vault says it signs with (unverified until checked against the document,
        see :func:`cdk_trn_runtime.enclave.vault_attestation.verify_vault_attestation`)."""
        query = urllib.parse.urlencode({"nonce": base64.b64encode(nonce).decode()})
        return self._request("GET", f"/v1/attestation?{query}")

    def sign_digest(self, digest: bytes) -> dict[str, Any]:
        """``POST /v1/sign``; :class:`VaultError` for every failure, a malformed ``/v1/info``
        and missing or unusable node credentials included."""
        info = self.info()
        digest_hex = digest.hex()
        try:
            sts_url, region, server_id = (
                str(info["sts_url"]),
                str(info["region"]),
                str(info["server_id"]),
            )
        except (KeyError, TypeError) as exc:
            raise VaultError(
                200, "bad_response", f"vault {self.base_url} /v1/info lacks {exc}"
            ) from exc
        from botocore.exceptions import BotoCoreError  # noqa: PLC0415

        try:
            proof = build_caller_proof(
                sts_url=sts_url,
                region=region,
                server_id=server_id,
                request_digest=digest_hex,
                credentials=self._resolve_credentials(),
            )
        except BotoCoreError as exc:
            raise VaultError(0, "no_credentials", f"cannot prove the node role: {exc}") from exc
        return self._request("POST", "/v1/sign", {"digest": digest_hex, "auth": proof})

    def _resolve_credentials(self) -> Any:
        if self._credentials is not None:
            return self._credentials
        import botocore.session  # noqa: PLC0415

        credentials = botocore.session.get_session().get_credentials()
        if credentials is None:
            raise VaultError(0, "no_credentials", "no AWS credentials found for the node role")
        return credentials

    def _request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the vault URL is operator configuration
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self._timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
                raise VaultError(exc.code, error["code"], error["message"]) from exc
            except (ValueError, KeyError, TypeError):
                raise VaultError(exc.code, "http_error", str(exc)) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise VaultError(0, "unreachable", f"vault {self.base_url} unreachable: {exc}") from exc
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise VaultError(
                status, "bad_response", f"vault {self.base_url}{path} answered no JSON: {exc}"
            ) from exc
        if not isinstance(answer, dict):
            raise VaultError(
                status,
                "bad_response",
                f"vault {self.base_url}{path} answered a {type(answer).__name__}, not an object",
            )
        return answer
