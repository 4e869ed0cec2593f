"""Where the vault state bucket's server access logs go: its own bucket when used alone, or a
bucket it is given (the storage stack's in the default app), under its prefix."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Template

from cdk_trn.enclave.vault import STATE_ACCESS_LOG_PREFIX, EnclaveKeyVault
from cdk_trn.errors import CdkTrnError
from cdk_trn.network import TrainingNetwork
from cdk_trn.storage import TrainingBuckets
from tests.cdk_trn.enclave.stacks import (
    AZ_ID,
    REGION,
    cluster_stand_in,
    prebuilt_image,
    vault_stack,
)


def _resources(stack: cdk.Stack) -> dict[str, dict]:
    return Template.from_stack(stack).to_json()["Resources"]


def _state_logging(built) -> dict:
    return _resources(built.stack)[built.logical_id(built.vault.state_bucket)]["Properties"][
        "LoggingConfiguration"
    ]


def _log_statements_for(resources: dict[str, dict], bucket_id: str) -> list[dict]:
    return [
        s
        for r in resources.values()
        if r["Type"] == "AWS::S3::BucketPolicy" and r["Properties"]["Bucket"] == {"Ref": bucket_id}
        for s in r["Properties"]["PolicyDocument"]["Statement"]
        if s.get("Principal") == {"Service": "logging.s3.amazonaws.com"}
    ]


def test_alone_the_vault_logs_its_state_bucket_to_a_bucket_of_its_own():
    built = vault_stack()
    own = built.vault.node.find_child("AccessLogs")
    assert built.vault.access_log_bucket is own
    assert _state_logging(built) == {
        "DestinationBucketName": {"Ref": built.logical_id(own)},
        "LogFilePrefix": STATE_ACCESS_LOG_PREFIX,
    }
    [statement] = _log_statements_for(_resources(built.stack), built.logical_id(own))
    state_arn = {"Fn::GetAtt": [built.logical_id(built.vault.state_bucket), "Arn"]}
    assert statement["Condition"]["ArnLike"] == {"aws:SourceArn": state_arn}


def test_given_another_stacks_log_bucket_the_vault_creates_none_and_logs_there():
    app = cdk.App()
    storage = cdk.Stack(app, "Storage", env=cdk.Environment(region=REGION))
    buckets = TrainingBuckets(storage, "Buckets")
    buckets.admit_access_logs(STATE_ACCESS_LOG_PREFIX)
    built = vault_stack(app=app, access_log_bucket=buckets.access_log_bucket)
    assert built.vault.node.try_find_child("AccessLogs") is None
    vault_buckets = [
        k for k, r in _resources(built.stack).items() if r["Type"] == "AWS::S3::Bucket"
    ]
    assert vault_buckets == [built.logical_id(built.vault.state_bucket)]
    logging = _state_logging(built)
    assert logging["LogFilePrefix"] == STATE_ACCESS_LOG_PREFIX
    assert "Fn::ImportValue" in logging["DestinationBucketName"]
    # The storage stack names no vault bucket (the data buckets' two statements and the
    # admission): the vault stack depends on it, never the reverse.
    log_bucket = storage.resolve(
        storage.get_logical_id(buckets.access_log_bucket.node.default_child)
    )
    statements = _log_statements_for(_resources(storage), log_bucket)
    assert len(statements) == 3 and "ImportValue" not in str(statements)
    assert storage in built.stack.dependencies
    assert built.stack not in storage.dependencies


def test_given_a_log_bucket_of_its_own_stack_the_vault_admits_its_state_bucket_alone():
    stack = cdk.Stack(cdk.App(), "Shared", env=cdk.Environment(region=REGION))
    network = TrainingNetwork(stack, "Network", availability_zone=AZ_ID)
    logs = s3.Bucket(
        stack,
        "Logs",
        encryption=s3.BucketEncryption.S3_MANAGED,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
    )
    vault = EnclaveKeyVault(
        stack,
        "Vault",
        network=network,
        clients=[cluster_stand_in(stack, network)],
        image=prebuilt_image(stack),
        access_log_bucket=logs,
        access_log_prefix="vault/state/",
    )
    resources = _resources(stack)
    [statement] = _log_statements_for(
        resources, stack.resolve(stack.get_logical_id(logs.node.default_child))
    )
    state = stack.resolve(stack.get_logical_id(vault.state_bucket.node.default_child))
    assert statement["Condition"]["ArnLike"] == {"aws:SourceArn": {"Fn::GetAtt": [state, "Arn"]}}
    assert "/vault/state/*" in str(statement["Resource"])


def test_a_log_bucket_in_another_region_is_refused():
    app = cdk.App()
    elsewhere = cdk.Stack(app, "Elsewhere", env=cdk.Environment(region="us-west-2"))
    logs = s3.Bucket(elsewhere, "Logs")
    with pytest.raises(
        CdkTrnError, match="access_log_bucket must be a bucket in this stack's Region"
    ):
        vault_stack(app=app, access_log_bucket=logs)


def test_a_malformed_log_prefix_is_refused():
    with pytest.raises(CdkTrnError, match="access_log_prefix must be a key prefix"):
        vault_stack(access_log_prefix="no-trailing-slash")
