"""``python -m cdk_trn.compliance <cloud-assembly-dir>``: the compliance evidence of an assembly.

Prints every finding of the assembly's validation report (open ones with their description,
acknowledged ones with their reason), the summary per pack, and cfn-lint's errors and warnings
for every template in its stack's region. Exit 0 only if nothing is open: no unacknowledged
finding of any level, no cfn-lint error or warning. Exit 1 otherwise (also when the assembly has
no validation report: then there is no evidence), 2 for a directory that is not an assembly.
Starts no jsii process: it reads files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cdk_trn.compliance.assembly import stack_templates
from cdk_trn.compliance.cfn_lint_runner import DEFAULT_REGION, ignored_checks, lint_template
from cdk_trn.compliance.report import load_report


def _cfn_lint_version() -> str:
    from importlib.metadata import version

    return version("cfn-lint")


def run(assembly_dir: Path, out: object = None) -> int:
    stream = out if out is not None else sys.stdout

    def say(text: str = "") -> None:
        print(text, file=stream)  # type: ignore[arg-type]

    try:
        templates = stack_templates(assembly_dir)
    except FileNotFoundError as error:
        print(f"cdk_trn.compliance: {error}", file=sys.stderr)
        return 2

    failed = False
    report = load_report(assembly_dir)
    if report is None:
        say(
            f"No validation report in {assembly_dir}: the app ran no validation plugins. "
            "Call cdk_trn.compliance.enable_compliance(app) before synthesizing."
        )
        failed = True
    else:
        say(f"== Validation report: {report.source}")
        if report.findings:
            say(report.format_table())
            say()
        say("\n".join(report.summary_lines(details=False)))
        failed |= bool(report.unacknowledged)

    say()
    say(f"== cfn-lint {_cfn_lint_version()} (errors and warnings, per stack region)")
    errors = warnings = 0
    for stack in templates:
        region = stack.region or DEFAULT_REGION
        issues = lint_template(stack.template_path, region)
        stack_errors = sum(1 for i in issues if i.level == "error")
        errors += stack_errors
        warnings += len(issues) - stack_errors
        note = "" if stack.region else " (region-agnostic stack, linted for the default region)"
        say(
            f"{stack.name} [{region}]{note}: {stack_errors} errors, "
            f"{len(issues) - stack_errors} warnings"
        )
        for issue in issues:
            say(f"  {issue}")
        for logical_id, rule, reason in ignored_checks(stack.template_path):
            say(f"  silenced {rule} on {logical_id}: {reason}")
    failed |= bool(errors or warnings)

    say()
    open_findings = len(report.unacknowledged) if report else "no report"
    verdict = "FAIL" if failed else "PASS"
    say(
        f"{verdict}: {open_findings} unacknowledged findings, "
        f"{errors} cfn-lint errors, {warnings} cfn-lint warnings"
    )
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdk_trn.compliance",
        description="Findings of a synthesized cloud assembly: validation report and cfn-lint.",
    )
    parser.add_argument("assembly_dir", type=Path, help="cloud assembly directory, e.g. cdk.out")
    args = parser.parse_args(argv)
    return run(args.assembly_dir)


if __name__ == "__main__":
    sys.exit(main())
