"""The one verdict on a cloud assembly, shared by ``synth_checked`` and the command line.

Both call :func:`evaluate` on the assembly directory with the same :class:`Policy`, so they
cannot disagree. What it judges:

* Pack findings (cdk-nag packs, TrainiumChecks) from ``validation-report.json``: an open error
  fails; an open warning fails too unless ``fail_on_warnings=False``.
* Template checks: cfn-lint runs on every template in its stack's region. aws-cdk-lib's own
  "CloudFormation Validate" plugin reports a subset of the same rule ids but downgrades its errors
  to warnings; here both are judged by the rule id (``E...`` error, ``W...`` warning), and a
  CloudFormation Validate finding that cfn-lint also reports on the same resource is shown once.
* Acknowledgments (recorded by ``enable_compliance`` in ``cdk-trn-compliance.json``): an
  acknowledgment that no enabled pack having the rule reported on that construct or its children
  is *unused*, and fails unless ``fail_on_unused_acknowledgments=False``.
* An assembly on which no pack ran fails: there is no evidence.

Pure Python (no jsii): the command line reads assemblies with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cdk_trn.compliance.assembly import logical_ids, stack_templates
from cdk_trn.compliance.cfn_lint_runner import DEFAULT_REGION, ignored_checks, lint_templates
from cdk_trn.compliance.packs import CFN_LINT, CLOUDFORMATION_VALIDATE, pack_rule_ids
from cdk_trn.compliance.report import (
    PACKS_FILE,
    ComplianceReport,
    Finding,
    load_report,
)

NO_PACK_RAN = "no compliance pack ran on this assembly: call enable_compliance(app) before synth"
NO_REPORT = (
    "No validation report in the assembly although packs ran: the packs' findings are missing "
    "(was validation-report.json deleted, or CDK_VALIDATION=false set?)"
)
#: Namespaces of the regulated packs; one ``acknowledge_regulated`` call writes one per pack.
_REGULATED = ("NIST.800.53.R5", "HIPAA.Security", "PCI.DSS.321")
_ANNOTATION = "Annotation::"


@dataclass(frozen=True)
class Policy:
    """What fails: open errors always; open warnings and unused acknowledgments by default."""

    fail_on_warnings: bool = True
    fail_on_unused_acknowledgments: bool = True


@dataclass(frozen=True)
class Acknowledgment:
    """One ``Validations.of(path).acknowledge(id, reason)``, as recorded at synth."""

    path: str
    #: As recorded: ``AwsSolutions::AwsSolutions-S1`` (cdk-trn's form) or
    #: ``Annotation::AwsSolutions-S1`` (cdk-nag's native form, a short id, a CDK warning id).
    id: str
    reason: str

    @property
    def namespace(self) -> str:
        return self.id.split("::", 1)[0] if "::" in self.id.split("[", 1)[0] else ""

    @property
    def rule(self) -> str:
        return self.id.split("::", 1)[1] if self.namespace else self.id

    @property
    def native(self) -> bool:
        """cdk-nag's own form: cdk-nag drops what it covers before the report is written."""
        return self.namespace == "Annotation" and _pack_of(self.rule) is not None


@dataclass(frozen=True)
class UnusedAcknowledgment:
    acknowledgment: Acknowledgment
    why: str

    def line(self) -> str:
        a = self.acknowledgment
        return f"unused acknowledgment {a.rule} at {a.path}: {self.why}"


@dataclass(frozen=True)
class Silence:
    """A cfn-lint check silenced on one resource (or, with ``logical_id`` ``*``, everywhere)."""

    rule: str
    logical_id: str
    stack: str
    reason: str

    def line(self) -> str:
        return f"silenced cfn-lint {self.rule} on {self.stack}/{self.logical_id}: {self.reason}"


