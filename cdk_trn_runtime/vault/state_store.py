"""Store the vault's key state in S3 only if no host stored one first (standard library only).

Why not ``aws s3api put-object --if-none-match '*'``: S3's conditional create reached the AWS CLI in
August 2024 and AL2023's ``awscli-2`` package lags months behind (aws-cli issue 8863; FACTS.md
"First-deploy traps"), so the option may be unknown on the host. A ``head-object`` before an
unconditional put is not a substitute: two hosts that boot together both see 404 and the second
put silently replaces the first key, leaving hosts that sign with different keys. The host has no
boto3 either (a bare ``python3.11``; the parent server is standard library only), so this module
sends the one conditional PUT itself: SigV4-signed with the host role's credentials from IMDSv2,
``If-None-Match: *``, so S3 decides atomically which host wins (HTTP 412 for the others).

    python3.11 -m cdk_trn_runtime.vault.state_store --bucket B --key K --file F --region R

Exit status: 0 stored, 3 an object already exists (another host won), 1 any other failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

from cdk_trn_runtime.vault.server import _host_credentials

EXIT_STORED = 0
EXIT_FAILED = 1
EXIT_EXISTS = 3
_ALGORITHM = "AWS4-HMAC-SHA256"


class StateStoreError(Exception):
    """S3 refused the write for a reason other than an existing object."""


def s3_object_url(bucket: str, key: str, region: str) -> str:
    """The regional virtual-hosted URL (reached through the VPC's S3 gateway endpoint)."""
    return f"https://{bucket}.s3.{region}.amazonaws.com/{urllib.parse.quote(key, safe='/~')}"


def signed_put_headers(
    url: str,
    body: bytes,
    *,
    region: str,
    credentials: Mapping[str, str],
    headers: Mapping[str, str],
    now: dt.datetime,
) -> dict[str, str]:
    """``headers`` plus the SigV4 headers for an S3 PUT of ``body`` to ``url`` (AWS General
    Reference, "Create a signed AWS API request"; S3 paths are encoded once, not normalized)."""
    parts = urllib.parse.urlsplit(url)
    amz_date = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    all_headers = {
        **{k.lower(): v.strip() for k, v in headers.items()},
        "host": parts.netloc,
        "x-amz-content-sha256": payload_hash,
        "x-amz-date": amz_date,
    }
    if credentials.get("session_token"):
        all_headers["x-amz-security-token"] = credentials["session_token"]
    names = sorted(all_headers)
    canonical_request = "\n".join(
        [
            "PUT",
            parts.path or "/",
            parts.query,
            "".join(f"{name}:{all_headers[name]}\n" for name in names),
            ";".join(names),
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    string_to_sign = "\n".join(
        [_ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = ("AWS4" + credentials["secret_access_key"]).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = (
        f"{_ALGORITHM} Credential={credentials['access_key_id']}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return {**{k: all_headers[k] for k in names if k != "host"}, "authorization": authorization}


def put_if_absent(
    url: str,
    body: bytes,
    *,
    region: str,
    credentials: Mapping[str, str],
    timeout: float = 30.0,
) -> bool:
    """PUT ``body`` unless an object exists: True if stored, False if another one was there."""
    headers = signed_put_headers(
        url,
        body,
        region=region,
        credentials=credentials,
        headers={"If-None-Match": "*", "Content-Type": "application/json"},
        now=dt.datetime.now(dt.UTC),
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


def _credentials() -> Mapping[str, str]:
    """The host role's credentials (IMDSv2); the AWS_* variables first, as the AWS CLI does."""
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return {
            "access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "session_token": os.environ.get("AWS_SESSION_TOKEN", ""),
        }
    return _host_credentials()


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
    except (StateStoreError, OSError, RuntimeError, KeyError) as error:
        print(f"cannot store s3://{args.bucket}/{args.key}: {error}", file=sys.stderr)
        return EXIT_FAILED
    if not stored:
        print(f"s3://{args.bucket}/{args.key} exists (PreconditionFailed)", file=sys.stderr)
        return EXIT_EXISTS
    return EXIT_STORED


if __name__ == "__main__":
    sys.exit(main())
