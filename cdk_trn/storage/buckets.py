"""The storage KMS key and the dataset, checkpoint and access-log buckets.

Owns: ``storage_key`` (the customer-managed key that encrypts the buckets and, by default in the
storage stack, the file system) and ``TrainingBuckets`` (dataset and checkpoint buckets encrypted
with that key, plus the bucket that receives their server access logs), and the node-role grants
on them. Everything here is retained when the stack is deleted.
"""

from __future__ import annotations

import re

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk_trn._resources import (
    access_log_bucket,
    admit_account_access_logs,
    deliver_access_logs,
    encrypted_bucket,
    grant_through_managed_policy,
    stateful_removal_policy,
    validate_access_log_prefix,
    whole_days,
)
from cdk_trn.compliance import acknowledge_regulated, acknowledge_wildcards
from cdk_trn.errors import invalid

# FSx creates one service-linked role per file system for its S3 data repository associations,
# named AWSServiceRoleForFSxS3Access_<file-system-id> (FSx for Lustre user guide,
# "Working with server-side encrypted Amazon S3 buckets").
FSX_S3_ACCESS_ROLE_PATH = "role/aws-service-role/s3.data-source.lustre.fsx.amazonaws.com/"
FSX_S3_ACCESS_ROLE_PREFIX = "AWSServiceRoleForFSxS3Access_fs-"

#: Where the data buckets' server access logs go in the access-log bucket.
DATASETS_LOG_PREFIX = "datasets/"
CHECKPOINTS_LOG_PREFIX = "checkpoints/"

_READ_OBJECT_ACTIONS = ("s3:GetObject", "s3:GetObjectVersion")
_READ_BUCKET_ACTIONS = ("s3:ListBucket", "s3:GetBucketLocation")
_WRITE_OBJECT_ACTIONS = (
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)
_WRITE_BUCKET_ACTIONS = ("s3:ListBucketMultipartUploads",)
_KMS_READ_ACTIONS = ("kms:Decrypt",)
# Multipart uploads decrypt the data key of earlier parts, so writers need Decrypt too.
_KMS_WRITE_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey")


def storage_key(
    scope: Construct,
    id: str,
    *,
    description: str | None = None,
    removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.RETAIN,
) -> kms.Key:
    """The customer-managed storage key: rotation on, retained on stack delete.

    The key policy is CDK's default (the account may delegate use through IAM, which also keeps the
    key manageable); services use the key through grants created by the principal that creates the
    resource (FSx) or through the IAM permissions of the caller (S3 SSE-KMS). ``TrainingBuckets``
    adds the one service statement S3-linked FSx file systems need.
    """
    return kms.Key(
        scope,
        id,
        description=description or "cdk-trn storage key: datasets, checkpoints and FSx for Lustre",
        enable_key_rotation=True,
        removal_policy=removal_policy,
    )


