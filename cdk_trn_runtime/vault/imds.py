"""The host role's temporary credentials from the instance metadata service (IMDSv2), which the
vault host hands the enclave for its KMS calls. Standard library only."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping

__all__ = ["host_credentials"]

_IMDS = "http://169.254.169.254/latest"


def host_credentials(timeout: float = 2.0) -> Mapping[str, str]:
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
