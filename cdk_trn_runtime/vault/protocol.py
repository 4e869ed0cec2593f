"""What the vault's parent server and its node-side client agree on: the proof headers, the
STS request body and endpoint. Standard library only."""

from __future__ import annotations

__all__ = ["DIGEST_HEADER", "SERVER_ID_HEADER", "STS_BODY", "sts_url_for_region"]

SERVER_ID_HEADER = "X-Cdk-Trn-Server-Id"
DIGEST_HEADER = "X-Cdk-Trn-Request-Digest"
STS_BODY = "Action=GetCallerIdentity&Version=2011-06-15"


def sts_url_for_region(region: str) -> str:
    """The regional STS endpoint the proofs are signed for (``.com.cn`` in China regions)."""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://sts.{region}.{suffix}/"