@dataclass(frozen=True)
class Evidence:
    """Everything the verdict rests on, and the verdict."""

    report: ComplianceReport
    policy: Policy
    packs_ran: tuple[str, ...]
    acknowledgments: tuple[Acknowledgment, ...] = ()
    unused: tuple[UnusedAcknowledgment, ...] = ()
    silences: tuple[Silence, ...] = ()
    linted: tuple[str, ...] = field(default=())
    #: Templates cfn-lint ran on in this evaluation (the others' findings came from the cache).
    relinted: tuple[str, ...] = field(default=())
    #: Packs were recorded at synth but the assembly holds no validation report.
    report_missing: bool = False

    @property
    def blocking(self) -> list[Finding]:
        return self.report.blocking(fail_on_warnings=self.policy.fail_on_warnings)

    @property
    def problems(self) -> list[str]:
        """One line per reason the verdict is FAIL."""
        lines = [] if self.packs_ran else [NO_PACK_RAN]
        lines += [NO_REPORT] if self.report_missing else []
        lines += [f.line() for f in self.blocking]
        if self.policy.fail_on_unused_acknowledgments:
            lines += [u.line() for u in self.unused]
        return lines

    @property
    def passed(self) -> bool:
        return not self.problems

    def summary_lines(self) -> list[str]:
        """Counts per pack, each open finding (one line, with its acknowledgment id), each
        unused acknowledgment, each native-form acknowledgment and each cfn-lint silence."""
        lines = self.report.summary_lines(details=False)
        native = [a for a in self.acknowledgments if a.native]
        if native:
            lines.append(
                "Acknowledged with cdk-nag's native form (cdk-nag removes the findings before "
                "the report; cdk_trn.compliance.acknowledge keeps them countable):"
            )
            lines += [f"  {a.rule} at {a.path}: {a.reason}" for a in native]
        if self.silences:
            lines.append("cfn-lint silences:")
            lines += [f"  {s.line()}" for s in self.silences]
        if self.unused:
            lines.append("Unused acknowledgments:")
            lines += [f"  {u.line()}" for u in self.unused]
        open_findings = self.report.unacknowledged
        if open_findings:
            lines.append("Open findings (acknowledge with the id after 'open'):")
            lines += [f"  {f.line()}" for f in open_findings]
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"{verdict}: {len(self.blocking)} blocking findings, {len(self.unused)} unused "
            f"acknowledgments, packs: {', '.join(self.packs_ran) or 'none'}"
        )
        return lines

    def failure_message(self) -> str:
        problems = self.problems
        lines = [f"compliance check failed: {len(problems)} problem(s)"]
        lines += [f"  {p}" for p in problems]
        lines.append(
            "Fix the resource, or acknowledge next to the construct: acknowledge(construct, "
            "'<the id shown>', '<specific reason>'); IAM5 wildcards: acknowledge_wildcards(...); "
            "cfn-lint: silence_cfn_lint(resource, 'W....', '<reason>')."
        )
        if self.report.source:
            lines.append(f"Full report: {self.report.source}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "packs": list(self.packs_ran),
            "problems": self.problems,
            "findings": [_finding_json(f) for f in self.report.findings],
            "unusedAcknowledgments": [
                {"id": u.acknowledgment.rule, "path": u.acknowledgment.path, "why": u.why}
                for u in self.unused
            ],
            "silences": [s.__dict__ for s in self.silences],
        }


def _finding_json(f: Finding) -> dict[str, Any]:
    return {
        "ruleId": f.rule_id,
        "pack": f.pack,
        "level": f.level,
        "path": f.path,
        "logicalId": f.logical_id,
        "template": f.template,
        "description": f.description,
        "acknowledged": f.acknowledged,
        "reason": f.reason,
        "acknowledgedAt": f.acknowledged_at,
    }


def _pack_of(rule: str) -> str | None:
    from cdk_trn.compliance.acknowledge import PACK_NAMESPACES

    head = rule.split("[", 1)[0]
    for namespace in PACK_NAMESPACES:
        if head.startswith(namespace + "-"):
            return namespace
    return None


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


def read_record(directory: Path) -> tuple[tuple[str, ...], tuple[Acknowledgment, ...]]:
    """Packs that ran and acknowledgments, as ``enable_compliance`` recorded them at synth."""
    path = directory / PACKS_FILE
    if not path.is_file():
        return (), ()
    data = json.loads(path.read_text(encoding="utf-8"))
    acks = tuple(
        Acknowledgment(str(a["path"]), str(a["id"]), str(a["reason"]))
        for a in data.get("acknowledgments", [])
    )
    return tuple(data.get("packs", [])), acks


