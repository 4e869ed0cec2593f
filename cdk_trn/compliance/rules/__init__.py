"""The TrainiumChecks rules: what a rule is, and the template helpers the rules share.

Shaped like cdk-nag's ``src/rules/<service>/*.ts``: each rule is one small pure function of one
resource, returning :class:`Compliance`. Unlike cdk-nag's rules, ours read the *synthesized*
CloudFormation (the dict cfn-lint and CloudFormation see, escape-hatch overrides included) instead
of typed L1 attributes, so that a rule judges what is deployed. A rule that must look at
neighbours (the security group an interface names, the subnets of a group) finds them in
``resource.template``; nothing here imports aws-cdk-lib, so rules are testable on plain dicts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class Compliance(enum.Enum):
    """A rule's verdict on one resource (cdk-nag's ``NagRuleCompliance``, without jsii)."""

    COMPLIANT = "Compliant"
    NON_COMPLIANT = "Non-Compliant"
    NOT_APPLICABLE = "N/A"


COMPLIANT = Compliance.COMPLIANT
NON_COMPLIANT = Compliance.NON_COMPLIANT
NOT_APPLICABLE = Compliance.NOT_APPLICABLE


@dataclass(frozen=True)
class TemplateResource:
    """One resource of a synthesized stack template, with the template and region around it."""

    logical_id: str
    type: str
    properties: Mapping[str, Any]
    template: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: The stack's region; ``None`` when the stack is region-agnostic.
    region: str | None = None

    @classmethod
    def of(
        cls, template: Mapping[str, Any], logical_id: str, region: str | None = None
    ) -> TemplateResource:
        body = template.get("Resources", {})[logical_id]
        return cls(
            logical_id=logical_id,
            type=body.get("Type", ""),
            properties=body.get("Properties", {}) or {},
            template=template,
            region=region,
        )

    def resources(self, *types: str) -> Iterator[TemplateResource]:
        """The other resources of the same template, optionally only of ``types``."""
        for logical_id, body in self.template.get("Resources", {}).items():
            if not types or body.get("Type") in types:
                yield TemplateResource.of(self.template, logical_id, self.region)

    def resolve(self, value: Any) -> TemplateResource | None:
        """The resource a ``Ref`` / ``Fn::GetAtt`` points at, if it is in this template."""
        target = referenced_logical_id(value)
        if target is None or target not in self.template.get("Resources", {}):
            return None
        return TemplateResource.of(self.template, target, self.region)


@dataclass(frozen=True)
class Rule:
    """A TrainiumChecks rule: id suffix (``TRN1``), one-line info, why it matters, and the check."""

    id: str
    info: str
    explanation: str
    #: CloudFormation types the rule looks at; every other resource is NOT_APPLICABLE.
    resource_types: tuple[str, ...]
    check: Callable[[TemplateResource], Compliance]
    #: ``"error"`` or ``"warning"``, as in cdk-nag's ``NagMessageLevel``.
    level: str = "error"

    def __call__(self, resource: TemplateResource) -> Compliance:
        if resource.type not in self.resource_types:
            return NOT_APPLICABLE
        return self.check(resource)


def referenced_logical_id(value: Any) -> str | None:
    """``X`` for ``{"Ref": "X"}``, ``{"Fn::GetAtt": ["X", a]}`` or ``{"Fn::GetAtt": "X.a"}``."""
    if not isinstance(value, Mapping) or len(value) != 1:
        return None
    if "Ref" in value and isinstance(value["Ref"], str):
        return value["Ref"]
    attr = value.get("Fn::GetAtt")
    if isinstance(attr, list) and attr and isinstance(attr[0], str):
        return attr[0]
    if isinstance(attr, str):
        return attr.split(".", 1)[0]
    return None


def refers_to(value: Any, logical_id: str) -> bool:
    return referenced_logical_id(value) == logical_id


def is_true(value: Any) -> bool:
    """CloudFormation booleans arrive as ``True`` or ``"true"``."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def launch_template_data(resource: TemplateResource) -> Mapping[str, Any]:
    data = resource.properties.get("LaunchTemplateData", {})
    return data if isinstance(data, Mapping) else {}


def launch_templates_of_group(group: TemplateResource) -> list[TemplateResource]:
    """The launch templates (in this template) an Auto Scaling group launches from."""
    specs = [group.properties.get("LaunchTemplate")]
    mixed = group.properties.get("MixedInstancesPolicy") or {}
    specs.append((mixed.get("LaunchTemplate") or {}).get("LaunchTemplateSpecification"))
    found: list[TemplateResource] = []
    for spec in specs:
        if not isinstance(spec, Mapping):
            continue
        for key in ("LaunchTemplateId", "LaunchTemplateName"):
            target = group.resolve(spec.get(key))
            if target is not None and target.type == "AWS::EC2::LaunchTemplate":
                found.append(target)
    return found


def literal_str(value: Any) -> str | None:
    """``value`` if it is a plain string (not an intrinsic function), else ``None``."""
    return value if isinstance(value, str) else None