class _TrainingBucketsBase(Construct):
    """What new and imported training buckets share: the node grants, through a managed policy
    beside the buckets (in the stack of the construct, new or importing)."""

    @property
    def encryption_key(self) -> kms.IKey:
        """The key that encrypts the dataset and checkpoint buckets."""
        raise NotImplementedError

    @property
    def dataset_bucket(self) -> s3.IBucket:
        raise NotImplementedError

    @property
    def checkpoint_bucket(self) -> s3.IBucket:
        raise NotImplementedError

    @property
    def access_log_bucket(self) -> s3.IBucket | None:
        raise NotImplementedError

    # -- grants ---------------------------------------------------------------------------------

    def grant_read(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` read datasets and checkpoints (for example to resume training).

        The statements go into this construct's read policy, a managed policy attached to the
        grantee's role. Actions are listed one by one and the key can be used only through S3.
        """
        return self._grant(grantee, write_checkpoints=False)

    def grant_read_write(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` read datasets and read and write checkpoints.

        Datasets stay read-only for training nodes: training reads them, writes go to checkpoints.
        """
        return self._grant(grantee, write_checkpoints=True)

    def _grant(self, grantee: iam.IGrantable, *, write_checkpoints: bool) -> iam.Grant:
        return grant_through_managed_policy(
            self._access_policy(write_checkpoints=write_checkpoints),
            grantee,
            self._access_statements(write_checkpoints=write_checkpoints),
        )

    def _access_statements(self, *, write_checkpoints: bool) -> list[iam.PolicyStatement]:
        stack = cdk.Stack.of(self)
        buckets = (self.dataset_bucket, self.checkpoint_bucket)
        statements = [
            iam.PolicyStatement(
                actions=list(_READ_OBJECT_ACTIONS),
                resources=[b.arn_for_objects("*") for b in buckets],
            ),
            iam.PolicyStatement(
                actions=list(_READ_BUCKET_ACTIONS),
                resources=[b.bucket_arn for b in buckets],
            ),
        ]
        if write_checkpoints:
            statements += [
                iam.PolicyStatement(
                    actions=list(_WRITE_OBJECT_ACTIONS),
                    resources=[self.checkpoint_bucket.arn_for_objects("*")],
                ),
                iam.PolicyStatement(
                    actions=list(_WRITE_BUCKET_ACTIONS),
                    resources=[self.checkpoint_bucket.bucket_arn],
                ),
            ]
        statements.append(
            iam.PolicyStatement(
                actions=list(_KMS_WRITE_ACTIONS if write_checkpoints else _KMS_READ_ACTIONS),
                resources=[self.encryption_key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}},
            )
        )
        return statements

    def _access_policy(self, *, write_checkpoints: bool) -> iam.ManagedPolicy:
        # A managed policy beside the buckets, attached from the role's side: the cluster stack
        # then depends on the storage stack (never the reverse), and the policy's resources stay
        # local references, so the acknowledgment below can name them exactly. The grants fill it.
        name = "NodeReadWritePolicy" if write_checkpoints else "NodeReadPolicy"
        existing = self.node.try_find_child(name)
        if isinstance(existing, iam.ManagedPolicy):
            return existing
        buckets = (self.dataset_bucket, self.checkpoint_bucket)
        policy = iam.ManagedPolicy(
            self,
            name,
            description=(
                "cdk-trn nodes: read datasets, read and write checkpoints"
                if write_checkpoints
                else "cdk-trn nodes: read datasets and checkpoints"
            ),
        )
        acknowledge_wildcards(
            policy,
            "Object actions (GetObject, PutObject, ...) act on object ARNs, so the resource is "
            "this training bucket's object ARN pattern <bucket-arn>/*; every action is named "
            "and the KMS statement is limited to calls made through S3.",
            resources=[b.arn_for_objects("*") for b in buckets],
        )
        return policy


class TrainingBuckets(_TrainingBucketsBase):
    """Dataset and checkpoint buckets, encrypted with the storage key, plus their access-log bucket.

    Both data buckets: SSE-KMS with the storage key and S3 Bucket Keys, block public access,
    versioning, TLS-only bucket policy, server access logs to ``access_log_bucket``, retained on
    stack delete. The checkpoint bucket expires non-current versions after
    ``noncurrent_checkpoint_retention``. The access-log bucket uses SSE-S3, which is the only
    default encryption S3 server access logging delivers to (S3 user guide, "Enabling Amazon S3
    server access logging"), and is versioned, blocked and TLS-only too. Buckets of other
    stacks (the enclave vault's state, the acceptance results) can log into it as well, each
    under a prefix this construct admits with :meth:`admit_access_logs`.

    :param encryption_key: key for SSE-KMS on the data buckets.
        Default: a new key from :func:`storage_key`. An imported key's policy cannot be changed
        here: add the FSx statement yourself (see :meth:`_allow_fsx_data_repositories`); a
        warning annotation says so.
    :param noncurrent_checkpoint_retention: how long a replaced or deleted checkpoint version is
        kept (whole days). Default: 30 days.
    :param noncurrent_dataset_retention: how long a replaced or deleted dataset object version is
        kept (whole days). Default: None (kept until deleted by hand).
    :param access_log_retention: how long server access logs are kept (whole days).
        Default: 365 days.
    :param destroy_on_delete: the explicit opt-out from retention: delete the buckets (and a key
        this construct creates) with the stack. CloudFormation deletes only empty buckets, so
        objects are never deleted. Default: False (retained on stack delete).

    A later stack or another app attaches to existing buckets with :meth:`from_attributes`.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        encryption_key: kms.IKey | None = None,
        noncurrent_checkpoint_retention: cdk.Duration | None = None,
        noncurrent_dataset_retention: cdk.Duration | None = None,
        access_log_retention: cdk.Duration | None = None,
        destroy_on_delete: bool = False,
    ) -> None:
        noncurrent_checkpoint_days = whole_days(
            "noncurrent_checkpoint_retention",
            noncurrent_checkpoint_retention or cdk.Duration.days(30),
        )
        noncurrent_dataset_days = (
            whole_days("noncurrent_dataset_retention", noncurrent_dataset_retention)
            if noncurrent_dataset_retention is not None
            else None
        )
        access_log_retention_days = whole_days(
            "access_log_retention", access_log_retention or cdk.Duration.days(365)
        )
        removal_policy = stateful_removal_policy(destroy_on_delete)
        super().__init__(scope, id)
        #: Key prefixes of the access-log bucket in use: the data buckets' and admitted ones.
        self._log_prefixes: list[str] = [DATASETS_LOG_PREFIX, CHECKPOINTS_LOG_PREFIX]

        self._key: kms.IKey = (
            encryption_key
            if encryption_key is not None
            else storage_key(self, "Key", removal_policy=removal_policy)
        )

        self._access_log_bucket = access_log_bucket(
            self,
            "AccessLogs",
            expiration=cdk.Duration.days(access_log_retention_days),
            removal_policy=removal_policy,
            serves="the dataset and checkpoint buckets",
        )

        self._dataset_bucket = self._data_bucket(
            "Datasets",
            log_prefix=DATASETS_LOG_PREFIX,
            removal_policy=removal_policy,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-noncurrent-datasets",
                    noncurrent_version_expiration=cdk.Duration.days(noncurrent_dataset_days),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
                )
                if noncurrent_dataset_days is not None
                else s3.LifecycleRule(
                    id="abort-incomplete-uploads",
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
                )
            ],
        )
        self._checkpoint_bucket = self._data_bucket(
            "Checkpoints",
            log_prefix=CHECKPOINTS_LOG_PREFIX,
            removal_policy=removal_policy,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-noncurrent-checkpoints",
                    noncurrent_version_expiration=cdk.Duration.days(noncurrent_checkpoint_days),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
                )
            ],
        )
        self._allow_fsx_data_repositories()
        for bucket in (self._access_log_bucket, self._dataset_bucket, self._checkpoint_bucket):
            acknowledge_regulated(
                bucket,
                "S3BucketReplicationEnabled",
                "cross-region replication needs a destination bucket and key in a second "
                "region, which this single-region stack cannot create; versioning, retention "
                "on delete and FSx backups cover recovery inside the region",
            )

    @classmethod
    def from_attributes(
        cls,
        scope: Construct,
        id: str,
        *,
        dataset_bucket_name: str,
        checkpoint_bucket_name: str,
        encryption_key_arn: str,
        access_log_bucket_name: str | None = None,
    ) -> ImportedTrainingBuckets:
        """Training buckets that exist (another app's ``TrainingBuckets``, for example its
        storage stack's ``DatasetBucketName`` and ``CheckpointBucketName`` outputs), by name: no
        lookup, no AWS call at synth, no resource. ``grant_read``/``grant_read_write`` work as
        on new buckets (their managed policy is created in the importing stack);
        ``admit_access_logs`` is the owner's.

        :param dataset_bucket_name: the dataset bucket's name.
        :param checkpoint_bucket_name: the checkpoint bucket's name.
        :param encryption_key_arn: the ARN of the key that encrypts both
            (``arn:aws:kms:<region>:<account>:key/<id>``).
        :param access_log_bucket_name: the bucket that receives server access logs (SSE-S3),
            for constructs that take an ``access_log_bucket``. Default: none.
        """
        return ImportedTrainingBuckets(
            scope,
            id,
            dataset_bucket_name=dataset_bucket_name,
            checkpoint_bucket_name=checkpoint_bucket_name,
            encryption_key_arn=encryption_key_arn,
            access_log_bucket_name=access_log_bucket_name,
        )

    # -- resources ------------------------------------------------------------------------------

    def _data_bucket(
        self,
        id: str,
        *,
        log_prefix: str,
        removal_policy: cdk.RemovalPolicy,
        lifecycle_rules: list[s3.LifecycleRule],
    ) -> s3.Bucket:
        bucket = encrypted_bucket(
            self,
            id,
            key=self._key,
            removal_policy=removal_policy,
            lifecycle_rules=lifecycle_rules,
        )
        deliver_access_logs(
            bucket, to=self._access_log_bucket, prefix=log_prefix, sid=f"S3ServerAccessLogs{id}"
        )
        return bucket

    def _allow_fsx_data_repositories(self) -> None:
        """Let FSx file systems of this account read and write the buckets' SSE-KMS objects.

        FSx reaches a linked bucket as its per-file-system service-linked role, through S3. The
        documented statement names one file system's role; that role exists only after the file
        system does, and a key policy may name only existing principals, so the statement matches
        the role name pattern with ``aws:PrincipalArn`` instead, and is held to calls made through
        S3 in this region by principals of this account.
        """
        stack = cdk.Stack.of(self)
        statement = iam.PolicyStatement(
            sid="AllowFsxLustreDataRepositoryAssociationsViaS3",
            principals=[iam.AnyPrincipal()],
            actions=[
                "kms:Encrypt",
                "kms:Decrypt",
                "kms:ReEncryptFrom",
                "kms:ReEncryptTo",
                "kms:GenerateDataKey",
                "kms:DescribeKey",
            ],
            resources=["*"],
            conditions={
                "StringEquals": {
                    "kms:CallerAccount": stack.account,
                    "kms:ViaService": f"s3.{stack.region}.amazonaws.com",
                },
                "ArnLike": {
                    "aws:PrincipalArn": (
                        f"arn:{stack.partition}:iam::{stack.account}:"
                        f"{FSX_S3_ACCESS_ROLE_PATH}{FSX_S3_ACCESS_ROLE_PREFIX}*"
                    )
                },
            },
        )
        added = self._key.add_to_resource_policy(statement, allow_no_op=True)
        if not added.statement_added:
            cdk.Annotations.of(self).add_warning_v2(
                "cdk-trn:storage:imported-key",
                "The storage key is imported, so its policy was not changed: allow the FSx S3 "
                "access service-linked roles (AWSServiceRoleForFSxS3Access_fs-*) to use it via S3, "
                "or data repository associations cannot read or write the buckets.",
            )

    # -- properties -----------------------------------------------------------------------------

    @property
    def encryption_key(self) -> kms.IKey:
        """The key that encrypts the dataset and checkpoint buckets."""
        return self._key

    @property
    def dataset_bucket(self) -> s3.Bucket:
        """Training data; imported into the file system at ``/datasets`` by default."""
        return self._dataset_bucket

    @property
    def checkpoint_bucket(self) -> s3.Bucket:
        """Checkpoints; exported from the file system's ``/checkpoints`` by default."""
        return self._checkpoint_bucket

    @property
    def access_log_bucket(self) -> s3.Bucket:
        """Server access logs of the two data buckets (SSE-S3)."""
        return self._access_log_bucket

    def admit_access_logs(self, prefix: str) -> None:
        """Let S3 server access logging of this account's buckets deliver into
        :attr:`access_log_bucket` under ``prefix`` (and nowhere else in it).

        For buckets in stacks that depend on this one, which the bucket policy here cannot name
        without a dependency cycle: the statement admits the logging service
        (``logging.s3.amazonaws.com``) for ``aws:SourceAccount`` = this account and objects under
        ``prefix`` only (CloudFormation-generated bucket names follow no documented pattern, so
        no ``aws:SourceArn`` narrows it). Point the other bucket's logging here with the same
        prefix, e.g. ``EnclaveKeyVault(access_log_bucket=buckets.access_log_bucket)``. The
        bucket meets S3's destination requirements: same Region and account as the logged
        buckets, SSE-S3, no Object Lock, no Requester Pays, delivery by bucket policy.

        :param prefix: lower-case segments ending in ``/``; it may not overlap the data buckets'
            prefixes (``datasets/``, ``checkpoints/``) or another admitted one.
        """
        validate_access_log_prefix("prefix", prefix)
        in_use = ", ".join(self._log_prefixes)
        for used in self._log_prefixes:
            if prefix.startswith(used) or used.startswith(prefix):
                raise invalid(
                    "prefix", prefix, f"a prefix that does not overlap the ones in use ({in_use})"
                )
        self._log_prefixes.append(prefix)
        sid = "S3ServerAccessLogsOfAccountUnder" + "".join(
            part.capitalize() for part in re.split(r"[^a-z0-9]+", prefix) if part
        )
        admit_account_access_logs(self._access_log_bucket, prefix=prefix, sid=sid)


