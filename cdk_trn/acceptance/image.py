"""NeuronTrainingImage: which container image the acceptance run (or a user's job) runs.

Three sources: the bundled training container (``cdk_trn_runtime/container``, built and pushed to
the bootstrap ECR repository by ``cdk deploy`` as a ``DockerImageAsset``), another directory with a
Dockerfile (typically ``FROM`` the bundled image plus a researcher's packages), or an image already
in ECR (by repository, or by its URI: ``from_reference`` takes either a directory or a URI, which
is what the default app's ``-c trainingImage=`` passes). Like ``aws_ecs.ContainerImage``, the value
is created without a scope and bound to one by the construct that uses it (``bind``), which is
where the asset is created; building the asset needs Docker only at deploy time, never at synth.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk_trn._runtime import RUNTIME_ROOT, runtime_excludes
from cdk_trn.errors import invalid

#: The bundled container's Dockerfile, relative to its build context (:data:`RUNTIME_ROOT`).
BUNDLED_DOCKERFILE = "cdk_trn_runtime/container/Dockerfile"
#: The subpackages of cdk_trn_runtime the bundled container ships: the suite, the Slurm and
#: training tooling, and the checkpoint signer (``provenance`` with the vault's node-side client in
#: ``vault``; its ``cryptography`` and ``botocore`` come with the base image). Not ``enclave``:
#: verifying attestations happens off the cluster, by whoever audits it.
BUNDLED_SUBPACKAGES = (
    "container",
    "launch",
    "suite",
    "slurm",
    "train",
    "monitoring",
    "provenance",
    "vault",
    "cost",  # tokens per dollar in the trainer's ``train: done`` line
)
#: Files in an image directory that never belong in the build context (or the asset hash).
ASSET_EXCLUDES = (
    "**/__pycache__",
    "**/*.pyc",
    "**/.pytest_cache",
    "**/.mypy_cache",
    "**/.ruff_cache",
)

#: An image URI in a private ECR registry, with its tag or digest (never an implicit ``latest``).
_ECR_URI = re.compile(
    r"(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d{1,2})"
    r"\.amazonaws\.com(?P<cn>\.cn)?/(?P<name>[a-z0-9][a-z0-9._/-]{0,255})"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127})|@(?P<digest>sha256:[a-f0-9]{64}))"
)

_PULL_ACTIONS = (
    "ecr:BatchCheckLayerAvailability",
    "ecr:GetDownloadUrlForLayer",
    "ecr:BatchGetImage",
)


@dataclass(frozen=True)
class BoundNeuronTrainingImage:
    """An image bound to a scope: its URI, its repository, and (for assets) the asset."""

    image_uri: str
    repository: ecr.IRepository
    asset: ecr_assets.DockerImageAsset | None = None

    def grant_pull(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` pull the image (ECR login plus the repository's read actions)."""
        return self.repository.grant_pull(grantee)

    def pull_statements(self) -> list[iam.PolicyStatement]:
        """The pull permissions as statements, for a policy the caller owns and can review."""
        return [
            iam.PolicyStatement(
                sid="PullAcceptanceImage",
                actions=list(_PULL_ACTIONS),
                resources=[self.repository.repository_arn],
            ),
            # GetAuthorizationToken has no resource-level permissions: "*" is the only resource.
            iam.PolicyStatement(
                sid="EcrLogin", actions=["ecr:GetAuthorizationToken"], resources=["*"]
            ),
        ]


