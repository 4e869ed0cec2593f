"""aws-cdk-lib's "CloudFormation Validate" plugin, run by the kit with its results cached.

aws-cdk-lib 2.275 runs its own template validation (a WebAssembly engine with CloudFormation
schemas and Rego rules) on every synth. Building that engine costs about 4 s of CPU in every
process, more than the rest of a small app's synth, although a template that did not change
gets the same report. For an app created with ``cdk.App(builtin_cloud_formation_validation=
False)``, ``enable_compliance(app, cache_cloudformation_validate=True)`` registers
:class:`CachedCloudFormationValidate` instead: the same plugin name, the same engine
(``cdk.CloudFormationValidatePlugin()``, built only when a template is not in the cache), the
same options, one template at a time, with each template's violations stored under a key of
its bytes, its account and region and the aws-cdk-lib version (which pins the engine and its
rules). Violations of several templates are merged as the built-in plugin merges them (same
rule, severity and description: one violation, resources in template order), so the report is
the one the built-in plugin writes. ``CDK_VALIDATION=false`` (``cdk synth --no-validation``)
turns it off as it does the built-in one; ``CDK_TRN_LINT_CACHE=off`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import jsii
from constructs import IConstruct

from cdk_trn.compliance.cfn_lint_runner import lint_cache_enabled, user_cache_dir, write_atomically

#: The built-in plugin's name: the report, acknowledgments and the verdict know it by this.
PLUGIN_NAME = "CloudFormation Validate"
CACHE_FORMAT = 1
_ERROR_SEVERITIES = frozenset({"error", "fatal"})


def validate_cache_dir() -> Path:
    return user_cache_dir() / "cloudformation-validate"


def _cdk_version() -> str:
    from aws_cdk import _jsii

    return str(_jsii.__jsii_assembly__.version)


@jsii.implements(cdk.IPolicyValidationContext)
class _OneStack:
    """The context the built-in plugin gets, narrowed to one stack template."""

    def __init__(self, app: IConstruct, stack: cdk.PolicyValidationStack) -> None:
        self._app = app
        self._stack = stack

    @property
    def app_construct(self) -> IConstruct:
        return self._app

    @property
    def stack_templates(self) -> list[cdk.PolicyValidationStack]:
        return [self._stack]

    @property
    def template_paths(self) -> list[str]:
        return [self._stack.template_path]

    @property
    def account_id(self) -> str | None:
        return self._stack.account_id

    @property
    def region(self) -> str | None:
        return self._stack.region


def _violation_data(violation: Any, stack_path: str) -> dict[str, Any]:
    """A violation of one template as plain data, without the template's path."""
    resources = []
    for resource in violation.violating_resources:
        resources.append(
            {
                "logicalId": resource.resource_logical_id,
                # The built-in plugin names the stack when no resource is to blame.
                "stack": resource.construct_path is not None
                and resource.construct_path == stack_path,
                "constructPath": None
                if resource.construct_path == stack_path
                else resource.construct_path,
                "locations": list(resource.locations),
            }
        )
    return {
        "ruleName": violation.rule_name,
        "description": violation.description,
        "severity": violation.severity,
        "fix": violation.fix,
        "ruleMetadata": dict(violation.rule_metadata) if violation.rule_metadata else None,
        "resources": resources,
    }


def _resource(
    data: dict[str, Any], stack: cdk.PolicyValidationStack
) -> cdk.PolicyViolatingResource:
    return cdk.PolicyViolatingResource(
        locations=list(data["locations"]),
        resource_logical_id=data["logicalId"],
        construct_path=stack.stack_construct_path if data["stack"] else data["constructPath"],
        template_path=stack.template_path,
    )


def merge_violations(
    per_template: Sequence[tuple[cdk.PolicyValidationStack, Sequence[dict[str, Any]]]],
) -> list[cdk.PolicyViolation]:
    """The violations of several templates as the built-in plugin reports them in one call:
    one violation per rule, severity and description, its resources in template order."""
    merged: dict[tuple[str, str | None, str], tuple[dict[str, Any], list[Any]]] = {}
    for stack, violations in per_template:
        for violation in violations:
            key = (violation["ruleName"], violation["severity"], violation["description"])
            resources = [_resource(r, stack) for r in violation["resources"]]
            if key in merged:
                merged[key][1].extend(resources)
            else:
                merged[key] = (violation, resources)
    return [
        cdk.PolicyViolation(
            rule_name=violation["ruleName"],
            description=violation["description"],
            severity=violation["severity"],
            fix=violation["fix"],
            rule_metadata=violation["ruleMetadata"],
            violating_resources=resources,
        )
        for violation, resources in merged.values()
    ]


@jsii.implements(cdk.IPolicyValidationPlugin)
class CachedCloudFormationValidate:
    """aws-cdk-lib's CloudFormation Validate, one template at a time, cached by content."""

    def __init__(self, app: IConstruct, *, cache: bool | None = None) -> None:
        self._app = app
        self.cache = cache
        self._engine: cdk.CloudFormationValidatePlugin | None = None
        self._version: str | None = None
        #: Stack construct paths validated by the engine in the last ``validate`` (not cached).
        self.validated: list[str] = []

    @property
    def name(self) -> str:
        return PLUGIN_NAME

    @property
    def version(self) -> str | None:
        return self._version

    @property
    def rule_ids(self) -> list[str] | None:
        return None

    def _key(self, stack: cdk.PolicyValidationStack, template: bytes) -> str:
        digest = hashlib.sha256()
        header = {
            "format": CACHE_FORMAT,
            "aws-cdk-lib": _cdk_version(),
            "account": stack.account_id,
            "region": stack.region,
        }
        digest.update(json.dumps(header, sort_keys=True).encode() + b"\0" + template)
        return digest.hexdigest()

    def _lookup(self, key: str) -> dict[str, Any] | None:
        path = validate_cache_dir() / key[:2] / f"{key}.json"
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
            return None
        if entry.get("key") != key or not isinstance(entry.get("violations"), list):
            return None
        return entry

    def _run_engine(self, stack: cdk.PolicyValidationStack) -> tuple[str | None, list[Any]]:
        if self._engine is None:
            self._engine = cdk.CloudFormationValidatePlugin()
        report = self._engine.validate(_OneStack(self._app, stack))
        violations = [_violation_data(v, stack.stack_construct_path) for v in report.violations]
        return self._engine.version, violations

    def validate(self, context: cdk.IPolicyValidationContext) -> cdk.PolicyValidationPluginReport:
        if os.environ.get("CDK_VALIDATION") == "false":
            return cdk.PolicyValidationPluginReport(success=True, violations=[])
        use_cache = lint_cache_enabled(self.cache)
        per_template: list[tuple[cdk.PolicyValidationStack, list[dict[str, Any]]]] = []
        self.validated = []
        for stack in context.stack_templates:
            key = self._key(stack, Path(stack.template_path).read_bytes())
            entry = self._lookup(key) if use_cache else None
            if entry is None:
                version, violations = self._run_engine(stack)
                self.validated.append(stack.stack_construct_path)
                entry = {"format": CACHE_FORMAT, "key": key, "version": version}
                entry["violations"] = violations
                if use_cache:
                    write_atomically(validate_cache_dir() / key[:2] / f"{key}.json", entry)
            self._version = entry.get("version") or self._version
            per_template.append((stack, entry["violations"]))
        violations = merge_violations(per_template)
        success = all((v.severity or "") not in _ERROR_SEVERITIES for v in violations)
        return cdk.PolicyValidationPluginReport(success=success, violations=violations)
