"""cfn-lint as a library: the errors and warnings of one template for one region.

Used by ``python -m cdk_trn.compliance`` on every template of an assembly, and by the test suite
to assert that a template has zero errors and zero warnings. Informational findings (``I...``)
are not returned. Per-resource ``Metadata.cfn-lint.config.ignore_checks`` is honoured by
cfn-lint itself; :func:`ignored_checks` lists those silences so they can be shown with reasons.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: cfn-lint's own default when no region is known.
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class LintIssue:
    rule_id: str
    #: ``error`` (E...) or ``warning`` (W...).
    level: str
    message: str
    #: Where in the template: ``Resources/Node/Properties/InstanceType``.
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.rule_id} {self.level} at {self.path} (line {self.line}): {self.message}"


def _template_text(template: Mapping[str, Any] | str | Path) -> str:
    if isinstance(template, Mapping):
        return json.dumps(template, indent=1)
    return Path(template).read_text(encoding="utf-8")


def lint_template(template: Mapping[str, Any] | str | Path, region: str | None) -> list[LintIssue]:
    """cfn-lint's errors and warnings for ``template`` (a dict or a file path) in ``region``."""
    from cfnlint.api import ManualArgs, lint

    matches = lint(_template_text(template), config=ManualArgs(regions=[region or DEFAULT_REGION]))
    issues = []
    for match in matches:
        rule_id = match.rule.id
        if rule_id[:1] not in ("E", "W"):
            continue
        issues.append(
            LintIssue(
                rule_id=rule_id,
                level="error" if rule_id.startswith("E") else "warning",
                message=match.message,
                path="/".join(str(p) for p in getattr(match, "path", []) or []),
                line=match.linenumber,
            )
        )
    return issues


def ignored_checks(template: Mapping[str, Any] | str | Path) -> list[tuple[str, str, str]]:
    """``(logical id, rule id, reason)`` for each check silenced in a resource's Metadata.

    The reason comes from ``Metadata["cdk-trn:acknowledged"][rule]`` when the resource says why.
    """
    data = template if isinstance(template, Mapping) else json.loads(_template_text(template))
    silenced = []
    for logical_id, body in (data.get("Resources") or {}).items():
        metadata = body.get("Metadata") or {}
        config = (metadata.get("cfn-lint") or {}).get("config") or {}
        reasons = metadata.get("cdk-trn:acknowledged") or {}
        for rule in config.get("ignore_checks", []):
            silenced.append((logical_id, rule, str(reasons.get(rule, "(no reason given)"))))
    return silenced
