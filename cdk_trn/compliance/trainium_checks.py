"""``TrainiumChecks``: the cdk-trn rule pack, a cdk-nag v3 ``NagPack`` like AwsSolutionsChecks.

Register it like cdk-nag's packs: ``Validations.of(app).add_plugins(TrainiumChecks(app))``
(``cdk_trn.compliance.enable_compliance`` does this). Rule ids are ``TrainiumChecks-TRN<n>``;
the rules themselves live in ``cdk_trn.compliance.rules`` as pure functions.

Subclassing ``NagPack`` from Python works through jsii with cdk-nag 3.0.2 (checked): the base
class walks the construct tree, calls ``_check_resource`` for each ``CfnResource`` and honours
acknowledgments. One trap: the ``IApplyRule`` object handed to ``_apply_rule`` must expose its
fields as Python *properties*; plain instance attributes reach JavaScript as ``undefined``.

The rules read the synthesized template (cdk-nag's validation runs after the templates are
written) rather than the typed L1 attributes cdk-nag's own rules read: a rule then judges exactly
what CloudFormation and cfn-lint receive (escape-hatch overrides included), finds the neighbours it
needs (the security groups an interface names, the launch template of a group) by logical id, and
stays a pure function of dicts that tests call without jsii.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import aws_cdk as cdk
import jsii
from cdk_nag import IApplyRule, NagMessageLevel, NagPack, NagRuleCompliance
from constructs import IConstruct

from cdk_trn.compliance.rules import Compliance, Rule, TemplateResource
from cdk_trn.compliance.rules.efa import TRN1, TRN2
from cdk_trn.compliance.rules.fsx import TRN7, TRN8
from cdk_trn.compliance.rules.instances import TRN3, TRN4, TRN5, TRN6, TRN10
from cdk_trn.compliance.rules.kms import TRN9

PACK_NAME = "TrainiumChecks"
RULES: tuple[Rule, ...] = (TRN1, TRN2, TRN3, TRN4, TRN5, TRN6, TRN7, TRN8, TRN9, TRN10)

_NAG_COMPLIANCE = {
    Compliance.COMPLIANT: NagRuleCompliance.COMPLIANT,
    Compliance.NON_COMPLIANT: NagRuleCompliance.NON_COMPLIANT,
    Compliance.NOT_APPLICABLE: NagRuleCompliance.NOT_APPLICABLE,
}
_NAG_LEVEL = {"error": NagMessageLevel.ERROR, "warning": NagMessageLevel.WARN}


@jsii.implements(IApplyRule)
class _AppliedRule:
    """One rule applied to one resource, in the shape ``NagPack.applyRule`` takes."""

    def __init__(self, rule: Rule, node: cdk.CfnResource, resource: TemplateResource) -> None:
        self._rule = rule
        self._node = node
        self._resource = resource

    # jsii reads these through property getters; see the module docstring.
    @property
    def rule_suffix_override(self) -> str:
        return self._rule.id

    @property
    def info(self) -> str:
        return self._rule.info

    @property
    def explanation(self) -> str:
        return self._rule.explanation

    @property
    def level(self) -> NagMessageLevel:
        return _NAG_LEVEL[self._rule.level]

    @property
    def node(self) -> cdk.CfnResource:
        return self._node

    def rule(self, node: cdk.CfnResource) -> NagRuleCompliance:
        return _NAG_COMPLIANCE[self._rule(self._resource)]


class TrainiumChecks(NagPack):  # type: ignore[misc]
    """Checks for Trainium training clusters that no cdk-nag pack covers: EFA wiring, the IMDS hop
    limit and encryption of launch templates, public IPs, capacity blocks, FSx for Lustre and
    enclave keys.
    """

    def __init__(self, scope: IConstruct | None = None, *, verbose: bool | None = None) -> None:
        super().__init__(scope, verbose=verbose)
        self._pack_name = PACK_NAME
        self._templates: dict[tuple[str, int], Mapping[str, Any]] = {}
        self._rules_by_type: dict[str, list[Rule]] = {}
        for rule in RULES:
            for resource_type in rule.resource_types:
                self._rules_by_type.setdefault(resource_type, []).append(rule)

    @property
    def name(self) -> str:
        return PACK_NAME

    @property
    def rule_ids(self) -> list[str]:
        return [f"{PACK_NAME}-{rule.id}" for rule in RULES]

    def _check_resource(self, node: cdk.CfnResource) -> None:
        rules = self._rules_by_type.get(node.cfn_resource_type)
        if not rules:
            return
        resource = self._template_resource(node)
        if resource is None:
            return
        for rule in rules:
            # mypy wants IApplyRule's fields settable; jsii needs them as read-only properties.
            self._apply_rule(_AppliedRule(rule, node, resource))  # type: ignore[arg-type]

    def _template_resource(self, node: cdk.CfnResource) -> TemplateResource | None:
        stack = cdk.Stack.of(node)
        template = self._template_of(stack)
        logical_id = stack.resolve(node.logical_id)
        if logical_id not in template.get("Resources", {}):
            return None  # e.g. a resource removed by a condition or an escape hatch
        region = stack.region
        return TemplateResource.of(
            template, logical_id, None if cdk.Token.is_unresolved(region) else region
        )

    def _template_of(self, stack: cdk.Stack) -> Mapping[str, Any]:
        stage = cdk.Stage.of(stack)
        assert stage is not None  # a stack always sits in an App or a Stage
        path = os.path.join(stage.outdir, stack.template_file)
        # Keyed by modification time too, so a second synthesis into the same directory re-reads.
        key = (path, os.stat(path).st_mtime_ns)
        if key not in self._templates:
            with open(path, encoding="utf-8") as handle:
                self._templates[key] = json.load(handle)
        return self._templates[key]
