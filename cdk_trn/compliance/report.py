"""Findings and acknowledgments read from a cloud assembly's validation report, and their text.

aws-cdk-lib 2.275 writes ``validation-report.json`` into the assembly directory whenever a
validation plugin ran (the built-in "CloudFormation Validate" plugin always runs unless
``CDK_VALIDATION=false``). Each plugin report lists its open ``violations`` and, for findings
acknowledged with a qualified id (see ``cdk_trn.compliance.acknowledge``),
``suppressedViolations`` with ``reason`` and ``acknowledgedAt``. Plugins with nothing to say are
left out of the file, so the packs that ran are recorded beside it in ``cdk-trn-compliance.json``
by ``synth_checked``.
The legacy ``policy-validation-report.json`` (context ``@aws-cdk/core:validationReportJson``)
is read too; it has no acknowledgments.

Pure Python: the command line reads assemblies with it without starting jsii.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_FILE = "validation-report.json"
LEGACY_REPORT_FILE = "policy-validation-report.json"
PACKS_FILE = "cdk-trn-compliance.json"
#: Rule id of the pseudo-finding for a plugin that crashed instead of reporting.
PLUGIN_FAILED = "plugin-failed"

_ERROR_LEVELS = frozenset({"error", "fatal", "custom"})


@dataclass(frozen=True)
class Finding:
    """One rule firing on one resource, open or acknowledged."""

    rule_id: str
    #: The plugin (pack) that reported it: ``AwsSolutions``, ``TrainiumChecks``, ...
    pack: str
    #: ``error``, ``warning``, ``info``, ``fatal`` or ``custom``.
    level: str
    #: Construct path of the resource (``Stack/Construct/Resource``).
    path: str
    description: str
    acknowledged: bool = False
    reason: str | None = None
    #: Construct path the acknowledgment was made at (the resource or one of its parents).
    acknowledged_at: str | None = None
    logical_id: str | None = None
    template: str | None = None

    @property
    def is_error(self) -> bool:
        return self.level in _ERROR_LEVELS

    @property
    def acknowledgment_id(self) -> str:
        """The exact id to pass to ``acknowledge`` (or ``silence_cfn_lint``) for this finding."""
        return self.rule_id

    def line(self) -> str:
        """One line: level, rule, where, a short description and the id that acknowledges it."""
        where = self.path or "(no resource)"
        if self.logical_id:
            where += f" ({self.logical_id})"
        status = "acknowledged" if self.acknowledged else self.level
        note = self.reason if self.acknowledged else short_text(self.description)
        return f"{status} {self.rule_id} [{self.pack}] at {where}: {note}"

    def __repr__(self) -> str:
        status = "acknowledged" if self.acknowledged else f"OPEN {self.level}"
        return f"Finding({self.rule_id} {status} at {self.path or '-'})"


def short_text(text: str, limit: int = 120) -> str:
    """The first sentence of ``text`` (control-id lists cut), at most ``limit`` characters."""
    text = " ".join(str(text).split())
    text = re.split(r" - \(Control IDs?:", text, maxsplit=1)[0]
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


@dataclass(frozen=True)
class ComplianceReport:
    """Every finding of one synthesis, with the packs that ran and where the report came from."""

    findings: tuple[Finding, ...]
    packs: tuple[str, ...] = ()
    source: str | None = None

    @property
    def unacknowledged(self) -> list[Finding]:
        return [f for f in self.findings if not f.acknowledged]

    @property
    def acknowledged(self) -> list[Finding]:
        return [f for f in self.findings if f.acknowledged]

    def blocking(self, *, fail_on_warnings: bool = False) -> list[Finding]:
        """Unacknowledged findings that fail the synth: errors, and warnings if asked."""
        return [
            f
            for f in self.unacknowledged
            if f.is_error or (fail_on_warnings and f.level == "warning")
        ]

    def by_pack(self) -> dict[str, list[Finding]]:
        grouped: dict[str, list[Finding]] = {pack: [] for pack in self.packs}
        for finding in self.findings:
            grouped.setdefault(finding.pack, []).append(finding)
        return grouped

    def summary_lines(self, *, details: bool = True) -> list[str]:
        """Findings per pack, then (with ``details``) each acknowledgment with its reason and
        resource count, and each open finding."""
        open_count, ack_count = len(self.unacknowledged), len(self.acknowledged)
        packs = self.by_pack()
        lines = [
            f"Compliance: {len(packs)} packs, {open_count} unacknowledged findings, "
            f"{ack_count} acknowledged"
        ]
        width = max((len(p) for p in packs), default=0)
        for pack, findings in packs.items():
            errors = sum(1 for f in findings if not f.acknowledged and f.is_error)
            others = sum(1 for f in findings if not f.acknowledged and not f.is_error)
            acked = sum(1 for f in findings if f.acknowledged)
            lines.append(
                f"  {pack:<{width}}  {errors} errors, {others} warnings, {acked} acknowledged"
            )
        if not details:
            return lines
        groups = _acknowledgment_groups(self.acknowledged)
        if groups:
            lines.append("Acknowledged:")
            for (rule, at, reason), paths in groups.items():
                count = f"{len(paths)} resource{'s' if len(paths) != 1 else ''}"
                lines.append(f"  {rule} at {at} ({count}): {reason}")
        if open_count:
            lines.append("Unacknowledged:")
            lines.extend(f"  {f.line()}" for f in self.unacknowledged)
        return lines

    def format_summary(self) -> str:
        return "\n".join(self.summary_lines())

    def format_table(self) -> str:
        """One row per finding: status, level, rule, resource path, and reason or description."""
        rows = [("STATUS", "LEVEL", "PACK", "RULE", "RESOURCE", "REASON / DESCRIPTION")]
        for f in sorted(self.findings, key=lambda f: (f.acknowledged, f.pack, f.rule_id, f.path)):
            status = "acknowledged" if f.acknowledged else "OPEN"
            note = (f.reason or "") if f.acknowledged else f.description
            rows.append((status, f.level, f.pack, f.rule_id, f.path or "-", note))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        return "\n".join(
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5]
            for row in rows
        )

    def failure_message(self, findings: Iterable[Finding]) -> str:
        findings = list(findings)
        lines = [f"compliance check failed: {len(findings)} unacknowledged finding(s)"]
        lines += [f"  {f.line()}" for f in findings]
        lines.append(
            "Fix the resource, or acknowledge next to the construct with "
            "`from cdk_trn.compliance import acknowledge`; "
            "acknowledge(construct, '<rule id>', '<specific reason>') (IAM5 wildcards: "
            "acknowledge_wildcards(policy, '<reason>', actions=[...], resources=[...]))."
        )
        if self.source:
            lines.append(f"Full report: {self.source}")
        return "\n".join(lines)


def _acknowledgment_groups(
    findings: Iterable[Finding],
) -> dict[tuple[str, str, str], list[str]]:
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for f in findings:
        groups[(f.rule_id, f.acknowledged_at or f.path, f.reason or "")].append(f.path)
    return dict(groups)


def _findings_of_violation(
    pack: str, violation: Mapping[str, Any], acknowledged: bool
) -> list[Finding]:
    level = str(violation.get("severity") or "error").lower()
    constructs = violation.get("violatingConstructs") or [{}]
    found = []
    for construct in constructs:
        resource = construct.get("cloudFormationResource") or {}
        found.append(
            Finding(
                rule_id=str(violation.get("ruleName", "")),
                pack=pack,
                level=level,
                path=str(construct.get("constructPath") or ""),
                description=str(violation.get("description", "")),
                acknowledged=acknowledged,
                reason=violation.get("reason") if acknowledged else None,
                acknowledged_at=violation.get("acknowledgedAt") if acknowledged else None,
                logical_id=resource.get("logicalId") or construct.get("resourceLogicalId"),
                template=resource.get("templatePath") or construct.get("templatePath"),
            )
        )
    return found


def parse_report(
    data: Mapping[str, Any], *, packs: Iterable[str] = (), source: str | None = None
) -> ComplianceReport:
    """A :class:`ComplianceReport` from the JSON of either report format."""
    findings: list[Finding] = []
    seen_packs = list(packs)
    for plugin in data.get("pluginReports", []):
        summary = plugin.get("summary") or {}  # legacy format nests name and status here
        pack = str(plugin.get("pluginName") or summary.get("pluginName") or "unknown")
        if pack not in seen_packs:
            seen_packs.append(pack)
        for violation in plugin.get("violations") or []:
            findings += _findings_of_violation(pack, violation, acknowledged=False)
        for violation in plugin.get("suppressedViolations") or []:
            findings += _findings_of_violation(pack, violation, acknowledged=True)
        error = (plugin.get("metadata") or summary.get("metadata") or {}).get("error")
        conclusion = plugin.get("conclusion") or summary.get("status")
        if error and str(conclusion).lower() == "failure" and not plugin.get("violations"):
            findings.append(Finding(PLUGIN_FAILED, pack, "error", "", str(error)))
    return ComplianceReport(tuple(findings), tuple(seen_packs), source)


def load_report(assembly_dir: str | Path) -> ComplianceReport | None:
    """The report of a cloud assembly directory, or ``None`` if no validation ran."""
    directory = Path(assembly_dir)
    packs: list[str] = []
    packs_file = directory / PACKS_FILE
    if packs_file.is_file():
        packs = list(json.loads(packs_file.read_text(encoding="utf-8")).get("packs", []))
    for name in (REPORT_FILE, LEGACY_REPORT_FILE):
        path = directory / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            return parse_report(data, packs=packs, source=str(path))
    return None


def write_packs_file(assembly_dir: str | Path, packs: Iterable[str]) -> None:
    """Record which packs ran, so a clean pack still shows (with zero findings) in summaries."""
    path = Path(assembly_dir) / PACKS_FILE
    path.write_text(json.dumps({"packs": list(packs)}, indent=2) + "\n", encoding="utf-8")
