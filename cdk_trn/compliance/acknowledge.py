"""Acknowledging a compliance finding, and silencing a cfn-lint check, the one way each.

``from cdk_trn.compliance import acknowledge, acknowledge_regulated, acknowledge_wildcards,
silence_cfn_lint``:

* :func:`acknowledge` ``(construct, rule_id, reason)``: one cdk-nag, TrainiumChecks or
  CloudFormation Validate finding on ``construct`` and its children.
* :func:`acknowledge_regulated` ``(construct, rule, reason)``: the same rule of the three regulated
  packs (NIST 800-53 R5, HIPAA Security, PCI DSS 3.2.1), which share rule names.
* :func:`acknowledge_wildcards` ``(scope, reason, actions=..., resources=...)``: the
  ``AwsSolutions-IAM5`` wildcard findings of the IAM policies under ``scope``, naming each
  wildcard it covers. The granular finding ids are computed at synth time from the policies, so no
  id is written by hand; a wildcard that is not listed stays a finding and fails the synth.
* :func:`silence_cfn_lint` ``(resource, rule, reason)``: a cfn-lint check on one resource, with
  the reason recorded next to it, for cfn-lint and aws-cdk-lib's validator alike (also what
  ``acknowledge`` does with an ``E``/``W`` id); the gate and ``python -m cdk_trn.compliance``
  list each silence with its reason.

Why the qualified ids: aws-cdk-lib (2.275) records ``Validations.of(c).acknowledge(...)`` as
construct metadata keyed by a *qualified* id, ``<plugin namespace>::<rule id>``; an id without a
namespace is filed under ``Annotation::``. That decides where the acknowledgment ends up (checked
by experiment):

* ``AwsSolutions::AwsSolutions-IAM5`` reaches CDK's own suppression step, which moves the finding
  into ``suppressedViolations`` of ``validation-report.json`` together with the reason and the
  construct path it was acknowledged at. This is what the compliance summary counts.
* ``AwsSolutions-IAM5`` is consumed inside cdk-nag (it strips ``Annotation::``), so the finding
  vanishes without a trace in the report: no reason, no count.

So :func:`acknowledge` takes the short rule id users know (``AwsSolutions-IAM5``,
``NIST.800.53.R5-IAMNoInlinePolicy``, ``TRN3``, granular ``AwsSolutions-IAM5[Resource::*]``) and
writes the qualified form; ids that already name a namespace are kept as given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import aws_cdk as cdk
import jsii
from aws_cdk import aws_iam as iam
from constructs import IConstruct, IValidation

from cdk_trn.errors import invalid

#: cdk-nag 3 pack names (each pack's ``name`` is also its rule-id prefix) and ours.
PACK_NAMESPACES = (
    "AwsSolutions",
    "HIPAA.Security",
    "NIST.800.53.R4",
    "NIST.800.53.R5",
    "PCI.DSS.321",
    "Serverless",
    "TrainiumChecks",
)
#: aws-cdk-lib's built-in template validation plugin ("CloudFormation Validate"), ids like W2508.
CFN_VALIDATE_NAMESPACE = "CloudFormation-Validate"
MIN_REASON_LENGTH = 20
#: The regulated packs (NIST 800-53 R5, HIPAA Security, PCI DSS 3.2.1) share rule names.
REGULATED_PACKS = ("NIST.800.53.R5", "HIPAA.Security", "PCI.DSS.321")
#: Resource metadata cfn-lint reads its per-resource configuration from.
CFN_LINT_METADATA = "cfn-lint"
#: Resource metadata beside it that maps each silenced cfn-lint rule to its reason.
SILENCE_REASONS_METADATA = "cdk-trn:acknowledged"

_WILDCARD_RULE = "AwsSolutions-IAM5"


def qualified_rule_id(rule_id: str) -> str:
    """The ``<namespace>::<rule>`` id that makes CDK record the acknowledgment in its report."""
    head = rule_id.split("[", 1)[0]  # granular findings may contain '::' inside the brackets
    if "::" in head:
        return rule_id
    if re.fullmatch(r"TRN\d+", head):
        return f"TrainiumChecks::TrainiumChecks-{rule_id}"
    for namespace in PACK_NAMESPACES:
        if head.startswith(namespace + "-"):
            return f"{namespace}::{rule_id}"
    if re.fullmatch(r"[EWI]\d{4}", head):
        return f"{CFN_VALIDATE_NAMESPACE}::{rule_id}"
    return rule_id


def _check_reason(subject: str, reason: str) -> None:
    if not isinstance(reason, str) or len(reason.strip()) < MIN_REASON_LENGTH:
        raise invalid(
            f"reason ({subject})",
            reason,
            f"a specific reason of at least {MIN_REASON_LENGTH} characters",
        )


def acknowledge(construct: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge ``rule_id`` on ``construct`` (and its children) with a specific ``reason``.

    A cfn-lint id (``W3010``, ``E3628``) is the same thing as :func:`silence_cfn_lint`: one
    mechanism for template checks, honoured by cfn-lint and by aws-cdk-lib's validator alike.
    """
    _check_reason(f"acknowledging {rule_id}", reason)
    if re.fullmatch(r"[EW]\d{4}", rule_id):
        silence_cfn_lint(construct, rule_id, reason)
        return
    cdk.Validations.of(construct).acknowledge(
        cdk.Acknowledgment(id=qualified_rule_id(rule_id), reason=reason)
    )