def unused_acknowledgments(
    acknowledgments: Iterable[Acknowledgment], findings: Iterable[Finding], packs: Iterable[str]
) -> list[UnusedAcknowledgment]:
    """The acknowledgments that cover nothing.

    An acknowledgment of a pack rule is unused when no enabled pack that has the rule reported
    it on the acknowledged construct or its children. The regulated packs share rule names, so
    the acknowledgments one ``acknowledge_regulated`` call writes (same construct, rule, reason)
    count as used together when any of them is. An id that names no rule of its pack, a rule id
    without its pack prefix (``IAM4``) and cdk-nag's native form of an unknown rule are unused
    too. Acknowledgments of packs that did not run, of CDK warnings and of cfn-lint checks
    (``silence_cfn_lint``) are not judged here.
    """
    enabled = set(packs)
    findings = list(findings)
    verdicts: dict[Acknowledgment, str | None] = {}
    for ack in dict.fromkeys(acknowledgments):
        if ack.namespace == "Annotation":
            verdicts[ack] = _judge_annotation(ack, enabled)
            continue
        if ack.namespace not in enabled or ack.namespace == "CloudFormation-Validate":
            continue
        base = ack.rule.split("[", 1)[0]
        known = pack_rule_ids(ack.namespace)
        if known is not None and base not in known:
            verdicts[ack] = f"{ack.namespace} has no rule {base}"
            continue
        hit = any(
            f.pack == ack.namespace and f.rule_id == ack.rule and _under(f.path, ack.path)
            for f in findings
        )
        if hit:
            verdicts[ack] = None
        elif base.endswith("-IAM5") and "[" not in ack.rule:
            verdicts[ack] = (
                "IAM5 findings are granular (AwsSolutions-IAM5[Action::...]); use "
                "acknowledge_wildcards(policy, reason, actions=..., resources=...)"
            )
        else:
            verdicts[ack] = f"{ack.namespace} reported no {ack.rule} here or below"
    used_groups: set[tuple[str, str, str] | None] = {
        _regulated_group(a) for a, why in verdicts.items() if why is None and _regulated_group(a)
    }
    return [
        UnusedAcknowledgment(a, why)
        for a, why in verdicts.items()
        if why is not None
        and (_regulated_group(a) is None or _regulated_group(a) not in used_groups)
    ]


def _regulated_group(ack: Acknowledgment) -> tuple[str, str, str] | None:
    if ack.namespace not in _REGULATED:
        return None
    return (ack.path, ack.rule[len(ack.namespace) + 1 :], ack.reason)


def _judge_annotation(ack: Acknowledgment, enabled: set[str]) -> str | None:
    rule = ack.rule
    pack = _pack_of(rule)
    if pack is not None:  # cdk-nag's native form: the finding is gone, only the rule is checked
        known = pack_rule_ids(pack) if pack in enabled else None
        base = rule.split("[", 1)[0]
        return f"{pack} has no rule {base}" if known is not None and base not in known else None
    if any(c in rule for c in "@:/. ") or not rule[:1].isalpha():
        return None  # a CDK annotation warning id, not a rule
    return (
        f"{rule!r} names no pack; write the full id, e.g. AwsSolutions-{rule} or "
        f"NIST.800.53.R5-{rule} (cdk_trn.compliance.acknowledge adds the namespace)"
    )


def _lint_findings(
    directory: Path, ignores: Mapping[str, str], *, cache: bool | None = None
) -> tuple[list[Finding], list[Silence], list[str], list[str]]:
    paths = logical_ids(directory)
    findings: list[Finding] = []
    silences: list[Silence] = []
    linted: list[str] = []
    stacks = stack_templates(directory)
    regions = [stack.region or DEFAULT_REGION for stack in stacks]
    results = lint_templates(
        [(stack.template_path, region) for stack, region in zip(stacks, regions, strict=True)],
        cache=cache,
    )
    for stack, region, result in zip(stacks, regions, results, strict=True):
        template = str(stack.template_path.relative_to(directory))
        before = len(findings)
        for issue in result.issues:
            if issue.rule_id in ignores:
                continue
            parts = issue.path.split("/")
            logical_id = parts[1] if len(parts) > 1 and parts[0] == "Resources" else None
            path = paths.get((template, logical_id or ""), "")
            findings.append(
                Finding(
                    rule_id=issue.rule_id,
                    pack=CFN_LINT,
                    level=issue.level,
                    path=path or f"{stack.name}/{issue.path}",
                    description=f"{issue.message} (line {issue.line}, {issue.path})",
                    logical_id=logical_id,
                    template=template,
                )
            )
        issues = findings[before:]
        errors = sum(1 for f in issues if f.is_error)
        linted.append(f"{stack.name} [{region}]: {errors} errors, {len(issues) - errors} warnings")
        for logical_id, rule, reason in ignored_checks(stack.template_path):
            silences.append(Silence(rule, logical_id, stack.name, reason))
    for rule, reason in ignores.items():
        silences.append(Silence(rule, "*", "(every stack)", reason))
    relinted = [s.name for s, r in zip(stacks, results, strict=True) if not r.cached]
    return findings, silences, linted, relinted


