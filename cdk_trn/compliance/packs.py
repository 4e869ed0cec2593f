"""The rule packs the compliance kit can enable, and how each is built.

Four cdk-nag 3 packs (AwsSolutions, NIST 800-53 rev 5, HIPAA Security, PCI DSS 3.2.1) plus
cdk-trn's ``TrainiumChecks`` are the default; NIST 800-53 rev 4 and Serverless can be chosen.
A pack's value is its plugin name, which is also its rule-id prefix and the namespace of its
acknowledgments (``AwsSolutions::AwsSolutions-IAM5``). This module imports no CDK code until a
pack is built, so the command line can use the names without starting jsii.
"""

from __future__ import annotations

import enum
import functools
import importlib.util
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from cdk_trn.errors import invalid

if TYPE_CHECKING:
    import aws_cdk as cdk
    from constructs import IConstruct

#: The plugin aws-cdk-lib adds by itself (template checks in the style of cfn-lint). Not a pack
#: one enables, but its findings are in the report and can be filtered on by this name.
CLOUDFORMATION_VALIDATE = "CloudFormation Validate"
#: The pack name findings of cfn-lint itself carry in the kit's report.
CFN_LINT = "cfn-lint"


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


_NAG_PACK_FILES = {
    "AwsSolutions": "aws-solutions.js",
    "NIST.800.53.R5": "nist-800-53-r5.js",
    "HIPAA.Security": "hipaa-security.js",
    "PCI.DSS.321": "pci-dss-321.js",
    "NIST.800.53.R4": "nist-800-53-r4.js",
    "Serverless": "serverless.js",
}
_APPLY_RULE = re.compile(r"applyRule\(\{(.*?)\}\);", re.S)
_SUFFIX = re.compile(r"ruleSuffixOverride:\s*['\"]([^'\"]+)['\"]")
_RULE_FUNCTION = re.compile(r"\brule:\s*(?:[\w$]+\.)?([A-Za-z0-9_]+)")


@functools.cache
def pack_rule_ids(pack: str) -> frozenset[str] | None:
    """Every rule id ``pack`` can report (``AwsSolutions-IAM4``), or ``None`` if unknown.

    cdk-nag packs do not list their rules through jsii, so they are read from the installed
    cdk-nag's own JavaScript (each ``applyRule({...})`` names a suffix or a rule function), which
    keeps the list right for whatever cdk-nag 3.x is installed.
    """
    if pack == "TrainiumChecks":
        from cdk_trn.compliance.rules.efa import TRN1, TRN2
        from cdk_trn.compliance.rules.fsx import TRN7, TRN8
        from cdk_trn.compliance.rules.instances import TRN3, TRN4, TRN5, TRN6, TRN10
        from cdk_trn.compliance.rules.kms import TRN9

        rules = (TRN1, TRN2, TRN3, TRN4, TRN5, TRN6, TRN7, TRN8, TRN9, TRN10)
        return frozenset(f"{pack}-{rule.id}" for rule in rules)
    name = _NAG_PACK_FILES.get(pack)
    spec = importlib.util.find_spec("cdk_nag")
    if name is None or spec is None or not spec.submodule_search_locations:
        return None
    bundles = sorted(Path(list(spec.submodule_search_locations)[0], "_jsii").glob("*.tgz"))
    if not bundles:
        return None
    with tarfile.open(bundles[-1]) as bundle:
        member = bundle.extractfile(f"package/lib/packs/{name}")
        if member is None:
            return None
        source = member.read().decode("utf-8").split("//# sourceMappingURL", 1)[0]
    ids = set()
    for block in _APPLY_RULE.findall(source):
        match = _SUFFIX.search(block) or _RULE_FUNCTION.search(block)
        if match:
            ids.add(f"{pack}-{match.group(1)}")
    return frozenset(ids) or None
