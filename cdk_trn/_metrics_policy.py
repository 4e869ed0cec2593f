"""The statement that lets an instance role publish its own metrics, and nothing else."""

from __future__ import annotations

from aws_cdk import aws_iam as iam


def put_metric_data_statement(namespace: str) -> iam.PolicyStatement:
    """``cloudwatch:PutMetricData`` into ``namespace`` only. The action supports no resource-level
    permission (its Resource is ``*``); the ``cloudwatch:namespace`` condition key scopes it."""
    return iam.PolicyStatement(
        actions=["cloudwatch:PutMetricData"],
        resources=["*"],
        conditions={"StringEquals": {"cloudwatch:namespace": namespace}},
    )


PUT_METRIC_DATA_WILDCARD_REASON = (
    "cloudwatch:PutMetricData supports no resource-level permission (its Resource must be '*'); "
    "the statement is limited by the cloudwatch:namespace condition to the cluster's own namespace"
)
