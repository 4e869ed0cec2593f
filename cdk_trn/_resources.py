"""Small resource recipes that several constructs share, written once.

* ``allow_cloudwatch_logs(key)``: let CloudWatch Logs of this account use a KMS key for log groups.
* ``encrypted_bucket(...)``: a private, versioned, TLS-only bucket encrypted with a KMS key.
* ``access_log_bucket(...)`` / ``deliver_access_logs(...)`` / ``admit_account_access_logs(...)``:
  an SSE-S3 bucket that receives S3 server access logs, the logging setup of a bucket that sends
  them there, and the admission of this account's buckets under one prefix.
* ``ManagedPolicyRole``: an IAM role whose statements, grants included, live in a customer-managed
  policy attached to it, never in an inline policy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import aws_cdk as cdk
import jsii
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_trn.compliance import acknowledge_regulated
from cdk_trn.errors import invalid


def allow_cloudwatch_logs(key: kms.Key) -> None:
    """CloudWatch Logs encrypts log groups with ``key``, only for this account's log groups (the
    encryption-context condition the CloudWatch Logs user guide documents)."""
    stack = cdk.Stack.of(key)
    key.add_to_resource_policy(
        iam.PolicyStatement(
            sid="CloudWatchLogsOfThisAccount",
            principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
            actions=[
                "kms:Encrypt",
                "kms:Decrypt",
                "kms:ReEncrypt*",
                "kms:GenerateDataKey*",
                "kms:DescribeKey",
            ],
            resources=["*"],
            conditions={
                "ArnLike": {
                    "kms:EncryptionContext:aws:logs:arn": stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name="*",
                        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                    )
                }
            },
        )
    )


def encrypted_bucket(
    scope: Construct,
    id: str,
    *,
    key: kms.IKey,
    removal_policy: cdk.RemovalPolicy,
    lifecycle_rules: Sequence[s3.LifecycleRule] = (),
) -> s3.Bucket:
    """SSE-KMS with ``key`` and S3 Bucket Keys, public access blocked, object ownership enforced
    (no ACLs), versioned, TLS-only."""
    return s3.Bucket(
        scope,
        id,
        encryption=s3.BucketEncryption.KMS,
        encryption_key=key,
        bucket_key_enabled=True,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        versioned=True,
        enforce_ssl=True,
        removal_policy=removal_policy,
        lifecycle_rules=list(lifecycle_rules) or None,
    )


def access_log_bucket(
    scope: Construct,
    id: str,
    *,
    expiration: cdk.Duration,
    removal_policy: cdk.RemovalPolicy,
    serves: str,
) -> s3.Bucket:
    """A bucket for S3 server access logs of the buckets described by ``serves``.

    SSE-S3 because server access logging delivers only to SSE-S3 buckets (S3 user guide, server
    access logging requirements); object ownership enforced, so delivery is granted by bucket
    policy (``deliver_access_logs``), never by ACL.
    """
    bucket = s3.Bucket(
        scope,
        id,
        encryption=s3.BucketEncryption.S3_MANAGED,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        versioned=True,
        enforce_ssl=True,
        removal_policy=removal_policy,
        lifecycle_rules=[
            s3.LifecycleRule(
                id="expire-access-logs",
                expiration=expiration,
                noncurrent_version_expiration=cdk.Duration.days(1),
                abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
            )
        ],
    )
    # No AwsSolutions-S1 acknowledgment: cdk-nag 3 does not report S1 on a bucket that is
    # itself a server access log destination.
    acknowledge_regulated(
        bucket,
        "S3DefaultEncryptionKMS",
        "S3 server access logging delivers only to buckets encrypted with SSE-S3 (S3 user "
        "guide, server access logging requirements); the logs hold request metadata, never "
        "object contents",
    )
    return bucket


#: What S3 server access logging requires of a destination bucket (S3 user guide, "Logging
#: requests with server access logging" and the ``LoggingEnabled`` API reference), for docstrings.
ACCESS_LOG_DESTINATION_REQUIREMENTS = (
    "in the same Region and owned by the same account as the logged bucket; default encryption "
    "SSE-S3 (never SSE-KMS or DSSE-KMS); no S3 Object Lock default retention; no Requester "
    "Pays; with object ownership enforced (no ACLs), delivery is granted by a bucket policy "
    "statement for the logging service principal logging.s3.amazonaws.com"
)
_LOG_PREFIX = re.compile(r"[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*/")


def validate_access_log_prefix(prop: str, prefix: str) -> None:
    """A key prefix for server access logs: lower-case path segments ending in ``/``."""
    if isinstance(prefix, str) and cdk.Token.is_unresolved(prefix):
        return
    if not isinstance(prefix, str) or len(prefix) > 100 or not _LOG_PREFIX.fullmatch(prefix):
        raise invalid(
            prop,
            prefix,
            "a key prefix of at most 100 characters: lower-case letters, digits, '.', '_' or "
            "'-' in segments separated by '/', ending in '/' (for example 'vault-state/')",
        )


def validate_access_log_bucket(prop: str, scope: Construct, bucket: s3.IBucket) -> None:
    """``bucket`` can receive ``scope``'s server access logs: an ``s3.IBucket`` in the same
    Region and account, where both are known at synth."""
    if not all(hasattr(bucket, a) for a in ("bucket_name", "arn_for_objects", "env")):
        raise invalid(prop, bucket, "an s3.IBucket (for example TrainingBuckets.access_log_bucket)")
    stack = cdk.Stack.of(scope)
    for what, mine, theirs in (
        ("Region", stack.region, bucket.env.region),
        ("account", stack.account, bucket.env.account),
    ):
        known = not cdk.Token.is_unresolved(mine) and not cdk.Token.is_unresolved(theirs)
        if known and mine != theirs:
            raise invalid(
                prop,
                f"a bucket in {what} {theirs}",
                f"a bucket in this stack's {what} ({mine}): S3 delivers server access logs "
                "only within one Region and account",
            )


def deliver_access_logs(bucket: s3.Bucket, *, to: s3.IBucket, prefix: str, sid: str) -> None:
    """Send ``bucket``'s server access logs to ``to`` under ``prefix``.

    ``to`` must meet S3's requirements for a destination
    (:data:`ACCESS_LOG_DESTINATION_REQUIREMENTS`): same Region and account as ``bucket``,
    SSE-S3 default encryption, no Object Lock default retention, no Requester Pays, and a
    bucket policy admitting ``logging.s3.amazonaws.com``.
    When ``to`` is an ``s3.Bucket`` of the same stack, this adds that statement for ``bucket``
    alone (``aws:SourceArn`` is its ARN). A bucket of another stack or an imported one is only
    named here: its owner admits the logs (``TrainingBuckets.admit_access_logs(prefix)``), so
    that no stack has to refer to a later one.
    """
    # L1 because the L2's server_access_logs_bucket depends on a feature flag: without
    # @aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy it puts an ACL on the log bucket, which
    # BucketOwnerEnforced forbids. S3 documents the bucket policy below instead.
    cfn_bucket = bucket.node.default_child
    assert isinstance(cfn_bucket, s3.CfnBucket)
    cfn_bucket.logging_configuration = s3.CfnBucket.LoggingConfigurationProperty(
        destination_bucket_name=to.bucket_name, log_file_prefix=prefix
    )
    if not isinstance(to, s3.Bucket) or cdk.Stack.of(to) is not cdk.Stack.of(bucket):
        return
    _admit_access_logs(
        to,
        prefix=prefix,
        sid=sid,
        conditions={
            "ArnLike": {"aws:SourceArn": bucket.bucket_arn},
            "StringEquals": {"aws:SourceAccount": cdk.Stack.of(bucket).account},
        },
    )


def admit_account_access_logs(to: s3.Bucket, *, prefix: str, sid: str) -> None:
    """Let S3 server access logging of buckets of this account deliver to ``to`` under
    ``prefix``, and nowhere else in it.

    For logged buckets that ``to``'s stack cannot name: buckets of later stacks (naming them
    would make the stacks depend on each other both ways). The statement is limited by
    ``aws:SourceAccount``; ``aws:SourceArn`` cannot narrow it further, because CloudFormation
    generates those buckets' names and documents no pattern for them.
    """
    _admit_access_logs(
        to,
        prefix=prefix,
        sid=sid,
        conditions={"StringEquals": {"aws:SourceAccount": cdk.Stack.of(to).account}},
    )


def _admit_access_logs(
    to: s3.Bucket, *, prefix: str, sid: str, conditions: dict[str, dict[str, str]]
) -> None:
    """The S3 logging service may put objects under ``prefix`` of ``to`` when ``conditions``
    hold (S3 user guide, server access logging: bucket policy, not ACLs)."""
    to.add_to_resource_policy(
        iam.PolicyStatement(
            sid=sid,
            principals=[iam.ServicePrincipal("logging.s3.amazonaws.com")],
            actions=["s3:PutObject"],
            resources=[to.arn_for_objects(f"{prefix}*")],
            conditions=conditions,
        )
    )


#: The id of a ``ManagedPolicyRole``'s policy, a child of the role.
ROLE_POLICY_ID = "Policy"


class ManagedPolicyRole(iam.Role):
    """An IAM role whose own statements live in a customer-managed policy, never inline.

    Whatever lands in an ``iam.Role``'s inline ``DefaultPolicy`` (``role.add_to_policy(...)``
    and the statements aws-cdk-lib's grants add: ``bucket.grant_read_write(role)``,
    ``key.grant_decrypt(role)``, ``secret.grant_read(role)``, a flow log's delivery grants)
    goes into ``<role>/Policy`` instead: an ``AWS::IAM::ManagedPolicy`` attached to this role
    alone, created with the first statement and deleted with the role (the regulated packs'
    IAMNoInlinePolicy). The statements are merged as in a default policy; a managed policy
    holds at most 6,144 characters.

    Ordering is kept: the policy is a child of the role, so whatever depends on the role (an L2
    ``ec2.LaunchTemplate`` with ``role=`` does) waits for the policy too, and grants report the
    policy as their dependable, so ``grant.apply_before(resource)`` orders ``resource`` after it.
    An L1 resource that launches instances must depend on the role itself
    (``resource.node.add_dependency(role)``).
    """

    def add_to_principal_policy(
        self, statement: iam.PolicyStatement
    ) -> iam.AddToPrincipalPolicyResult:
        policy = self.managed_policy
        if policy is None:
            policy = iam.ManagedPolicy(
                self,
                ROLE_POLICY_ID,
                description=f"Permissions of the role {self.node.path} (its grants)",
                roles=[self],
            )
        policy.add_statements(statement)  # identical statements are rendered once
        return iam.AddToPrincipalPolicyResult(statement_added=True, policy_dependable=policy)

    @property
    def managed_policy(self) -> iam.ManagedPolicy | None:
        """The policy holding the role's statements; None until the first one is added."""
        policy = self.node.try_find_child(ROLE_POLICY_ID)
        return policy if isinstance(policy, iam.ManagedPolicy) else None


