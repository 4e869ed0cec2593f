"""Which Nitro Enclave image the vault runs, and the measurements (PCRs) its key trusts.

Owns ``EnclaveImage`` (a prebuilt image given by its measurements, or a Docker build context that
is turned into an EIF during the deploy), ``EifLocation`` and ``BoundEnclaveImage`` (what the vault
receives once the image is bound into its scope: PCRs, possibly deploy-time tokens, and the EIF's
S3 object). The deploy-time build is ``EifBuild``: an S3 asset of the build context, a privileged
CodeBuild project that runs ``docker build`` + ``nitro-cli build-enclave``, and a custom resource
(cdk-trn's deploy-time provider with the handler in ``eif_builder/handler.py``) that starts the
build and returns PCR0/PCR1/PCR2 as attributes. Measurement facts: Nitro Enclaves user guide,
"Cryptographic attestation" (PCR0 image, PCR1 kernel+bootstrap, PCR2 application, PCR8 signing
certificate; SHA-384, so 96 hex characters).
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from cdk_trn._provider import DeployTimeProvider
from cdk_trn._runtime import RUNTIME_ROOT, runtime_excludes
from cdk_trn.compliance import acknowledge_regulated
from cdk_trn.errors import invalid
from cdk_trn_runtime.contract.eif import (
    EIF_NAME,
    MEASUREMENTS_NAME,
    EifBuildAttributes,
    EifBuildProperties,
)
from cdk_trn_runtime.eif_builder.buildspec import eif_buildspec

_PCR = re.compile(r"^[0-9a-fA-F]{96}$")
# CloudFormation waits at most an hour for a custom resource (ServiceTimeout <= 3600 s); the
# provider waits for the build's timeout plus a margin (queueing), at most 55 minutes. An EIF build
# takes about 10 minutes.
_BUILD_TIMEOUT_RANGE = (10, 45)
_WAIT_MARGIN_MINUTES = 10


@dataclass(frozen=True)
class EifLocation:
    """Where an enclave image file (EIF) is stored: an S3 bucket and object key.

    If the bucket is encrypted with a customer managed key, pass it as ``bucket`` with that key
    (``s3.Bucket.from_bucket_attributes(..., encryption_key=key)``) so the hosts may decrypt it.
    """

    bucket: s3.IBucket
    key: str


@dataclass(frozen=True)
class BoundEnclaveImage:
    """An image bound into a vault: PCRs (strings or deploy-time tokens) and the EIF object."""

    pcr0: str
    eif: EifLocation
    pcr1: str | None = None
    pcr2: str | None = None
    pcr8: str | None = None

    @property
    def signed(self) -> bool:
        """The image is signed, so PCR8 (hash of the signing certificate) is pinned too."""
        return self.pcr8 is not None


def _validate_pcr(prop: str, value: str) -> str:
    if cdk.Token.is_unresolved(value):
        return value
    if not isinstance(value, str) or not _PCR.match(value):
        raise invalid(prop, value, "96 hexadecimal characters (a SHA-384 PCR value)")
    if set(value) == {"0"}:
        raise invalid(
            prop, value, "a real measurement, not all zeros (all-zero PCRs mean debug mode)"
        )
    return value.lower()


class EnclaveImage(abc.ABC):
    """The enclave image a vault runs; build one with a ``from_*`` method."""

    @staticmethod
    def from_measurements(pcr0: str, pcr8: str | None = None, *, eif: EifLocation) -> EnclaveImage:
        """A prebuilt image: its PCR0 (and PCR8 when signed) and where its EIF is stored.

        :param pcr0: SHA-384 of the image (``nitro-cli build-enclave`` / ``describe-eif``), 96 hex.
        :param pcr8: SHA-384 of the signing certificate when the EIF is signed. Default: unsigned
            (PCR8 is not pinned).
        :param eif: the EIF's S3 bucket and key; the hosts get ``s3:GetObject`` on that object only.
        """
        return _MeasuredImage(
            pcr0=_validate_pcr("pcr0", pcr0),
            pcr8=None if pcr8 is None else _validate_pcr("pcr8", pcr8),
            eif=eif,
        )

    @staticmethod
    def bundled(*, build_timeout: cdk.Duration | None = None) -> EnclaveImage:
        """cdk-trn's own manifest signer (``cdk_trn_runtime/enclave``, its ``Dockerfile`` there),
        built into an EIF during the deploy. Only that subpackage is uploaded."""
        return EnclaveImage.from_directory(
            RUNTIME_ROOT,
            dockerfile="cdk_trn_runtime/enclave/Dockerfile",
            build_timeout=build_timeout,
            exclude=tuple(runtime_excludes("enclave")),
        )

    @staticmethod
    def from_directory(
        path: str | Path,
        *,
        dockerfile: str = "Dockerfile",
        build_timeout: cdk.Duration | None = None,
        exclude: tuple[str, ...] = (),
    ) -> EnclaveImage:
        """A Docker build context built into an EIF during the deploy.

        :param path: the directory; an S3 asset and the build context of ``docker build``.
        :param dockerfile: the Dockerfile, relative to ``path`` and inside it (so the image may
            copy files from anywhere in the context). Default: ``Dockerfile``.
        :param build_timeout: CodeBuild timeout, 10 to 45 minutes (CloudFormation waits at most an
            hour for the custom resource). Default: 40 minutes.
        :param exclude: gitignore-style patterns left out of the asset (``IgnoreMode.GIT``).
            Default: none besides ``__pycache__``.
        """
        directory = Path(path)
        if not directory.is_dir():
            raise invalid("path", str(path), "an existing directory holding a Dockerfile")
        relative = Path(dockerfile)
        if relative.is_absolute() or ".." in relative.parts or not (directory / relative).is_file():
            raise invalid("dockerfile", dockerfile, f"a file inside {directory} (relative to path)")
        timeout = build_timeout or cdk.Duration.minutes(40)
        if not cdk.Token.is_unresolved(timeout.to_minutes()):
            minutes = timeout.to_minutes()
            low, high = _BUILD_TIMEOUT_RANGE
            if not low <= minutes <= high:
                raise invalid("build_timeout", f"{minutes} minutes", f"{low} to {high} minutes")
        return _DirectoryImage(
            directory=directory.resolve(),
            dockerfile=relative.as_posix(),
            timeout=timeout,
            exclude=exclude,
        )

    @abc.abstractmethod
    def bind(
        self,
        scope: Construct,
        *,
        bucket: s3.IBucket,
        encryption_key: kms.IKey,
        vpc: ec2.IVpc,
        subnet: ec2.ISubnet,
        removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.RETAIN,
    ) -> BoundEnclaveImage:
        """Create what the image needs in ``scope``; ``bucket``/``encryption_key`` hold builds,
        and deploy-time functions run in ``subnet`` of ``vpc``.

        ``removal_policy`` is the owner's ``destroy_on_delete`` (``EnclaveKeyVault``'s): a build's
        log groups are encrypted with ``encryption_key``, so they follow the key's rule rather
        than a switch of their own (a log group retained past its deleted key could not be read).
        """


@dataclass(frozen=True)
class _MeasuredImage(EnclaveImage):
    pcr0: str
    pcr8: str | None
    eif: EifLocation

    def bind(
        self,
        scope: Construct,
        *,
        bucket: s3.IBucket,
        encryption_key: kms.IKey,
        vpc: ec2.IVpc,
        subnet: ec2.ISubnet,
        removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.RETAIN,
    ) -> BoundEnclaveImage:
        return BoundEnclaveImage(pcr0=self.pcr0, pcr8=self.pcr8, eif=self.eif)


@dataclass(frozen=True)
class _DirectoryImage(EnclaveImage):
    directory: Path
    dockerfile: str
    timeout: cdk.Duration
    exclude: tuple[str, ...]

    def bind(
        self,
        scope: Construct,
        *,
        bucket: s3.IBucket,
        encryption_key: kms.IKey,
        vpc: ec2.IVpc,
        subnet: ec2.ISubnet,
        removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.RETAIN,
    ) -> BoundEnclaveImage:
        build = EifBuild(
            scope,
            "EifBuild",
            directory=self.directory,
            dockerfile=self.dockerfile,
            bucket=bucket,
            encryption_key=encryption_key,
            vpc=vpc,
            subnet=subnet,
            timeout=self.timeout,
            exclude=self.exclude,
            removal_policy=removal_policy,
        )
        return BoundEnclaveImage(
            pcr0=build.pcr0,
            pcr1=build.pcr1,
            pcr2=build.pcr2,
            eif=EifLocation(bucket=bucket, key=build.eif_key),
        )


class EifBuild(Construct):
    """Builds an EIF from a Docker build context during the deploy and exposes its PCRs.

    The CodeBuild project runs without a VPC: ``docker build`` pulls base images and packages from
    public registries, which the vault's isolated subnet cannot reach, and the project holds no
    secret (its role can read the source asset and write two objects, nothing of the vault key).
    What the vault trusts is the measurement of what was built, pinned in the key policy; pin base
    images by digest in the Dockerfile so that the measured image is the one you reviewed.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        directory: Path,
        bucket: s3.IBucket,
        encryption_key: kms.IKey,
        vpc: ec2.IVpc,
        subnet: ec2.ISubnet,
        timeout: cdk.Duration,
        dockerfile: str = "Dockerfile",
        exclude: tuple[str, ...] = (),
        removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, id)
        stack = cdk.Stack.of(self)
        self.source = s3_assets.Asset(
            self,
            "Source",
            path=str(directory),
            exclude=["__pycache__/", *exclude],
            ignore_mode=cdk.IgnoreMode.GIT,
        )
        # Deterministic per source: the same context always lands under the same prefix.
        self.prefix = f"eif/{self.source.asset_hash}"
        self.eif_key = f"{self.prefix}/{EIF_NAME}"
        measurements_key = f"{self.prefix}/{MEASUREMENTS_NAME}"

        build_logs = logs.LogGroup(
            self,
            "BuildLogs",
            encryption_key=encryption_key,
            retention=logs.RetentionDays.ONE_YEAR,
            removal_policy=removal_policy,
        )
        # The build's role is ours, with one customer managed policy: CDK's CodeBuild L2 would
        # write its grants inline, including its default /aws/codebuild/<project> log group,
        # report groups and wildcard KMS actions this build does not use.
        self.build_role = iam.Role(
            self,
            "BuildRole",
            assumed_by=iam.ServicePrincipal("codebuild.amazonaws.com"),
            description="cdk-trn enclave image build: read the build context, write the EIF",
        )
        self.build_policy = iam.ManagedPolicy(
            self,
            "BuildPolicy",
            description="cdk-trn enclave image build: read the build context, write the EIF",
            roles=[self.build_role],
            statements=[
                iam.PolicyStatement(
                    sid="WriteBuildLogs",
                    actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                    # The log group's Arn attribute ends in ":*", which covers its streams.
                    resources=[build_logs.log_group_arn],
                ),
                # No CodeBuild source: the buildspec fetches the one asset object itself, so the
                # role needs s3:GetObject on that object instead of Source.s3's read-everything set.
                iam.PolicyStatement(
                    sid="ReadTheBuildContext",
                    actions=["s3:GetObject"],
                    resources=[self.source.bucket.arn_for_objects(self.source.s3_object_key)],
                ),
                iam.PolicyStatement(
                    sid="WriteTheEifAndItsMeasurements",
                    actions=["s3:PutObject"],
                    resources=[
                        bucket.arn_for_objects(self.eif_key),
                        bucket.arn_for_objects(measurements_key),
                    ],
                ),
                # The vault's storage key encrypts the state bucket (the two objects written
                # through S3) and the project's own build output.
                iam.PolicyStatement(
                    sid="EncryptWithTheVaultsStorageKey",
                    actions=["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"],
                    resources=[encryption_key.key_arn],
                ),
            ],
        )
        self.project = codebuild.Project(
            self,
            "Project",
            description="Builds the cdk-trn enclave image (docker build + nitro-cli build-enclave)",
            build_spec=codebuild.BuildSpec.from_object(eif_buildspec(dockerfile)),
            environment=codebuild.BuildEnvironment(
                build_image=codebuild.LinuxBuildImage.AMAZON_LINUX_2023_5,
                compute_type=codebuild.ComputeType.MEDIUM,
                privileged=True,
            ),
            role=self.build_role.without_policy_updates(),
            encryption_key=encryption_key,
            logging=codebuild.LoggingOptions(
                cloud_watch=codebuild.CloudWatchLoggingOptions(log_group=build_logs)
            ),
            timeout=timeout,
        )
        # Privileged mode (nitro-cli build-enclave drives a Docker daemon): cdk-nag 3's
        # AwsSolutions has no CB3 rule any more, so there is nothing to acknowledge.

        self.provider = DeployTimeProvider(
            self,
            "Provider",
            purpose="enclave image build",
            subpackage="eif_builder",
            handler_module="cdk_trn_runtime.eif_builder.handler",
            statements=[
                iam.PolicyStatement(
                    sid="RunTheBuild",
                    actions=[
                        "codebuild:StartBuild",
                        "codebuild:BatchGetBuilds",
                        "codebuild:StopBuild",
                    ],
                    resources=[self.project.project_arn],
                ),
                iam.PolicyStatement(
                    sid="ReadTheMeasurements",
                    actions=["s3:GetObject"],
                    resources=[bucket.arn_for_objects(measurements_key)],
                ),
                iam.PolicyStatement(
                    sid="DecryptTheMeasurementsThroughS3",
                    actions=["kms:Decrypt"],
                    resources=[encryption_key.key_arn],
                    conditions={
                        "StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}
                    },
                ),
            ],
            encryption_key=encryption_key,
            vpc=vpc,
            subnet=subnet,
            total_timeout=cdk.Duration.minutes(timeout.to_minutes() + _WAIT_MARGIN_MINUTES),
            query_interval=cdk.Duration.seconds(30),
            removal_policy=removal_policy,
        )
        self.resource = self.provider.custom_resource(
            self,
            "Resource",
            resource_type="Custom::CdkTrnEifBuild",
            properties=EifBuildProperties(
                project_name=self.project.project_name,
                source_bucket=self.source.s3_bucket_name,
                source_key=self.source.s3_object_key,
                output_bucket=bucket.bucket_name,
                output_prefix=self.prefix,
            ).to_properties(),
        )
        # The build runs as the project's role: start it only once that role's policy exists.
        self.resource.node.add_dependency(self.build_policy)
        acknowledge_regulated(
            self.project,
            "CodeBuildProjectSourceRepoUrl",
            "the project has no source repository at all (NO_SOURCE); its buildspec fetches the "
            "one S3 asset of the build context",
        )
        self.pcr0 = self.resource.get_att_string(EifBuildAttributes.key_of("pcr0"))
        self.pcr1 = self.resource.get_att_string(EifBuildAttributes.key_of("pcr1"))
        self.pcr2 = self.resource.get_att_string(EifBuildAttributes.key_of("pcr2"))