#: S3 bucket names (S3 user guide, "General purpose bucket naming rules"), without the rules on
#: adjacent periods and IP-address forms, which S3 checks.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[0-9a-f-]{36}$")


class ImportedTrainingBuckets(_TrainingBucketsBase):
    """Training buckets that exist, from :meth:`TrainingBuckets.from_attributes`."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        dataset_bucket_name: str,
        checkpoint_bucket_name: str,
        encryption_key_arn: str,
        access_log_bucket_name: str | None = None,
    ) -> None:
        where = f"{scope.node.path}/{id}"
        for prop, name in (
            ("dataset_bucket_name", dataset_bucket_name),
            ("checkpoint_bucket_name", checkpoint_bucket_name),
            ("access_log_bucket_name", access_log_bucket_name),
        ):
            if name is None and prop == "access_log_bucket_name":
                continue
            if not isinstance(name, str) or not (
                cdk.Token.is_unresolved(name) or _BUCKET_NAME.match(name)
            ):
                raise invalid(
                    f"{where}: {prop}",
                    name,
                    "an S3 bucket name (3-63 lower-case letters, digits, '.' or '-')",
                )
        if not isinstance(encryption_key_arn, str) or not (
            cdk.Token.is_unresolved(encryption_key_arn) or _KEY_ARN.match(encryption_key_arn)
        ):
            raise invalid(
                f"{where}: encryption_key_arn",
                encryption_key_arn,
                "a KMS key ARN such as 'arn:aws:kms:us-east-2:123456789012:key/<key id>'",
            )
        super().__init__(scope, id)
        self._key = kms.Key.from_key_arn(self, "Key", encryption_key_arn)
        self._dataset_bucket = s3.Bucket.from_bucket_attributes(
            self, "Datasets", bucket_name=dataset_bucket_name, encryption_key=self._key
        )
        self._checkpoint_bucket = s3.Bucket.from_bucket_attributes(
            self, "Checkpoints", bucket_name=checkpoint_bucket_name, encryption_key=self._key
        )
        self._access_log_bucket = (
            s3.Bucket.from_bucket_name(self, "AccessLogs", access_log_bucket_name)
            if access_log_bucket_name is not None
            else None
        )

    @property
    def encryption_key(self) -> kms.IKey:
        return self._key

    @property
    def dataset_bucket(self) -> s3.IBucket:
        return self._dataset_bucket

    @property
    def checkpoint_bucket(self) -> s3.IBucket:
        return self._checkpoint_bucket

    @property
    def access_log_bucket(self) -> s3.IBucket | None:
        return self._access_log_bucket