def _judge_template_findings(
    report_findings: Iterable[Finding], lint: list[Finding], ignores: Mapping[str, str]
) -> list[Finding]:
    """CloudFormation Validate findings levelled by rule id, minus those cfn-lint also has."""
    seen = {(f.rule_id, f.logical_id) for f in lint}
    judged = []
    for f in report_findings:
        if f.pack == CLOUDFORMATION_VALIDATE:
            if f.rule_id in ignores or (f.rule_id, f.logical_id) in seen:
                continue
            if f.rule_id[:1] in ("E", "W"):
                f = replace(f, level="error" if f.rule_id.startswith("E") else "warning")
        judged.append(f)
    return judged + lint


def evaluate(
    assembly_dir: str | Path,
    *,
    policy: Policy | None = None,
    packs: Iterable[str] | None = None,
    cfn_lint: bool = True,
    ignore_cfn_lint: Mapping[str, str] | None = None,
    lint_cache: bool | None = None,
) -> Evidence:
    """The verdict on an assembly. ``packs`` limits the report to those packs; TrainiumChecks
    named there but not run at synth is evaluated on the templates (it needs no constructs).
    ``lint_cache=False`` lints every template afresh (default: on unless ``CDK_TRN_LINT_CACHE``
    is ``off``; see ``cdk_trn.compliance.cfn_lint_runner``)."""
    directory = Path(assembly_dir)
    policy = policy or Policy()
    ignores = dict(ignore_cfn_lint or {})
    recorded, acknowledgments = read_record(directory)
    loaded = load_report(directory)
    report = loaded or ComplianceReport((), ())
    by_path = {path: key for key, path in logical_ids(directory).items()}
    findings = [_with_logical_id(f, by_path) for f in report.findings]
    ran = tuple(p for p in recorded)
    wanted = tuple(packs) if packs is not None else ran
    if packs is not None:
        findings = [f for f in findings if f.pack in wanted or f.pack == CLOUDFORMATION_VALIDATE]
        ran = tuple(p for p in ran if p in wanted)
        if "TrainiumChecks" in wanted and "TrainiumChecks" not in ran:
            from cdk_trn.compliance.template_checks import trainium_findings

            findings += trainium_findings(directory)
            ran += ("TrainiumChecks",)
    lint: list[Finding] = []
    silences: list[Silence] = []
    linted: list[str] = []
    relinted: list[str] = []
    if cfn_lint:
        lint, silences, linted, relinted = _lint_findings(directory, ignores, cache=lint_cache)
    findings = _judge_template_findings(findings, lint, ignores)
    shown = tuple(dict.fromkeys([*ran, *(f.pack for f in findings)]))
    judged = ComplianceReport(tuple(findings), shown, report.source)
    unused = unused_acknowledgments(acknowledgments, judged.findings, ran)
    recorded_ran = [p for p in recorded if p in ran]
    return Evidence(
        judged,
        policy,
        ran,
        acknowledgments,
        tuple(unused),
        tuple(silences),
        tuple(linted),
        tuple(relinted),
        report_missing=loaded is None and bool(recorded_ran),
    )


def _with_logical_id(f: Finding, by_path: Mapping[str, tuple[str, str]]) -> Finding:
    if f.logical_id or f.path not in by_path:
        return f
    template, logical_id = by_path[f.path]
    return replace(f, logical_id=logical_id, template=f.template or template)
