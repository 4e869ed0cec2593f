#!/usr/bin/env python3
"""The default cdk-trn app: `make synth` (offline) or `npx cdk deploy --all` (with credentials).

Configuration comes from cdk.json context, overridden with `-c key=value`. Compliance is part of
synth: five packs run as validation plugins and any unacknowledged finding fails the synth.
"""

from __future__ import annotations

import sys

import aws_cdk as cdk

from cdk_trn.compliance import DEFAULT_PACKS, ComplianceError, enable_compliance, synth_checked
from cdk_trn.errors import CdkTrnError
from cdk_trn.summary import format_cluster_summary
from stacks import build_default_app


def main() -> int:
    try:  # aws-cdk-lib's CloudFormation Validate runs as a kit plugin, cached by content
        app, cached = cdk.App(builtin_cloud_formation_validation=False), True
    except TypeError:  # an aws-cdk-lib without the prop (2.270) runs its own on every synth
        app, cached = cdk.App(), False
    try:
        packs = app.node.try_get_context("compliancePacks") or DEFAULT_PACKS
        enable_compliance(app, packs, cache_cloudformation_validate=cached)
        default = build_default_app(app)
    except CdkTrnError as error:
        print(f"cdk-trn: invalid configuration: {error}", file=sys.stderr)
        return 2
    try:
        # One verdict with the CLI: open findings, warnings and unused acknowledgments fail.
        report = synth_checked(app)
    except ComplianceError as error:
        print(f"cdk-trn: {error}", file=sys.stderr)  # one line per problem, printed once
        return 1
    summary = format_cluster_summary(
        default.cluster,
        default.storage_stack.file_system,
        scheduler=default.cluster_stack.scheduler,
        vault=default.vault_stack.vault if default.vault_stack else None,
    )
    print(summary, file=sys.stderr)
    # The acknowledgments with their reasons are listed by `python -m cdk_trn.compliance cdk.out`.
    print("\n".join(report.summary_lines(details=False)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
