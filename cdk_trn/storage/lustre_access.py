"""Who may reach an FSx for Lustre file system: the Lustre ports clients and servers open to each
other, and the acknowledgment the all-traffic rules of an EFA-enabled file system need.

Facts: FSx for Lustre user guide, "File system access control with Amazon VPC" (TCP 988 and
1018-1023) and "EFA-enabled security groups" (all traffic).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from cdk_trn.compliance import acknowledge_regulated

__all__ = [
    "LUSTRE_PORT",
    "LUSTRE_SERVER_PORTS",
    "acknowledge_efa_rules",
    "client_ports",
    "construct_paths",
    "new_ingress_rules",
]

LUSTRE_PORT = 988
LUSTRE_SERVER_PORTS = (1018, 1023)

_EFA_ALL_TRAFFIC_REASON = (
    "efa_enabled=True (the default app's -c fsxEfa=true): FSx for Lustre requires all traffic "
    "between the EFA-enabled file system and its clients' security groups (user guide, "
    "'EFA-enabled security groups'); the rule's peer is a security group, never a CIDR, so no "
    "port is open beyond the file system and the cluster"
)


def acknowledge_efa_rules(rules: Iterable[Construct]) -> None:
    """EFA needs all-traffic rules, which the regulated packs read as open common ports."""
    for rule in rules:
        acknowledge_regulated(rule, "EC2RestrictedCommonPorts", _EFA_ALL_TRAFFIC_REASON)


def new_ingress_rules(groups: Sequence[ec2.ISecurityGroup], before: set[str]) -> list[Construct]:
    """Ingress rules added under ``groups`` since ``before`` (construct paths) was taken."""
    return [
        child
        for group in groups
        for child in group.node.find_all()
        if isinstance(child, ec2.CfnSecurityGroupIngress) and child.node.path not in before
    ]


def construct_paths(groups: Sequence[ec2.ISecurityGroup]) -> set[str]:
    """The construct paths under ``groups``, to tell later rules from earlier ones."""
    return {child.node.path for group in groups for child in group.node.find_all()}


def client_ports(efa_enabled: bool) -> list[ec2.Port]:
    """What Lustre clients and servers open to each other: TCP 988 and 1018-1023 (FSx for Lustre
    user guide, "File system access control with Amazon VPC"), or all traffic when the file
    system is EFA-enabled (user guide, "EFA-enabled security groups")."""
    if efa_enabled:
        return [ec2.Port.all_traffic()]
    return [ec2.Port.tcp(LUSTRE_PORT), ec2.Port.tcp_range(*LUSTRE_SERVER_PORTS)]
