"""What keeps the vault's state: its storage key (state bucket, EIF build and their logs) and the
versioned state bucket holding the signing key's KMS ciphertext (:data:`KEY_STATE_OBJECT`), with
its S3 server access logs."""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_trn._resources import (
    access_log_bucket,
    allow_cloudwatch_logs,
    deliver_access_logs,
    encrypted_bucket,
)
from cdk_trn.compliance import acknowledge_regulated
from cdk_trn.enclave.key_policy import account_key_policy

__all__ = ["KEY_STATE_OBJECT", "state_bucket", "storage_key"]

#: The parent server's key state (KMS ciphertext of the signing key + public key; nothing secret).
KEY_STATE_OBJECT = "signing-key/key-state.json"


def storage_key(
    scope: Construct, *, key_policy_roles: Sequence[str], removal_policy: cdk.RemovalPolicy
) -> kms.Key:
    """The vault's storage key, used through IAM like a default key except for policy changes."""
    key = kms.Key(
        scope,
        "StorageKey",
        description="cdk-trn enclave vault storage: state bucket, EIF build and its logs",
        enable_key_rotation=True,
        removal_policy=removal_policy,
        policy=iam.PolicyDocument(statements=account_key_policy(key_policy_roles)),
    )
    # CloudWatch Logs encrypts the build's log groups with this key.
    allow_cloudwatch_logs(key)
    return key


def state_bucket(
    scope: Construct,
    *,
    key: kms.IKey,
    removal_policy: cdk.RemovalPolicy,
    logs_to: s3.IBucket | None,
    log_prefix: str,
) -> tuple[s3.Bucket, s3.IBucket]:
    """The state bucket under ``key``, and where its server access logs go (``logs_to``, or a
    new bucket of the vault)."""
    created: list[s3.Bucket] = []
    if logs_to is None:
        logs_to = access_log_bucket(
            scope,
            "AccessLogs",
            expiration=cdk.Duration.days(365),
            removal_policy=removal_policy,
            serves="the vault state bucket",
        )
        created.append(logs_to)
    # Versioned: the hosts may overwrite the key state; versions keep every earlier one.
    state = encrypted_bucket(
        scope,
        "State",
        key=key,
        removal_policy=removal_policy,
    )
    deliver_access_logs(state, to=logs_to, prefix=log_prefix, sid="S3ServerAccessLogsOfVaultState")
    for bucket in (*created, state):
        acknowledge_regulated(
            bucket,
            "S3BucketReplicationEnabled",
            "cross-region replication needs a destination bucket and key in a second region, "
            "which this single-region stack cannot create; the state is versioned and retained",
        )
    return state, logs_to
