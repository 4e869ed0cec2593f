"""The one way cdk-trn acknowledges a compliance finding on a construct.

cdk-nag 3 reads acknowledgments from construct metadata written by ``Validations.acknowledge``;
keeping the call in one place means its id format is decided once.
"""

from __future__ import annotations

import aws_cdk as cdk
from constructs import IConstruct


def acknowledge(construct: IConstruct, rule_id: str, reason: str) -> None:
    """Acknowledge ``rule_id`` on ``construct`` (and its children) with a specific ``reason``."""
    if len(reason.strip()) < 20:
        raise ValueError(f"acknowledgment of {rule_id} needs a specific reason, got {reason!r}")
    cdk.Validations.of(construct).acknowledge(cdk.Acknowledgment(id=rule_id, reason=reason))