@jsii.implements(iam.IPrincipal)
class _ManagedPolicyOf:
    """``principal`` as seen through ``policy``: statements granted to it go into the policy."""

    def __init__(self, policy: iam.ManagedPolicy, principal: iam.IPrincipal) -> None:
        self._policy = policy
        self._principal = principal

    @property
    def grant_principal(self) -> iam.IPrincipal:
        return self  # type: ignore[return-value]

    @property
    def assume_role_action(self) -> str:
        return self._principal.assume_role_action

    @property
    def policy_fragment(self) -> iam.PrincipalPolicyFragment:
        return self._principal.policy_fragment

    @property
    def principal_account(self) -> str | None:
        return self._principal.principal_account

    def add_to_policy(self, statement: iam.PolicyStatement) -> bool:
        return self.add_to_principal_policy(statement).statement_added

    def add_to_principal_policy(
        self, statement: iam.PolicyStatement
    ) -> iam.AddToPrincipalPolicyResult:
        self._policy.add_statements(statement)  # identical statements are rendered once
        return iam.AddToPrincipalPolicyResult(statement_added=True, policy_dependable=self._policy)


def grant_through_managed_policy(
    policy: iam.ManagedPolicy,
    grantee: iam.IGrantable,
    statements: Sequence[iam.PolicyStatement],
) -> iam.Grant:
    """Grant ``statements`` to ``grantee`` through ``policy``, which is attached to its principal.

    The policy lives beside the resources it names, so a grantee in another stack makes that
    stack depend on the resources' stack (never the reverse) and the policy's resources stay local
    references. A principal that takes no managed policy (a service principal, an account) gets
    the statements the way aws-cdk-lib's own grants give them.
    """
    principal = grantee.grant_principal
    attach = getattr(principal, "add_managed_policy", None)
    target: iam.IGrantable = grantee
    if attach is not None:
        attach(policy)
        target = _ManagedPolicyOf(policy, principal)  # type: ignore[assignment]
    grant: iam.Grant | None = None
    for statement in statements:
        one = iam.Grant.add_to_principal(
            grantee=target,
            actions=statement.actions,
            resource_arns=statement.resources,
            conditions=statement.conditions or None,
        )
        grant = one if grant is None else grant.combine(one)
    assert grant is not None, "a grant names at least one statement"
    return grant


