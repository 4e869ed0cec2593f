"""The default app (``app.py``'s: ``AppConfig()`` with every compliance pack), synthesized once per
test session (once per pytest-xdist worker) and shared read-only by every test that reads it.

A synth of the default app takes tens of seconds; tests that need other context or options
still build their own app. Templates are handed out copy-on-read (parsed afresh from the stored
JSON at each call), so a test that edits one cannot change what another sees; the constructs
(``default``) are the live tree, to read (logical ids, resolved tokens) and never to add to: at
the end of the session the tree is checked to have kept its size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from cdk_trn.compliance import ComplianceReport, enable_compliance, synth_checked
from stacks import DefaultApp, build_default_app
from stacks.config import AppConfig


@dataclass(frozen=True)
class SynthesizedDefaultApp:
    """The default app, synthesized with its compliance report."""

    default: DefaultApp
    report: ComplianceReport
    _templates: Mapping[str, str]

    @property
    def stacks(self) -> list[cdk.Stack]:
        """The app's stacks (storage, cluster, vault)."""
        default = self.default
        return [s for s in (default.storage_stack, default.cluster_stack, default.vault_stack) if s]

    def template(self, stack: cdk.Stack | str) -> dict[str, Any]:
        """A fresh copy of the stack's synthesized template."""
        name = stack if isinstance(stack, str) else stack.stack_name
        return json.loads(self._templates[name])

    def templates(self) -> dict[str, dict[str, Any]]:
        """Fresh copies of every template, by stack name."""
        return {name: self.template(name) for name in self._templates}

    def assertions(self, stack: cdk.Stack | str) -> Template:
        """``aws_cdk.assertions.Template`` of a fresh copy of the stack's template (not
        ``Template.from_stack``, which would synthesize the shared app again)."""
        return Template.from_json(self.template(stack))


def synthesize_default_app() -> SynthesizedDefaultApp:
    app = cdk.App()
    enable_compliance(app)
    default = build_default_app(app, AppConfig())
    report = synth_checked(app)
    assembly = app.synth()
    templates = {s.stack_name: json.dumps(s.template) for s in assembly.stacks}
    return SynthesizedDefaultApp(default, report, templates)


def _tree(app: cdk.App) -> list[str]:
    return [c.node.path for c in app.node.find_all()]


@pytest.fixture(scope="session")
def default_app() -> Iterator[SynthesizedDefaultApp]:
    """The default app, synthesized once per session; read it, never add to it."""
    synthesized = synthesize_default_app()
    app = synthesized.default.cluster_stack.node.root
    before = _tree(app)
    yield synthesized
    added = sorted(set(_tree(app)) - set(before))
    assert not added, f"a test added constructs to the shared default app: {added[:5]}"
