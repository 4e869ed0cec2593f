"""``python -m cdk_trn.compliance <cloud-assembly-dir>``: the verdict on a synthesized assembly.

The same verdict as ``synth_checked`` (``cdk_trn.compliance.verdict``): open pack findings (errors,
and warnings unless ``--allow-warnings``), cfn-lint errors and warnings for every template in its
stack's region, unused acknowledgments (unless ``--allow-unused-acknowledgments``), and an
assembly on which no pack ran ("no compliance pack ran on this assembly"). What needs no
constructs still runs there: cfn-lint, and TrainiumChecks on the templates with
``--packs TrainiumChecks``.

Options: ``--packs A,B`` (the packs to judge; default: those that ran at synth),
``--ignore-cfn-lint RULE=REASON`` (repeatable; listed with the reason), ``--format
text|json|sarif`` (SARIF 2.1.0 for code-scanning UIs), ``--no-lint-cache`` (run cfn-lint on every
template, as ``CDK_TRN_LINT_CACHE=off`` does; by default findings are cached by template
content). Exit 0 on PASS, 1 on FAIL, 2 for a directory that is not an assembly or a bad option.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from cdk_trn.compliance.acknowledge import MIN_REASON_LENGTH
from cdk_trn.compliance.cfn_lint_runner import CACHE_ENV
from cdk_trn.compliance.packs import Pack
from cdk_trn.compliance.verdict import Evidence, Policy, evaluate

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_SARIF_LEVEL = {"error": "error", "fatal": "error", "custom": "error", "warning": "warning"}


def _ignore(value: str) -> tuple[str, str]:
    rule, _, reason = value.partition("=")
    rule = rule.strip()
    if rule[:1] not in ("E", "W") or len(reason.strip()) < MIN_REASON_LENGTH:
        raise argparse.ArgumentTypeError(
            f"--ignore-cfn-lint wants RULE=REASON with a cfn-lint id and a reason of at least "
            f"{MIN_REASON_LENGTH} characters, got {value!r}"
        )
    return rule, reason.strip()


def _packs(value: str) -> tuple[str, ...]:
    try:
        return tuple(p.value for p in Pack.parse_all(value))
    except Exception as error:  # CdkTrnError from Pack.parse names the allowed packs
        raise argparse.ArgumentTypeError(str(error)) from error


def sarif(evidence: Evidence) -> dict[str, Any]:
    """SARIF 2.1.0: one result per finding; acknowledged ones carry a suppression with the
    reason; unused acknowledgments are results of rule ``unused-acknowledgment``."""
    rules: dict[str, dict[str, Any]] = {}
    results = []
    for f in evidence.report.findings:
        rules.setdefault(
            f.rule_id,
            {"id": f.rule_id, "shortDescription": {"text": f.description[:1000] or f.rule_id}},
        )
        result: dict[str, Any] = {
            "ruleId": f.rule_id,
            "level": _SARIF_LEVEL.get(f.level, "note"),
            "message": {"text": f"{f.description} [{f.pack}] at {f.path}"},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": f.template or "manifest.json"},
                        "region": {"startLine": 1},
                    },
                    "logicalLocations": [
                        {"fullyQualifiedName": f.path, "name": f.logical_id or f.path}
                    ],
                }
            ],
            "properties": {"pack": f.pack, "acknowledgmentId": f.acknowledgment_id},
        }
        if f.acknowledged:
            result["suppressions"] = [{"kind": "inSource", "justification": f.reason or ""}]
        results.append(result)
    for u in evidence.unused:
        rules.setdefault(
            "unused-acknowledgment",
            {"id": "unused-acknowledgment", "shortDescription": {"text": "covers no finding"}},
        )
        results.append(
            {
                "ruleId": "unused-acknowledgment",
                "level": "error" if evidence.policy.fail_on_unused_acknowledgments else "warning",
                "message": {"text": u.line()},
                "locations": [
                    {"logicalLocations": [{"fullyQualifiedName": u.acknowledgment.path}]}
                ],
            }
        )
    if not evidence.packs_ran:
        results.append(
            {"ruleId": "no-pack-ran", "level": "error", "message": {"text": evidence.problems[0]}}
        )
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "cdk-trn compliance",
                        "informationUri": "https://github.com/cdklabs/cdk-nag",
                        "rules": list(rules.values()),
                    }
                },
                "results": results,
            }
        ],
    }


def run(
    assembly_dir: Path,
    out: TextIO | None = None,
    *,
    packs: Sequence[str] | None = None,
    ignores: dict[str, str] | None = None,
    output: str = "text",
    policy: Policy | None = None,
    lint_cache: bool | None = None,
) -> int:
    stream = out if out is not None else sys.stdout
    try:
        evidence = evaluate(
            assembly_dir,
            policy=policy,
            packs=packs,
            ignore_cfn_lint=ignores,
            lint_cache=lint_cache,
        )
    except FileNotFoundError as error:
        print(f"cdk_trn.compliance: {error}", file=sys.stderr)
        return 2
    if output == "json":
        text = json.dumps(evidence.to_json(), indent=1)
    elif output == "sarif":
        text = json.dumps(sarif(evidence), indent=1)
    else:
        lines = []
        if evidence.report.findings:
            lines += [evidence.report.format_table(), ""]
        lines += evidence.summary_lines()
        if evidence.linted:
            cached = len(evidence.linted) - len(evidence.relinted)
            source = f" ({cached} of {len(evidence.linted)} from the cache)" if cached else ""
            lines += [f"cfn-lint{source}:", *(f"  {stack}" for stack in evidence.linted)]
        lines += [f"  {p}" for p in evidence.problems]
        text = "\n".join(lines)
    print(text, file=stream)
    return 0 if evidence.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdk_trn.compliance",
        description="The compliance verdict on a synthesized cloud assembly.",
    )
    parser.add_argument("assembly_dir", type=Path, help="cloud assembly directory, e.g. cdk.out")
    parser.add_argument("--packs", type=_packs, help="packs to judge, comma-separated")
    parser.add_argument(
        "--ignore-cfn-lint",
        type=_ignore,
        action="append",
        default=[],
        metavar="RULE=REASON",
        help="ignore a cfn-lint rule in every template, saying why (listed in the output)",
    )
    parser.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    parser.add_argument("--allow-warnings", action="store_true")
    parser.add_argument("--allow-unused-acknowledgments", action="store_true")
    parser.add_argument(
        "--no-lint-cache",
        dest="lint_cache",
        action="store_const",
        const=False,
        default=None,
        help=f"run cfn-lint on every template (also: {CACHE_ENV}=off)",
    )
    args = parser.parse_args(argv)
    policy = Policy(
        fail_on_warnings=not args.allow_warnings,
        fail_on_unused_acknowledgments=not args.allow_unused_acknowledgments,
    )
    return run(
        args.assembly_dir,
        packs=args.packs,
        ignores=dict(args.ignore_cfn_lint),
        output=args.format,
        policy=policy,
        lint_cache=args.lint_cache,
    )


if __name__ == "__main__":
    sys.exit(main())
