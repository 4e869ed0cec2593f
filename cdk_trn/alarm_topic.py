"""The cluster's events topic: where node launch/termination events and the cluster's alarms go,
readable by a person.

CloudWatch alarm actions cannot publish to a topic under the AWS-managed key ``alias/aws/sns``
(its policy admits principals of the account only, and ``cloudwatch.amazonaws.com`` is a service
principal); they need a customer-managed key whose policy lets CloudWatch use it, and a topic
policy that allows its ``sns:Publish`` (AWS Knowledge Center, cloudwatch-receive-sns-for-alarm-
trigger; FACTS.md "First-deploy traps"). Auto Scaling's notifications come from the account's
service-linked role ``AWSServiceRoleForAutoScaling``, whose policy covers AWS-managed keys but no
customer-managed key (EC2 Auto Scaling user guide, key-policy-requirements-EBS-encryption), so
the key policy names it too.

The service-linked role exists only once an Auto Scaling group was made in the account, and a key
or topic policy that names a missing role as principal fails to create. Both statements for it
therefore name any principal and hold it to the role's ARN by ``aws:PrincipalArn`` and to this
account (the form of the AWS-managed keys' own policies), which is valid before the role exists.

``alarm_email``: an email subscription (the address confirms it from the message SNS sends).
"""

from __future__ import annotations

import re

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from cdk_trn.errors import invalid

#: Deliberately loose (SNS validates the address when it sends the confirmation): one '@', a dot
#: in the domain, no spaces.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CLOUDWATCH = "cloudwatch.amazonaws.com"
AUTO_SCALING_ROLE = "aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"
#: What a publisher to an encrypted topic needs of its key (SNS guide, sns-key-management).
PUBLISHER_KEY_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey*")


def validate_alarm_email(value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not _EMAIL.match(value)):
        raise invalid("alarm_email", value, "an email address such as 'ops@example.com'")


class ClusterEventsTopic(Construct):
    """An SNS topic under its own customer-managed key that CloudWatch alarms and the account's
    Auto Scaling service-linked role can publish to, from this account only.

    :param display_name: the topic's display name (the email's sender name).
    :param alarm_email: subscribe this address. Default: none (subscribe later, in the console or
        with ``aws sns subscribe``).

    The key is deleted with the stack, the one exception to the rule that keys are retained unless
    ``destroy_on_delete=True``: it encrypts only the topic's messages while SNS delivers them (SNS
    keeps none at rest), and nothing that outlives the stack is encrypted with it; retaining it
    would keep a key that decrypts nothing, at a monthly charge. KMS still waits its pending
    window (30 days, as no other is set) before the key is gone.
    """

    def __init__(
        self, scope: Construct, id: str, *, display_name: str, alarm_email: str | None = None
    ) -> None:
        super().__init__(scope, id)
        validate_alarm_email(alarm_email)
        stack = cdk.Stack.of(self)
        self.auto_scaling_role_arn = stack.format_arn(
            service="iam", region="", resource="role", resource_name=AUTO_SCALING_ROLE
        )
        self.key = kms.Key(
            self,
            "Key",
            description=f"cdk-trn: encrypts the {display_name} topic",
            enable_key_rotation=True,
            # Nothing of value is lost with it (see above); the test of destroy_on_delete checks
            # that nothing retained refers to it.
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublishToTheTopic",
                principals=[iam.ServicePrincipal(CLOUDWATCH)],
                actions=list(PUBLISHER_KEY_ACTIONS),
                resources=["*"],
            )
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AutoScalingNotificationsToTheTopic",
                principals=[iam.AnyPrincipal()],
                actions=list(PUBLISHER_KEY_ACTIONS),
                resources=["*"],
                conditions={
                    "StringEquals": {
                        "aws:PrincipalArn": self.auto_scaling_role_arn,
                        "kms:CallerAccount": stack.account,
                        "kms:ViaService": f"sns.{stack.region}.amazonaws.com",
                    }
                },
            )
        )
        self.topic = sns.Topic(
            self,
            "Resource",
            display_name=display_name,
            master_key=self.key,
            enforce_ssl=True,
        )
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsOfThisAccount",
                principals=[iam.ServicePrincipal(CLOUDWATCH)],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            )
        )
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AutoScalingNotifications",
                principals=[iam.AnyPrincipal()],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={
                    "StringEquals": {
                        "aws:PrincipalArn": self.auto_scaling_role_arn,
                        "aws:PrincipalAccount": stack.account,
                    }
                },
            )
        )
        self.subscription: sns.Subscription | None = None
        if alarm_email is not None:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
            self.subscription = next(
                c for c in self.topic.node.children if isinstance(c, sns.Subscription)
            )