class NeuronTrainingImage:
    """A container image for Trainium nodes. Build with the class methods, then ``bind``.

    Example::

        run = AcceptanceRun(stack, "Acceptance", cluster=cluster,
                            image=NeuronTrainingImage.bundled())
        run.image.image_uri
    """

    def __init__(
        self,
        *,
        directory: Path | None = None,
        repository: ecr.IRepository | None = None,
        tag_or_digest: str | None = None,
        platform: ecr_assets.Platform | None = None,
        build_args: dict[str, str] | None = None,
        file: str | None = None,
        exclude: list[str] | None = None,
        ignore_mode: cdk.IgnoreMode | None = None,
        uri: str | None = None,
    ) -> None:
        self._uri = uri
        self._directory = directory
        self._file = file
        self._exclude = list(exclude or ASSET_EXCLUDES)
        self._ignore_mode = ignore_mode
        self._repository = repository
        self._tag_or_digest = tag_or_digest
        self._platform = platform or ecr_assets.Platform.LINUX_AMD64
        self._build_args = dict(build_args or {})
        self._bound: dict[str, BoundNeuronTrainingImage] = {}

    @classmethod
    def bundled(cls) -> NeuronTrainingImage:
        """The bundled training container, ``cdk_trn_runtime/container/Dockerfile`` (linux/amd64),
        built from cdk_trn_runtime's suite, job tooling and Slurm scripts."""
        return cls(
            directory=RUNTIME_ROOT,
            file=BUNDLED_DOCKERFILE,
            exclude=runtime_excludes(*BUNDLED_SUBPACKAGES),
            ignore_mode=cdk.IgnoreMode.GIT,
        )

    @classmethod
    def from_directory(
        cls,
        path: str | os.PathLike[str],
        *,
        platform: ecr_assets.Platform | None = None,
        build_args: dict[str, str] | None = None,
    ) -> NeuronTrainingImage:
        """A directory with a Dockerfile, built and pushed by ``cdk deploy``.

        :param platform: image platform. Default: ``linux/amd64`` (trn instances are x86_64).
        :param build_args: ``docker build --build-arg`` values. Default: none.
        """
        directory = Path(path).resolve()
        if not (directory / "Dockerfile").is_file():
            raise invalid("path", str(path), "a directory containing a Dockerfile")
        return cls(directory=directory, platform=platform, build_args=build_args)

    @classmethod
    def from_ecr(cls, repository: ecr.IRepository, tag_or_digest: str) -> NeuronTrainingImage:
        """An image already in ECR: ``tag_or_digest`` is a tag or ``sha256:<64 hex>``."""
        if not cdk.Token.is_unresolved(tag_or_digest):
            cls._validate_tag_or_digest(tag_or_digest)
        return cls(repository=repository, tag_or_digest=tag_or_digest)

    @classmethod
    def from_ecr_uri(cls, uri: str) -> NeuronTrainingImage:
        """An image in a private ECR registry by its URI,
        ``<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>`` (or ``@sha256:<digest>``);
        the nodes get pull permission on that repository."""
        if not _ECR_URI.fullmatch(uri):
            raise invalid(
                "training image URI",
                uri,
                "<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag> or "
                "...@sha256:<64 hex digits>",
            )
        return cls(uri=uri)

    @classmethod
    def from_reference(cls, reference: str) -> NeuronTrainingImage:
        """A directory with a Dockerfile (built at deploy) or an ECR image URI: the value of the
        default app's ``-c trainingImage=``."""
        if not isinstance(reference, str) or not reference.strip():
            raise invalid(
                "trainingImage", reference, "a directory with a Dockerfile or an ECR image URI"
            )
        if ".dkr.ecr." in reference:
            return cls.from_ecr_uri(reference)
        directory = Path(reference).expanduser()
        if not (directory / "Dockerfile").is_file():
            raise invalid(
                "trainingImage",
                reference,
                "a directory containing a Dockerfile (e.g. FROM the bundled image plus your "
                "packages) or an ECR image URI "
                "<account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>",
            )
        return cls.from_directory(directory)

    @property
    def description(self) -> str:
        """Where the image comes from, for a stack output."""
        if self._uri:
            return self._uri
        if self._repository is not None:
            return f"ECR repository, {self._tag_or_digest or 'latest'}"
        if self._file == BUNDLED_DOCKERFILE:
            return f"bundled ({BUNDLED_DOCKERFILE})"
        return f"built from {self._directory}"

    @property
    def is_bundled(self) -> bool:
        return self._file == BUNDLED_DOCKERFILE and self._uri is None

    @staticmethod
    def _validate_tag_or_digest(value: str) -> None:
        if value.startswith("sha256:"):
            if not re.fullmatch(r"sha256:[a-f0-9]{64}", value):
                raise invalid("tag_or_digest", value, "a digest sha256:<64 lowercase hex digits>")
        elif not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", value):
            raise invalid("tag_or_digest", value, "an image tag (1-128 of A-Z a-z 0-9 _ . -)")

    @property
    def directory(self) -> Path | None:
        return self._directory

    def bind(self, scope: Construct) -> BoundNeuronTrainingImage:
        """The image for use in ``scope``'s stack (one asset per stack, created on first bind)."""
        stack = cdk.Stack.of(scope)
        key = stack.node.path
        if key in self._bound:
            return self._bound[key]
        if self._uri is not None:
            match = _ECR_URI.fullmatch(self._uri)
            assert match is not None
            partition = "aws-cn" if match["cn"] else "aws"
            repository = ecr.Repository.from_repository_arn(
                scope,
                "TrainingImageRepository",
                f"arn:{partition}:ecr:{match['region']}:{match['account']}:repository/"
                f"{match['name']}",
            )
            bound = BoundNeuronTrainingImage(image_uri=self._uri, repository=repository)
        elif self._repository is not None:
            tag = self._tag_or_digest or "latest"
            uri = (
                self._repository.repository_uri_for_digest(tag)
                if tag.startswith("sha256:")
                else self._repository.repository_uri_for_tag(tag)
            )
            bound = BoundNeuronTrainingImage(image_uri=uri, repository=self._repository)
        else:
            assert self._directory is not None
            asset = ecr_assets.DockerImageAsset(
                scope,
                "NeuronTrainingImage",
                directory=str(self._directory),
                platform=self._platform,
                build_args=self._build_args or None,
                file=self._file,
                exclude=self._exclude,
                ignore_mode=self._ignore_mode,
            )
            bound = BoundNeuronTrainingImage(
                image_uri=asset.image_uri, repository=asset.repository, asset=asset
            )
        self._bound[key] = bound
        return bound


def bundled_versions() -> dict[str, str]:
    """The bundled image's versions, read from its Dockerfile at synth: the Neuron SDK release (its
    label), torch and Python (its base image's tag), torch-neuronx (its label, which the build
    checks against the installed package) and Slurm (the base distribution's
    package; its exact version is the image's ``slurmd -V``, which the acceptance report shows)."""
    text = (RUNTIME_ROOT / BUNDLED_DOCKERFILE).read_text()
    first = text.splitlines()[0]
    tag = re.search(
        r":(?P<torch>\d+\.\d+\.\d+)-neuronx-py(?P<py>\d)(?P<pyminor>\d+)-sdk(?P<sdk>[\d.]+)-"
        r"(?P<os>ubuntu)(?P<osv>[\d.]+)",
        first,
    )
    release = re.search(r'com\.cdk-trn\.neuron-release="([^"]+)"', text)
    neuronx = re.search(r'com\.cdk-trn\.torch-neuronx="([^"]+)"', text)
    if tag is None or release is None or neuronx is None:
        raise ValueError(f"{BUNDLED_DOCKERFILE}: cannot read the versions of its first FROM")
    torch = tag["torch"]
    return {
        "neuron_sdk": release.group(1),
        "torch": torch,
        "torch_neuronx": neuronx.group(1),
        "python": f"{tag['py']}.{tag['pyminor']}",
        "slurm": f"slurm-wlm of Ubuntu {tag['osv']} (slurmd -V in the acceptance report)",
    }
