"""Test helpers: synthesize a stack to a template and lint it with cfn-lint as a library."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
from aws_cdk import assertions
from cfnlint.api import ManualArgs, lint


def template_of(stack: cdk.Stack) -> assertions.Template:
    return assertions.Template.from_stack(stack)


def lint_findings(template: dict[str, Any], region: str) -> list[str]:
    """cfn-lint errors and warnings for ``region`` (informational findings excluded)."""
    matches = lint(
        json.dumps(template),
        config=ManualArgs(regions=[region], include_checks=["I"], mandatory_checks=[]),
    )
    return [
        f"{m.rule.id} {m.message[:200]} ({'/'.join(str(p) for p in m.path)})"
        for m in matches
        if m.rule.id[0] in ("E", "W")
    ]