def acknowledge_regulated(construct: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge ``<pack>-<rule>`` for NIST 800-53 R5, HIPAA Security and PCI DSS 3.2.1 with
    one call and one reason: the one way to cover a rule the regulated packs share
    (``acknowledge_regulated(fn, "LambdaInsideVPC", "...")``).

    The three acknowledgments count as used together: the call is unused only when none of the
    enabled regulated packs that have the rule reports it on ``construct`` or its children."""
    for pack in REGULATED_PACKS:
        acknowledge(construct, f"{pack}-{rule}", reason)


def acknowledge_wildcards(
    scope: IConstruct,
    reason: str,
    *,
    actions: Sequence[str] = (),
    resources: Sequence[str] = (),
) -> None:
    """Acknowledge the listed IAM wildcards of the policies under ``scope`` (a policy, a role, or
    any construct holding them) with ``reason``.

    :param actions: wildcard actions as written in the policy, e.g. ``"kms:GenerateDataKey*"``.
    :param resources: wildcard resources as written in the policy: ``"*"`` or a string with the
        same tokens the policy was given, e.g. ``bucket.arn_for_objects("runs/*")`` or
        ``f"{function.function_arn}:*"``.

    cdk-nag reports one ``AwsSolutions-IAM5[Action::...]`` / ``[Resource::<flat ARN>]`` finding
    per wildcard, and the flat ARN names logical ids that are final only after ``prepare``. So
    the ids are computed when the tree is validated (after ``prepare``, before cdk-nag runs) from
    each policy's resolved document, with cdk-nag's own flattening, and only those that match a
    listed wildcard are acknowledged: a wildcard added later is not covered and fails the synth.
    A listed wildcard that no policy under ``scope`` has fails the synth too (a stale list).
    """
    _check_reason(f"acknowledging {_WILDCARD_RULE} wildcards", reason)
    if not actions and not resources:
        raise invalid(
            "acknowledge_wildcards(actions, resources)",
            "nothing",
            "the wildcard actions and/or resources the acknowledgment covers",
        )
    for action in actions:
        if not isinstance(action, str) or "*" not in action:
            raise invalid("acknowledge_wildcards(actions)", action, "actions containing '*'")
    scope.node.add_validation(
        _WildcardAcknowledgment(scope, reason, tuple(actions), tuple(resources))
    )


@jsii.implements(IValidation)
class _WildcardAcknowledgment:
    """Runs at validation time: computes each policy's IAM5 ids, acknowledges the listed ones."""

    def __init__(
        self, scope: IConstruct, reason: str, actions: tuple[str, ...], resources: tuple[str, ...]
    ) -> None:
        self._scope = scope
        self._reason = reason
        self._actions = actions
        self._resources = resources
        self._done: set[tuple[str, str]] = set()  # an app may be synthesized more than once

    def validate(self) -> list[str]:
        stack = cdk.Stack.of(self._scope)
        listed = {f"{_WILDCARD_RULE}[Action::{action}]" for action in self._actions}
        for resource in self._resources:
            flat = flatten_cfn_reference(stack.resolve(resource))
            if "*" not in flat:
                return [
                    f"acknowledge_wildcards at {self._scope.node.path}: resource {flat!r} has "
                    "no wildcard; list only the wildcards the policies have"
                ]
            listed.add(f"{_WILDCARD_RULE}[Resource::{flat}]")
        seen: set[str] = set()
        for construct, document in _policy_documents(self._scope):
            for rule_id in wildcard_rule_ids(document):
                seen.add(rule_id)
                key = (construct.node.path, rule_id)
                if rule_id in listed and key not in self._done:
                    self._done.add(key)
                    acknowledge(construct, rule_id, self._reason)
        stale = sorted(listed - seen)
        if stale:
            return [
                f"acknowledge_wildcards at {self._scope.node.path} lists wildcards no policy "
                f"under it has: {', '.join(stale)}"
            ]
        return []


def _policy_documents(scope: IConstruct) -> list[tuple[IConstruct, Any]]:
    """``(L1 construct, resolved policy document)`` for each IAM policy under ``scope``."""
    stack = cdk.Stack.of(scope)
    documents: list[tuple[IConstruct, Any]] = []
    for construct in scope.node.find_all():
        if isinstance(construct, (iam.CfnPolicy, iam.CfnManagedPolicy)):
            documents.append((construct, stack.resolve(construct.policy_document)))
        elif isinstance(construct, iam.CfnRole):
            for policy in _as_list(stack.resolve(construct.policies)):
                if isinstance(policy, dict):
                    document = policy.get("policyDocument", policy.get("PolicyDocument"))
                    documents.append((construct, document))
    return documents


def wildcard_rule_ids(document: Any) -> list[str]:
    """The ``AwsSolutions-IAM5[...]`` ids cdk-nag reports for a resolved policy document."""
    ids: list[str] = []
    for statement in _as_list((document or {}).get("Statement")):
        for action in _as_list(statement.get("Action")):
            if isinstance(action, str) and "*" in action:
                ids.append(f"{_WILDCARD_RULE}[Action::{action}]")
        for resource in _as_list(statement.get("Resource")):
            flat = flatten_cfn_reference(resource)
            if "*" in flat:
                ids.append(f"{_WILDCARD_RULE}[Resource::{flat}]")
    return list(dict.fromkeys(ids))


def flatten_cfn_reference(node: Any) -> str:
    """cdk-nag's ``flattenCfnReference`` (src/utils/flatten-cfn-reference.ts), in Python."""
    if node is None:
        return ""
    if isinstance(node, str):
        return node.replace("${", "<").replace("}", ">")
    if isinstance(node, dict):
        if "Fn::Join" in node:
            delimiter, items = node["Fn::Join"]
            return str(delimiter).join(flatten_cfn_reference(i) for i in items)
        if "Fn::Sub" in node:
            return flatten_cfn_reference(node["Fn::Sub"])
        if "Fn::GetAtt" in node:
            resource, attribute = node["Fn::GetAtt"]
            return f"<{flatten_cfn_reference(resource)}.{flatten_cfn_reference(attribute)}>"
        if "Fn::ImportValue" in node:
            return flatten_cfn_reference(node["Fn::ImportValue"])
        if "Ref" in node:
            return f"<{flatten_cfn_reference(node['Ref'])}>"
    return json.dumps(node, separators=(",", ":"))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def silence_cfn_lint(resource: IConstruct, rule: str, reason: str) -> None:
    """Silence cfn-lint's ``rule`` (``E3628``, ``W3010``, ...) on one resource, saying why.

    ``resource`` is a ``CfnResource`` or an L2 construct (its default child is used). The check
    goes into the resource's ``Metadata.cfn-lint.config.ignore_checks``, which cfn-lint honours,
    and the reason into ``Metadata["cdk-trn:acknowledged"][rule]`` beside it, where
    ``python -m cdk_trn.compliance`` reads it to list every silence with its reason.
    """
    if not isinstance(rule, str) or not re.fullmatch(r"[EW]\d{4}", rule):
        raise invalid("rule (silence_cfn_lint)", rule, "a cfn-lint error or warning id like W3010")
    _check_reason(f"silencing cfn-lint {rule}", reason)
    cfn = resource if isinstance(resource, cdk.CfnResource) else resource.node.default_child
    if not isinstance(cfn, cdk.CfnResource):
        raise invalid(
            "resource (silence_cfn_lint)", resource.node.path, "a CfnResource or an L2 with one"
        )
    lint = dict(cfn.get_metadata(CFN_LINT_METADATA) or {})
    config = dict(lint.get("config") or {})
    config["ignore_checks"] = list(dict.fromkeys([*config.get("ignore_checks", []), rule]))
    lint["config"] = config
    cfn.add_metadata(CFN_LINT_METADATA, lint)
    reasons = dict(cfn.get_metadata(SILENCE_REASONS_METADATA) or {})
    reasons[rule] = reason
    cfn.add_metadata(SILENCE_REASONS_METADATA, reasons)
    # aws-cdk-lib's own template validator reports some of cfn-lint's rules under the same id
    # and does not read the metadata above: the same silence, with the same reason, for it.
    cdk.Validations.of(cfn).acknowledge(
        cdk.Acknowledgment(id=f"{CFN_VALIDATE_NAMESPACE}::{rule}", reason=reason)
    )
