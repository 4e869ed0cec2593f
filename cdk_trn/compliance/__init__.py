"""Synth-time compliance for any CDK app: cdk-nag packs, ``TrainiumChecks``, and cfn-lint.

In an app::

    app = cdk.App()
    enable_compliance(app)            # AwsSolutions, NIST R5, HIPAA, PCI DSS, TrainiumChecks
    ...                               # stacks
    report = synth_checked(app)       # raises ComplianceError on an unacknowledged error finding
    print(report.format_summary())

In tests: ``findings_of(stack)`` returns :class:`Finding` records; ``lint_template(template,
region)`` returns cfn-lint's errors and warnings. On the command line:
``python -m cdk_trn.compliance cdk.out``.

The CDK-dependent names (``enable_compliance``, ``synth_checked``, ``findings_of``,
``ComplianceError``, ``TrainiumChecks``) load aws-cdk-lib on first use, so the command line and
the report types work without starting jsii.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cdk_trn.compliance.cfn_lint_runner import LintIssue, lint_template
from cdk_trn.compliance.packs import CLOUDFORMATION_VALIDATE, DEFAULT_PACKS, Pack
from cdk_trn.compliance.report import ComplianceReport, Finding, load_report

if TYPE_CHECKING:
    from cdk_trn.compliance.gate import (
        ComplianceError,
        enable_compliance,
        enabled_packs,
        findings_of,
        synth_checked,
    )
    from cdk_trn.compliance.trainium_checks import TrainiumChecks

_LAZY = {
    "ComplianceError": "cdk_trn.compliance.gate",
    "enable_compliance": "cdk_trn.compliance.gate",
    "enabled_packs": "cdk_trn.compliance.gate",
    "findings_of": "cdk_trn.compliance.gate",
    "synth_checked": "cdk_trn.compliance.gate",
    "TrainiumChecks": "cdk_trn.compliance.trainium_checks",
}

__all__ = [
    "CLOUDFORMATION_VALIDATE",
    "DEFAULT_PACKS",
    "ComplianceError",
    "ComplianceReport",
    "Finding",
    "LintIssue",
    "Pack",
    "TrainiumChecks",
    "enable_compliance",
    "enabled_packs",
    "findings_of",
    "lint_template",
    "load_report",
    "synth_checked",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cdk_trn.compliance' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module), name)
