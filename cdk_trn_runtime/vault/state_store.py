"""Store the vault's key state in S3 only if no host stored one first.

Why not ``aws s3api put-object --if-none-match '*'``: S3's conditional create reached the AWS CLI in
August 2024 and AL2023's ``awscli-2`` package lags months behind (aws-cli issue 8863; FACTS.md
"First-deploy traps"), so the option may be unknown on the host. A ``head-object`` before an
unconditional put is not a substitute: two hosts that boot together both see 404 and the second
put silently replaces the first key, leaving hosts that sign with different keys. So this module
sends the one conditional PUT itself, ``If-None-Match: *``, so S3 decides atomically which host
wins (HTTP 412 for the others). botocore signs it (SigV4 for S3) with the credentials of its
provider chain (the AWS_* variables, then the host role from IMDSv2); the request goes out with
urllib, without a proxy, through the VPC's S3 gateway endpoint.

The host runs it with AL2023's system ``python3`` and the distribution's ``python3-botocore``
package (AL2023 builds Python module packages for the system Python only), so this module and
what it imports stay Python 3.9 compatible; the parent server stays standard library only on
python3.11.

    python3 -m cdk_trn_runtime.vault.state_store --bucket B --key K --file F --region R

Exit status: 0 stored, 3 an object already exists (another host won), 1 any other failure.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError
from botocore.session import get_session

EXIT_STORED = 0
EXIT_FAILED = 1
EXIT_EXISTS = 3


class StateStoreError(Exception):
    """S3 refused the write for a reason other than an existing object."""


def s3_object_url(bucket: str, key: str, region: str) -> str:
    """The regional virtual-hosted URL (reached through the VPC's S3 gateway endpoint)."""
    return f"https://{bucket}.s3.{region}.amazonaws.com/{urllib.parse.quote(key, safe='/~')}"


def signed_s3_headers(
    method: str,
    url: str,
    body: bytes,
    *,
    region: str,
    credentials: Any,
    headers: Mapping[str, str],
) -> dict[str, str]:
    """``headers`` plus botocore's SigV4 headers for an S3 request (``X-Amz-Date``,
    ``X-Amz-Content-SHA256``, ``X-Amz-Security-Token`` with a session, ``Authorization``).

    ``credentials`` is a botocore ``Credentials``. Host is signed from ``url`` and left out of
    the answer: urllib sends it from the same URL.
    """
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    S3SigV4Auth(credentials, "s3", region).add_auth(request)
    return {name: str(value) for name, value in request.headers.items() if name.lower() != "host"}


def put_if_absent(
    url: str,
    body: bytes,
    *,
    region: str,
    credentials: Any,
    timeout: float = 30.0,
) -> bool:
    """PUT ``body`` unless an object exists: True if stored, False if another one was there."""
    headers = signed_s3_headers(
        "PUT",
        url,
        body,
        region=region,
        credentials=credentials,
        headers={"If-None-Match": "*", "Content-Type": "application/json"},
    )
    request = urllib.request.Request(url, data=body, method="PUT", headers=headers)  # noqa: S310 - S3 URL from s3_object_url or --endpoint-url
    # No proxy: the host reaches S3 through the VPC's gateway endpoint.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout):
            return True
    except urllib.error.HTTPError as error:
        if error.code == 412:  # PreconditionFailed: the object exists
            return False
        detail = error.read(2048).decode(errors="replace")
        raise StateStoreError(f"S3 PUT {url} answered HTTP {error.code}: {detail}") from error


def _credentials() -> Any:
    """botocore's provider chain: the AWS_* variables first, then the host role (IMDSv2)."""
    credentials = get_session().get_credentials()
    if credentials is None:
        raise StateStoreError("no AWS credentials: neither AWS_* variables nor an instance role")
    return credentials


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="store the vault key state unless one exists")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument(
        "--endpoint-url", help="path-style S3 endpoint; default: the regional virtual-hosted URL"
    )
    args = parser.parse_args(argv)
    with open(args.file, "rb") as state:
        body = state.read()
    url = (
        f"{args.endpoint_url.rstrip('/')}/{args.bucket}/{urllib.parse.quote(args.key, safe='/~')}"
        if args.endpoint_url
        else s3_object_url(args.bucket, args.key, args.region)
    )
    try:
        stored = put_if_absent(url, body, region=args.region, credentials=_credentials())
    except (StateStoreError, BotoCoreError, OSError) as error:
        print(f"cannot store s3://{args.bucket}/{args.key}: {error}", file=sys.stderr)
        return EXIT_FAILED
    if not stored:
        print(f"s3://{args.bucket}/{args.key} exists (PreconditionFailed)", file=sys.stderr)
        return EXIT_EXISTS
    return EXIT_STORED


if __name__ == "__main__":
    sys.exit(main())
