"""EFA rules: the security group EFA traffic needs (TRN1) and EFA on every network card (TRN2).

Sources: EC2 user guide efa-start.html (security group: all traffic in AND out to itself; EFA
fails without the egress self-rule even when 0.0.0.0/0 egress exists) and efa-acc-inst-types.html
(an EFA interface per network card); FACTS.md "EFA".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cdk_trn.catalog import INSTANCE_SPECS
from cdk_trn.compliance.rules import (
    COMPLIANT,
    NON_COMPLIANT,
    NOT_APPLICABLE,
    Compliance,
    Rule,
    TemplateResource,
    as_list,
    is_true,
    launch_template_data,
    literal_str,
    refers_to,
)

EFA_INTERFACE_TYPES = frozenset({"efa", "efa-only"})


def _efa_interfaces(launch_template: TemplateResource) -> list[Mapping[str, Any]]:
    interfaces = as_list(launch_template_data(launch_template).get("NetworkInterfaces"))
    return [
        i
        for i in interfaces
        if isinstance(i, Mapping) and i.get("InterfaceType") in EFA_INTERFACE_TYPES
    ]


def _groups_used_for_efa(resource: TemplateResource) -> Iterable[Any]:
    """Security-group references of EFA interfaces and of EFA-enabled FSx file systems."""
    for template in resource.resources("AWS::EC2::LaunchTemplate"):
        for interface in _efa_interfaces(template):
            yield from as_list(interface.get("Groups"))
    for file_system in resource.resources("AWS::FSx::FileSystem"):
        lustre = file_system.properties.get("LustreConfiguration") or {}
        if is_true(lustre.get("EfaEnabled")):
            yield from as_list(file_system.properties.get("SecurityGroupIds"))


def _all_traffic(rule: Mapping[str, Any]) -> bool:
    return str(rule.get("IpProtocol")) == "-1"


def _self_rules(group: TemplateResource, direction: str) -> Iterable[Mapping[str, Any]]:
    """All-traffic rules of ``group`` whose peer is ``group`` itself, inline or standalone."""
    peer_key = "SourceSecurityGroupId" if direction == "Ingress" else "DestinationSecurityGroupId"
    for rule in as_list(group.properties.get(f"SecurityGroup{direction}")):
        if isinstance(rule, Mapping) and refers_to(rule.get(peer_key), group.logical_id):
            yield rule
    for standalone in group.resources(f"AWS::EC2::SecurityGroup{direction}"):
        props = standalone.properties
        if refers_to(props.get("GroupId"), group.logical_id) and refers_to(
            props.get(peer_key), group.logical_id
        ):
            yield props


def efa_security_group_self_referencing(group: TemplateResource) -> Compliance:
    """TRN1: a group used by EFA allows all traffic in from and out to itself."""
    if not any(refers_to(ref, group.logical_id) for ref in _groups_used_for_efa(group)):
        return NOT_APPLICABLE
    ingress = any(_all_traffic(r) for r in _self_rules(group, "Ingress"))
    egress = any(_all_traffic(r) for r in _self_rules(group, "Egress"))
    return COMPLIANT if ingress and egress else NON_COMPLIANT


def efa_on_every_network_card(launch_template: TemplateResource) -> Compliance:
    """TRN2: a launch template of an EFA-capable Trainium type has EFA on each network card."""
    instance_type = literal_str(launch_template_data(launch_template).get("InstanceType"))
    spec = INSTANCE_SPECS.get(instance_type or "")
    if spec is None or not spec.has_efa:
        return NOT_APPLICABLE
    cards_with_efa = {
        interface.get("NetworkCardIndex", 0) for interface in _efa_interfaces(launch_template)
    }
    wanted = set(range(spec.network_cards))
    return COMPLIANT if wanted <= cards_with_efa else NON_COMPLIANT


TRN1 = Rule(
    id="TRN1",
    info="The EFA security group does not allow all traffic both in from and out to itself.",
    explanation=(
        "EFA's OS-bypass traffic needs a security group that allows all protocols inbound from "
        "and outbound to the same group. Without the egress self-rule EFA fails even when "
        "0.0.0.0/0 egress exists, and the failure shows up only when the collectives start."
    ),
    resource_types=("AWS::EC2::SecurityGroup",),
    check=efa_security_group_self_referencing,
)

TRN2 = Rule(
    id="TRN2",
    info="The launch template of an EFA-capable Trainium type leaves a network card without EFA.",
    explanation=(
        "Trainium instances spread their EFA bandwidth over several network cards ("
        + ", ".join(
            f"{spec.network_cards} on {name}"
            for name, spec in sorted(INSTANCE_SPECS.items())
            if spec.has_efa
        )
        + "); a card without an efa or efa-only interface is bandwidth the collectives cannot "
        "use. The card counts come from cdk_trn.catalog."
    ),
    resource_types=("AWS::EC2::LaunchTemplate",),
    check=efa_on_every_network_card,
)
