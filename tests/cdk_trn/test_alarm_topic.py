"""The cluster's events topic reaches a person: every alarm action and the nodes' group
notifications point at a topic under a customer-managed key whose policy lets the publisher use
it, and whose topic policy lets the publisher publish from this account; ``-c alarmEmail=`` adds
an email subscription. Followed end to end through the synthesized template."""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

import aws_cdk as cdk
import pytest

from cdk_trn.alarm_topic import AUTO_SCALING_ROLE, ClusterEventsTopic
from cdk_trn.errors import CdkTrnError
from stacks import build_default_app
from stacks.config import AppConfig

ACCOUNT = {"Ref": "AWS::AccountId"}


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    app = cdk.App(context={"alarmEmail": "ops@example.com"})
    config = dataclasses.replace(AppConfig.from_context(app.node), enclave_vault=False)
    default = build_default_app(app, config)
    stack = default.cluster_stack
    return app.synth().get_stack_by_name(stack.stack_name).template["Resources"]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _allows(
    policy: dict[str, Any], action: str, *, service: str | None = None, role: str | None = None
) -> list[dict[str, Any]]:
    """The Allow statements of ``policy`` that grant ``action`` to the service principal
    ``service``, or to the role whose ARN ends in ``role`` (by principal or aws:PrincipalArn)."""
    found = []
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        if not any(fnmatch.fnmatchcase(action, a) for a in _as_list(statement["Action"])):
            continue
        principal = statement.get("Principal", {})
        if service is not None and service in _as_list(principal.get("Service", [])):
            found.append(statement)
        if role is not None and principal.get("AWS") == "*":
            arn = statement.get("Condition", {}).get("StringEquals", {}).get("aws:PrincipalArn")
            if arn and role in str(arn):
                found.append(statement)
    return found


def _topic_and_key(resources: dict[str, Any], topic_ref: Any) -> tuple[str, dict, dict]:
    topic_id = topic_ref["Ref"]
    topic = resources[topic_id]
    assert topic["Type"] == "AWS::SNS::Topic"
    key_ref = topic["Properties"]["KmsMasterKeyId"]
    # A customer-managed key of this stack, not alias/aws/sns.
    assert isinstance(key_ref, dict), key_ref
    key_id = key_ref.get("Fn::GetAtt", [key_ref.get("Ref")])[0]
    key = resources[key_id]
    assert key["Type"] == "AWS::KMS::Key"
    policies = [
        r["Properties"]["PolicyDocument"]
        for r in resources.values()
        if r["Type"] == "AWS::SNS::TopicPolicy" and {"Ref": topic_id} in r["Properties"]["Topics"]
    ]
    assert len(policies) == 1
    return topic_id, key["Properties"]["KeyPolicy"], policies[0]


def test_every_alarm_can_publish_to_its_topic_from_this_account_only(resources):
    alarms = [r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert alarms
    for alarm in alarms:
        for action in alarm["Properties"]["AlarmActions"]:
            _, key_policy, topic_policy = _topic_and_key(resources, action)
            for needed in ("kms:Decrypt", "kms:GenerateDataKey"):
                assert _allows(key_policy, needed, service="cloudwatch.amazonaws.com"), needed
            (publish,) = _allows(topic_policy, "sns:Publish", service="cloudwatch.amazonaws.com")
            assert publish["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_auto_scaling_notifications_can_publish_to_the_same_topic(resources):
    groups = [
        r
        for r in resources.values()
        if r["Type"] == "AWS::AutoScaling::AutoScalingGroup"
        and r["Properties"].get("NotificationConfigurations")
    ]
    assert groups
    for group in groups:
        for notification in group["Properties"]["NotificationConfigurations"]:
            _, key_policy, topic_policy = _topic_and_key(resources, notification["TopicARN"])
            for needed in ("kms:Decrypt", "kms:GenerateDataKey"):
                (grant,) = _allows(key_policy, needed, role=AUTO_SCALING_ROLE)
                assert grant["Condition"]["StringEquals"]["kms:CallerAccount"] == ACCOUNT
            (publish,) = _allows(topic_policy, "sns:Publish", role=AUTO_SCALING_ROLE)
            assert publish["Condition"]["StringEquals"]["aws:PrincipalAccount"] == ACCOUNT


def test_alarm_email_adds_an_email_subscription_to_the_topic(resources):
    subscriptions = [
        r["Properties"] for r in resources.values() if r["Type"] == "AWS::SNS::Subscription"
    ]
    assert [(s["Protocol"], s["Endpoint"]) for s in subscriptions] == [("email", "ops@example.com")]
    alarm_topics = {
        a["Ref"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        for a in r["Properties"]["AlarmActions"]
    }
    assert {s["TopicArn"]["Ref"] for s in subscriptions} == alarm_topics


def test_without_alarm_email_there_is_no_subscription():
    stack = cdk.Stack(cdk.App())
    topic = ClusterEventsTopic(stack, "Events", display_name="x")
    assert topic.subscription is None


def test_a_malformed_alarm_email_is_refused_naming_the_prop():
    stack = cdk.Stack(cdk.App())
    with pytest.raises(CdkTrnError, match="alarm_email must be an email address"):
        ClusterEventsTopic(stack, "Events", display_name="x", alarm_email="ops at example")
