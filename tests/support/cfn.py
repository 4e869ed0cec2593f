"""Test helpers: synthesize a stack to a template, and lint it the way the compliance gate does.

Linting goes through ``cdk_trn.compliance.lint_template`` (the function behind
``python -m cdk_trn.compliance``), so the tests and the gate judge templates by one configuration.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import assertions

from cdk_trn.compliance import lint_template


def template_of(stack: cdk.Stack) -> assertions.Template:
    return assertions.Template.from_stack(stack)


def lint_findings(template: dict[str, Any], region: str) -> list[str]:
    """cfn-lint errors and warnings for ``region`` (informational findings excluded), one line
    each, so that a failing ``== []`` shows them."""
    return [str(issue) for issue in lint_template(template, region)]
