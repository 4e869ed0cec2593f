"""Boot code as files: every instance role's boot bundle as an S3 asset, and its user data.

One renderer for every role's user data (:func:`launcher_user_data`), one quoting rule
(``shlex.quote``, :func:`cdk_trn_runtime.node.bundle.render_environment`). The user data is a
short launcher (``cdk_trn_runtime/node/launcher.sh``): the role's ``CDK_TRN_*`` variables, the
bundle's bucket, key and SHA-256; it downloads the bundle through the S3 gateway endpoint, checks
the digest before anything in it runs, unpacks it into a root-only directory and runs the role's
entry script, then sends the boot log to the role's CloudWatch Logs group.

:class:`BootBundle` is one role's asset (a deterministic tar archive built from the runtime
package's files by ``cdk_trn_runtime.node.bundle``, the same files the boot tests and the local
twin run) and its boot log group; ``grant_boot`` lets an instance role read exactly that object
and write its own log streams there.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from cdk_trn._runtime import runtime_file
from cdk_trn_runtime.contract.boot import ROLE_VARIABLES, BootVariables, LauncherVariables
from cdk_trn_runtime.node.bundle import (
    ENTRY_SCRIPTS,
    bundle_archive,
    bundle_sha256,
    render_environment,
)

#: EC2's limit on user data is 16 KiB; cdk-trn keeps every role's below this, with every token
#: resolved to its longest value (tests/cdk_trn/test_boot.py), so a new variable
#: never breaks a deploy.
USER_DATA_BUDGET_BYTES = 12 * 1024


@functools.cache
def _archive_path(role: str) -> Path:
    """The role's archive, written once per process under the temp directory by its digest (the
    asset stage copies it into the cloud assembly)."""
    digest = bundle_sha256(role)
    folder = Path(tempfile.gettempdir()) / "cdk-trn-boot-bundles"
    folder.mkdir(exist_ok=True)
    path = folder / f"{role}-{digest}.tar.gz"
    if not path.is_file():
        partial = folder / f".{path.name}.{os.getpid()}"
        partial.write_bytes(bundle_archive(role))
        partial.replace(path)
    return path


def launcher_user_data(
    role: str,
    variables: BootVariables,
    *,
    bucket: str,
    key: str,
    sha256: str,
    log_group: str,
) -> str:
    """The user data of ``role``: ``#!/bin/bash``, the role's boot variables (the contract's
    message of the role, ``cdk_trn_runtime.contract.boot``) and the bundle's coordinates (each
    quoted with ``shlex.quote``), then ``launcher.sh``."""
    expected = ROLE_VARIABLES[role]
    if type(variables) is not expected:
        raise TypeError(f"the launcher of {role!r} takes {expected.__name__}, got {variables!r}")
    bundle = LauncherVariables(
        bucket=bucket,
        object_key=key,
        sha256=sha256,
        entry=ENTRY_SCRIPTS[role],
        log_group=log_group,
    )
    environment = {**variables.to_environment(), **bundle.to_environment()}
    launcher = runtime_file("node", "launcher.sh").read_text().split("\n", 1)[1]
    return "#!/bin/bash\n" + render_environment(environment) + launcher


class BootBundle(Construct):
    """One instance role's boot bundle (an S3 asset, checked by its SHA-256 at boot) and boot log
    group (KMS-encrypted, one year).

    :param role: ``node``, ``controller`` or ``vault`` (``cdk_trn_runtime.node.bundle.ROLES``).
    :param encryption_key: the key CloudWatch Logs encrypts the log group with; its policy must
        admit CloudWatch Logs (``cdk_trn._resources.allow_cloudwatch_logs``).
    :param removal_policy: the log group's (the owner's ``destroy_on_delete``). Default: retain.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        role: str,
        encryption_key: kms.IKey,
        removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, id)
        self.role = role
        self.sha256 = bundle_sha256(role)
        self.asset = s3_assets.Asset(self, "Asset", path=str(_archive_path(role)))
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            encryption_key=encryption_key,
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=removal_policy,
        )

    @property
    def object_arn(self) -> str:
        return self.asset.bucket.arn_for_objects(self.asset.s3_object_key)

    def grant_boot(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` read this bundle's object (nothing else of the assets bucket) and write
        its boot log streams in this group."""
        read = iam.Grant.add_to_principal(
            grantee=grantee, actions=["s3:GetObject"], resource_arns=[self.object_arn]
        )
        write = iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resource_arns=[self.log_group.log_group_arn],
        )
        return read.combine(write)

    def user_data(self, variables: BootVariables) -> str:
        """The launcher for this bundle with ``variables`` (see :func:`launcher_user_data`)."""
        return launcher_user_data(
            self.role,
            variables,
            bucket=self.asset.s3_bucket_name,
            key=self.asset.s3_object_key,
            sha256=self.sha256,
            log_group=self.log_group.log_group_name,
        )
