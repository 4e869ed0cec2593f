"""The rule packs the compliance kit can enable, and how each is built.

Four cdk-nag 3 packs (AwsSolutions, NIST 800-53 rev 5, HIPAA Security, PCI DSS 3.2.1) plus
cdk-trn's ``TrainiumChecks`` are the default; NIST 800-53 rev 4 and Serverless can be chosen.
A pack's value is its plugin name, which is also its rule-id prefix and the namespace of its
acknowledgments (``AwsSolutions::AwsSolutions-IAM5``). This module imports no CDK code until a
pack is built, so the command line can use the names without starting jsii.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cdk_trn.errors import invalid

if TYPE_CHECKING:
    import aws_cdk as cdk
    from constructs import IConstruct

#: The plugin aws-cdk-lib adds by itself (template checks in the style of cfn-lint). Not a pack
#: one enables, but its findings are in the report and can be filtered on by this name.
CLOUDFORMATION_VALIDATE = "CloudFormation Validate"


class Pack(enum.Enum):
    AWS_SOLUTIONS = "AwsSolutions"
    NIST_800_53_R5 = "NIST.800.53.R5"
    HIPAA_SECURITY = "HIPAA.Security"
    PCI_DSS_321 = "PCI.DSS.321"
    TRAINIUM = "TrainiumChecks"
    NIST_800_53_R4 = "NIST.800.53.R4"
    SERVERLESS = "Serverless"

    @classmethod
    def parse(cls, value: Pack | str) -> Pack:
        """A pack from itself, its plugin name (``NIST.800.53.R5``) or its member name."""
        if isinstance(value, Pack):
            return value
        for pack in cls:
            if value in (pack.value, pack.name):
                return pack
        allowed = ", ".join(p.value for p in cls)
        raise invalid("packs", value, f"names among {allowed}")

    @classmethod
    def parse_all(cls, values: Iterable[Pack | str] | str) -> tuple[Pack, ...]:
        """Packs from an iterable or a comma-separated string (as given with ``-c``)."""
        if isinstance(values, str):
            values = [v.strip() for v in values.split(",") if v.strip()]
        packs = tuple(dict.fromkeys(cls.parse(v) for v in values))
        if not packs:
            raise invalid("packs", values, "at least one pack")
        return packs


DEFAULT_PACKS: tuple[Pack, ...] = (
    Pack.AWS_SOLUTIONS,
    Pack.NIST_800_53_R5,
    Pack.HIPAA_SECURITY,
    Pack.PCI_DSS_321,
    Pack.TRAINIUM,
)


def create_pack(
    pack: Pack, scope: IConstruct, *, verbose: bool = False
) -> cdk.IPolicyValidationPlugin:
    """A fresh validation plugin for ``pack``, ready for ``Validations.of(app).add_plugins``."""
    import cdk_nag

    from cdk_trn.compliance.trainium_checks import TrainiumChecks

    factories = {
        Pack.AWS_SOLUTIONS: cdk_nag.AwsSolutionsChecks,
        Pack.NIST_800_53_R5: cdk_nag.NIST80053R5Checks,
        Pack.HIPAA_SECURITY: cdk_nag.HIPAASecurityChecks,
        Pack.PCI_DSS_321: cdk_nag.PCIDSS321Checks,
        Pack.TRAINIUM: TrainiumChecks,
        Pack.NIST_800_53_R4: cdk_nag.NIST80053R4Checks,
        Pack.SERVERLESS: cdk_nag.ServerlessChecks,
    }
    plugin: cdk.IPolicyValidationPlugin = factories[pack](scope, verbose=verbose)
    return plugin
