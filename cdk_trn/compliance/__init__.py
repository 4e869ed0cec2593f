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
"""

from __future__ import annotations

from cdk_trn.compliance.cfn_lint_runner import LintIssue, lint_template
from cdk_trn.compliance.gate import (
    ComplianceError,
    enable_compliance,
    enabled_packs,
    findings_of,
    synth_checked,
)
from cdk_trn.compliance.packs import CLOUDFORMATION_VALIDATE, DEFAULT_PACKS, Pack
from cdk_trn.compliance.report import ComplianceReport, Finding, load_report
from cdk_trn.compliance.trainium_checks import TrainiumChecks

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
