"""Where the acceptance results bucket's server access logs go: a bucket of the run's own when
used alone, or the bucket it is given (the storage stack's in the default app)."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Template

from cdk_trn.acceptance import RESULTS_ACCESS_LOG_PREFIX
from cdk_trn.errors import CdkTrnError
from cdk_trn.storage import TrainingBuckets
from tests.cdk_trn.acceptance.stacks import REGION, run_stack


def _logical_id(construct) -> str:
    stack = cdk.Stack.of(construct)
    return stack.resolve(stack.get_logical_id(construct.node.default_child))


def _results_logging(under_test) -> dict:
    resources = Template.from_stack(under_test.stack).to_json()["Resources"]
    return resources[_logical_id(under_test.run.results_bucket)]["Properties"][
        "LoggingConfiguration"
    ]


def test_alone_the_run_logs_its_results_bucket_to_a_bucket_of_its_own():
    under_test = run_stack()
    own = under_test.run.node.find_child("ResultsAccessLogs")
    assert _results_logging(under_test) == {
        "DestinationBucketName": {"Ref": _logical_id(own)},
        "LogFilePrefix": RESULTS_ACCESS_LOG_PREFIX,
    }


def test_given_the_storage_log_bucket_the_run_creates_none_and_logs_there():
    app = cdk.App()
    storage = cdk.Stack(app, "Storage", env=cdk.Environment(region=REGION))
    buckets = TrainingBuckets(storage, "Buckets")
    buckets.admit_access_logs(RESULTS_ACCESS_LOG_PREFIX)
    under_test = run_stack(app, access_log_bucket=buckets.access_log_bucket)
    assert under_test.run.node.try_find_child("ResultsAccessLogs") is None
    resources = Template.from_stack(under_test.stack).to_json()["Resources"]
    assert [k for k, r in resources.items() if r["Type"] == "AWS::S3::Bucket"] == [
        _logical_id(under_test.run.results_bucket)
    ]
    logging = _results_logging(under_test)
    assert logging["LogFilePrefix"] == RESULTS_ACCESS_LOG_PREFIX
    assert "Fn::ImportValue" in logging["DestinationBucketName"]
    assert storage in under_test.stack.dependencies


def test_a_log_bucket_with_a_given_results_bucket_is_refused():
    app = cdk.App()
    other = cdk.Stack(app, "Other", env=cdk.Environment(region=REGION))
    results, logs = s3.Bucket(other, "Results"), s3.Bucket(other, "Logs")
    with pytest.raises(CdkTrnError, match="access_log_bucket must be None when results_bucket"):
        run_stack(app, results_bucket=results, access_log_bucket=logs)


def test_a_malformed_log_prefix_is_refused():
    with pytest.raises(CdkTrnError, match="access_log_prefix must be a key prefix"):
        run_stack(access_log_prefix="Results")
