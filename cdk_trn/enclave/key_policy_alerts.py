"""Alerts on every attempt to change the vault key's policy: an EventBridge rule on CloudTrail's
``PutKeyPolicy`` for the key (allowed or denied) that notifies an encrypted SNS topic."""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from constructs import Construct

from cdk_trn.enclave.key_policy import KEY_POLICY_ACTION, account_key_policy

__all__ = ["alert_on_key_policy_changes"]


def alert_on_key_policy_changes(
    scope: Construct,
    key: kms.IKey,
    *,
    key_policy_roles: Sequence[str],
    removal_policy: cdk.RemovalPolicy,
) -> sns.Topic:
    """An EventBridge rule on CloudTrail's PutKeyPolicy for the vault key (allowed or
    denied) that notifies an encrypted SNS topic; subscribe the security team to it.

    EventBridge sees CloudTrail management events only where a trail records them (an
    account or organisation trail); it cannot publish to a topic under the AWS-managed SNS
    key, hence a customer-managed key.
    """
    alerts_key = kms.Key(
        scope,
        "AlertsKey",
        description="cdk-trn enclave vault: encrypts the key-policy alerts topic",
        enable_key_rotation=True,
        removal_policy=removal_policy,
        policy=iam.PolicyDocument(statements=account_key_policy(key_policy_roles)),
    )
    topic = sns.Topic(
        scope,
        "KeyPolicyAlerts",
        display_name="cdk-trn enclave vault key policy changes",
        master_key=alerts_key,
        enforce_ssl=True,
    )
    rule = events.Rule(
        scope,
        "KeyPolicyChangeRule",
        description="Any attempt to change the enclave vault key's policy (CloudTrail)",
        event_pattern=events.EventPattern(
            source=["aws.kms"],
            detail_type=["AWS API Call via CloudTrail"],
            detail={
                "eventSource": ["kms.amazonaws.com"],
                "eventName": [KEY_POLICY_ACTION.removeprefix("kms:")],
                # Denied calls may carry no resources; their request still names the key.
                "$or": [
                    {"resources": {"ARN": [key.key_arn]}},
                    {"requestParameters": {"keyId": [key.key_arn, key.key_id]}},
                ],
            },
        ),
    )
    rule.add_target(events_targets.SnsTopic(topic))
    # The SnsTopic target grants EventBridge kms:Decrypt / GenerateDataKey* on this key.
    return topic
