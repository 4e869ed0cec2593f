"""The enclave image build: what ``cdk_trn.enclave.image.EnclaveImageBuild`` sends to its custom
resource, what the handler (``cdk_trn_runtime.eif_builder.handler``) hands the CodeBuild project
and what it answers.

Standard library only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cdk_trn_runtime.contract.message import Message, key

#: The objects a build writes under its output prefix: the image and ``nitro-cli build-enclave``'s
#: JSON (its ``Measurements``).
EIF_NAME = "enclave.eif"
MEASUREMENTS_NAME = "measurements.json"


@dataclass(frozen=True)
class EifBuildProperties(Message):
    """The ``Custom::CdkTrnEifBuild`` resource's properties."""

    DESCRIPTION = "EIF build properties"

    project_name: str = key("ProjectName", doc="the CodeBuild project that builds the image")
    source_bucket: str = key("SourceBucket", doc="the build context's asset bucket")
    source_key: str = key("SourceKey", doc="the build context's asset object (a zip)")
    output_bucket: str = key("OutputBucket", doc="where the EIF and its measurements go")
    output_prefix: str = key("OutputPrefix", doc="their prefix, one per build context")

    def validate(self) -> None:
        for field in dataclasses.fields(self):
            if not getattr(self, field.name):
                raise self.invalid(field.name, "not empty")

    @property
    def prefix(self) -> str:
        """The output prefix without leading or trailing slashes."""
        return self.output_prefix.strip("/")


@dataclass(frozen=True)
class EifBuildEnvironment(Message):
    """The variables the handler starts a build with (read by the buildspec,
    ``cdk_trn_runtime.eif_builder.buildspec``)."""

    DESCRIPTION = "EIF build environment"

    source_bucket: str = key("SOURCE_BUCKET")
    source_key: str = key("SOURCE_KEY")
    eif_bucket: str = key("EIF_BUCKET")
    eif_prefix: str = key("EIF_PREFIX")


@dataclass(frozen=True)
class EifBuildAttributes(Message):
    """What the handler answers once the build succeeded (``Fn::GetAtt`` attributes)."""

    DESCRIPTION = "EIF build attributes"

    build_id: str = key("BuildId")
    pcr0: str | None = key("PCR0", default=None, doc="SHA-384 of the image, lower-case hex")
    pcr1: str | None = key("PCR1", default=None, doc="kernel and bootstrap")
    pcr2: str | None = key("PCR2", default=None, doc="application")
    eif_bucket: str | None = key("EifBucket", default=None)
    eif_key: str | None = key("EifKey", default=None)
