"""Synth-time compliance for any CDK app: cdk-nag packs, ``TrainiumChecks``, and cfn-lint.

In an app::

    app = cdk.App()
    enable_compliance(app)            # AwsSolutions, NIST R5, HIPAA, PCI DSS, TrainiumChecks
    ...                               # stacks
    report = synth_checked(app)       # raises ComplianceError on an unacknowledged error finding
    print(report.format_summary(), file=sys.stderr)   # stdout stays the template

In tests: ``findings_of(stack)`` returns :class:`Finding` records; ``lint_template(template,
region)`` returns cfn-lint's errors and warnings. On the command line:
``python -m cdk_trn.compliance cdk.out`` (findings with reasons, cfn-lint, and every cfn-lint
silence with its reason).

Acknowledging a finding that does not apply, always with a specific reason::

    from cdk_trn.compliance import acknowledge, acknowledge_regulated, acknowledge_wildcards
    acknowledge(bucket, "AwsSolutions-S1", "this bucket is the access-log target itself")
    acknowledge_regulated(function, "LambdaInsideVPC", "calls only control-plane APIs ...")
    acknowledge_wildcards(policy, "object ARNs under the run prefix, known at deploy time",
                          resources=[bucket.arn_for_objects("runs/*")])
    silence_cfn_lint(subnet, "W3010", "the cluster lives in one chosen AZ by design")
"""

from __future__ import annotations

from cdk_trn.compliance.acknowledge import (
    acknowledge,
    acknowledge_regulated,
    acknowledge_wildcards,
    silence_cfn_lint,
)
from cdk_trn.compliance.cfn_lint_runner import LintIssue, lint_template
from cdk_trn.compliance.depends_on import drop_implied_depends_on
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
    "acknowledge",
    "acknowledge_regulated",
    "acknowledge_wildcards",
    "drop_implied_depends_on",
    "enable_compliance",
    "enabled_packs",
    "findings_of",
    "lint_template",
    "load_report",
    "silence_cfn_lint",
    "synth_checked",
]
