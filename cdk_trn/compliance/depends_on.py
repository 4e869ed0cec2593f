"""One template pass: drop each ``DependsOn`` that a ``Ref``/``GetAtt`` already implies.

Several aws-cdk-lib constructs add ``node.add_dependency(role)`` to a function (or a state machine)
whose properties already reference that role with ``Fn::GetAtt``: ``lambda.Function``, the
custom-resource ``Provider``'s framework functions and waiter, the ``AwsCustomResource`` singleton,
the provider behind ``Vpc(restrict_default_security_group=True)``. CloudFormation already orders a
resource after everything it references, so the ``DependsOn`` says nothing, and cfn-lint flags it
(W3005, "obsolete DependsOn"). Dropping those edges by construct id (``framework-onTimeout``,
``AWS679f53fac002430cb0da5b7982bd2287``, ...) breaks silently when aws-cdk-lib renames an internal
construct, and silencing W3005 would also hide a real redundant edge of ours. This pass needs no
id: for every resource of the stack it compares its ``DependsOn`` targets with the logical ids its
properties reference, and removes the targets that are referenced anyway. A ``DependsOn`` on
something not referenced (a role's separate policy, a security-group rule) is kept: that edge is
the only thing ordering the two.

It runs when the tree is validated, after ``prepare`` has turned construct dependencies into
``DependsOn`` and before the templates are written, and is registered once per stack by
:func:`drop_implied_depends_on`.
"""

from __future__ import annotations

import re
import weakref
from typing import Any

import aws_cdk as cdk
import jsii
from constructs import IConstruct, IValidation

_REGISTERED: weakref.WeakSet[cdk.Stack] = weakref.WeakSet()
_SUB_REFERENCE = re.compile(r"\$\{([A-Za-z0-9]+)(?:\.[^}]*)?\}")


def drop_implied_depends_on(scope: IConstruct) -> None:
    """Register the pass on ``scope``'s stack (once; later calls are no-ops)."""
    stack = cdk.Stack.of(scope)
    if stack in _REGISTERED:
        return
    _REGISTERED.add(stack)
    stack.node.add_validation(_ImpliedDependsOn(stack))


def referenced_logical_ids(value: Any) -> set[str]:
    """Logical ids a resolved CloudFormation value references (Ref, Fn::GetAtt, Fn::Sub)."""
    found: set[str] = set()
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if isinstance(node.get("Ref"), str):
                found.add(node["Ref"])
            attribute = node.get("Fn::GetAtt")
            if isinstance(attribute, list) and attribute and isinstance(attribute[0], str):
                found.add(attribute[0])
            elif isinstance(attribute, str):
                found.add(attribute.split(".", 1)[0])
            sub = node.get("Fn::Sub")
            text = sub[0] if isinstance(sub, list) and sub else sub
            if isinstance(text, str):
                found.update(_SUB_REFERENCE.findall(text))
            stack.extend(node.values())
    return found


@jsii.implements(IValidation)
class _ImpliedDependsOn:
    def __init__(self, stack: cdk.Stack) -> None:
        self._stack = stack

    def validate(self) -> list[str]:
        stack = self._stack
        for construct in stack.node.find_all():
            if not isinstance(construct, cdk.CfnResource) or cdk.Stack.of(construct) is not stack:
                continue
            targets = [t for t in construct.obtain_dependencies() if isinstance(t, cdk.CfnResource)]
            if not targets:
                continue
            # ``_cfn_properties`` is the resource's own (protected) property bag, as rendered.
            referenced = referenced_logical_ids(stack.resolve(construct._cfn_properties))
            for target in targets:
                if stack.resolve(stack.get_logical_id(target)) in referenced:
                    construct.remove_resource_dependency(target)
        return []