#: CloudWatch Logs' retention periods (``PutRetentionPolicy``), in days.
_LOG_RETENTION = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1096: logs.RetentionDays.THREE_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    2192: logs.RetentionDays.SIX_YEARS,
    2557: logs.RetentionDays.SEVEN_YEARS,
    2922: logs.RetentionDays.EIGHT_YEARS,
    3288: logs.RetentionDays.NINE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


def whole_days(
    prop: str, retention: cdk.Duration, *, minimum: int = 1, maximum: int | None = None
) -> int:
    """``retention`` (every retention prop is a ``cdk.Duration``) as whole days, checked."""
    allowed = f"a cdk.Duration of whole days from {minimum}" + (
        f" to {maximum}" if maximum is not None else ""
    )
    if not isinstance(retention, cdk.Duration) or retention.is_unresolved():
        raise invalid(prop, retention, allowed)
    hours = retention.to_hours(integral=False)
    if hours % 24:
        raise invalid(prop, retention.to_human_string(), allowed)
    days = int(hours // 24)
    if days < minimum or (maximum is not None and days > maximum):
        raise invalid(prop, retention.to_human_string(), allowed)
    return days


def log_retention_period(prop: str, retention: cdk.Duration) -> logs.RetentionDays:
    """A log group's retention from a ``cdk.Duration``: one of CloudWatch Logs' periods."""
    days = whole_days(prop, retention)
    if days not in _LOG_RETENTION:
        raise invalid(
            prop,
            retention.to_human_string(),
            "a CloudWatch Logs retention period: "
            + ", ".join(str(d) for d in _LOG_RETENTION)
            + " days",
        )
    return _LOG_RETENTION[days]


def stateful_removal_policy(destroy_on_delete: bool) -> cdk.RemovalPolicy:
    """The one removal rule for the stateful resources a cdk-trn construct creates (data, keys,
    state buckets, log groups): retained on stack delete and on replacement, unless the caller
    named the opt-out ``destroy_on_delete=True``."""
    if not isinstance(destroy_on_delete, bool):
        raise invalid("destroy_on_delete", destroy_on_delete, "True or False")
    return cdk.RemovalPolicy.DESTROY if destroy_on_delete else cdk.RemovalPolicy.RETAIN
