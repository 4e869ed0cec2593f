"""The stack outputs the ``cdk-trn`` command reads, created by the constructs themselves.

Each output's key (its logical id) is the contract's ``OUTPUT_*`` name, whatever stack the
construct is composed in, so ``cdk-trn --stack <any stack>`` finds a cluster in a user's own
stack. Fixed keys allow one construct of a kind per stack: :func:`claim_stack` makes a second one
a synth error that names both.
"""

from __future__ import annotations

from collections.abc import Iterable

import aws_cdk as cdk
from constructs import Construct

from cdk_trn.errors import CdkTrnError


class _StackSlot(Construct):
    """Marks the one construct of a kind that publishes its outputs in this stack (creates
    nothing in the template)."""

    def __init__(self, scope: Construct, id: str, *, owner: Construct) -> None:
        super().__init__(scope, id)
        self.owner_path = owner.node.path


def claim_stack(construct: Construct, kind: str, why: str) -> None:
    """Record ``construct`` as its stack's one ``kind``; raise when the stack has one already.

    :param kind: the construct's class name (``TrainiumCluster``), in the message.
    :param why: what the fixed output keys serve, in the message.
    """
    stack = cdk.Stack.of(construct)
    slot_id = f"CdkTrnOne{kind}"
    found = stack.node.try_find_child(slot_id)
    if isinstance(found, _StackSlot):
        raise CdkTrnError(
            f"{construct.node.path}: one {kind} per stack, and stack {stack.node.path} already "
            f"has {found.owner_path}: {why}; put {construct.node.path} in a stack of its own"
        )
    _StackSlot(stack, slot_id, owner=construct)


def add_outputs(
    construct: Construct, outputs: Iterable[tuple[str, str, str]]
) -> dict[str, cdk.CfnOutput]:
    """One ``CfnOutput`` per ``(key, value, description)`` under ``construct``, its logical id
    (the ``OutputKey`` of ``DescribeStacks``) exactly ``key``."""
    created: dict[str, cdk.CfnOutput] = {}
    for key, value, description in outputs:
        output = cdk.CfnOutput(construct, key, value=value, description=description)
        output.override_logical_id(key)
        created[key] = output
    return created
