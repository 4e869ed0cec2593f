"""TrainingBuckets.admit_access_logs: buckets of later stacks log into the access-log bucket,
under their own prefix only, admitted by account because this stack cannot name them."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from cdk_trn.errors import CdkTrnError
from cdk_trn.storage import TrainingBuckets


def _buckets() -> tuple[cdk.Stack, TrainingBuckets]:
    stack = cdk.Stack(cdk.App(), "Storage", env=cdk.Environment(region="us-east-2"))
    return stack, TrainingBuckets(stack, "Buckets")


def _log_bucket_statements(stack: cdk.Stack, buckets: TrainingBuckets) -> list[dict]:
    log_bucket = stack.resolve(stack.get_logical_id(buckets.access_log_bucket.node.default_child))
    [policy] = [
        r
        for r in Template.from_stack(stack).find_resources("AWS::S3::BucketPolicy").values()
        if r["Properties"]["Bucket"] == {"Ref": log_bucket}
    ]
    return policy["Properties"]["PolicyDocument"]["Statement"]


def test_an_admitted_prefix_takes_this_accounts_log_delivery_under_it_only():
    stack, buckets = _buckets()
    buckets.admit_access_logs("vault-state/")
    log_bucket = stack.resolve(stack.get_logical_id(buckets.access_log_bucket.node.default_child))
    [admitted] = [
        s for s in _log_bucket_statements(stack, buckets) if "vault-state" in str(s["Resource"])
    ]
    assert admitted == {
        "Sid": "S3ServerAccessLogsOfAccountUnderVaultState",
        "Effect": "Allow",
        "Principal": {"Service": "logging.s3.amazonaws.com"},
        "Action": "s3:PutObject",
        "Resource": {"Fn::Join": ["", [{"Fn::GetAtt": [log_bucket, "Arn"]}, "/vault-state/*"]]},
        "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}},
    }


def test_without_admissions_only_the_data_buckets_may_log():
    stack, buckets = _buckets()
    allows = [s for s in _log_bucket_statements(stack, buckets) if s["Effect"] == "Allow"]
    assert len(allows) == 2
    assert all("aws:SourceArn" in s["Condition"]["ArnLike"] for s in allows)


@pytest.mark.parametrize(
    "prefix", ["", "vault-state", "/vault/", "Vault/", "vault state/", "a" * 100 + "/"]
)
def test_a_malformed_prefix_is_refused(prefix):
    _, buckets = _buckets()
    with pytest.raises(CdkTrnError, match="prefix must be a key prefix"):
        buckets.admit_access_logs(prefix)


@pytest.mark.parametrize("prefix", ["datasets/", "checkpoints/old/", "vault/", "vault/state/"])
def test_a_prefix_overlapping_one_in_use_is_refused(prefix):
    _, buckets = _buckets()
    buckets.admit_access_logs("vault/")
    with pytest.raises(CdkTrnError, match="does not overlap the ones in use"):
        buckets.admit_access_logs(prefix)
