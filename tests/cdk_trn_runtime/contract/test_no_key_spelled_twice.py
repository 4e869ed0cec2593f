"""No message key is spelled on both sides: every wire key of every message in the contract
(``cdk_trn_runtime.contract``, all its modules) appears as a string literal in a construct module
(``cdk_trn/``) or in a runtime module outside the contract (``cdk_trn_runtime/``), never in both.
A key spelled on both sides is a message the contract does not carry yet: build and parse it with
the contract's message instead (``to_properties()`` / ``from_properties()``, or the environment
forms). Read with ``ast``: literals used as keys (dict displays, subscripts, ``get``...) and
every ``CDK_TRN_*`` literal; docstrings, comments and other strings (an error naming a prop)
do not count."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import cdk_trn_runtime.contract as contract_package
from cdk_trn_runtime.contract.message import Message

ROOT = Path(__file__).resolve().parents[3]
CONSTRUCTS = ROOT / "cdk_trn"
RUNTIME = ROOT / "cdk_trn_runtime"
CONTRACT = RUNTIME / "contract"


def _contract_messages() -> list[type[Message]]:
    for module in pkgutil.iter_modules(contract_package.__path__):
        importlib.import_module(f"{contract_package.__name__}.{module.name}")
    found: list[type[Message]] = []
    pending = list(Message.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith(contract_package.__name__ + "."):
            found.append(cls)
    return found


_LOOKUPS = frozenset({"get", "pop", "setdefault", "getenv"})


def _keys_used(path: Path) -> Iterator[str]:
    """String literals ``path`` uses as a key: of a dict display, a subscript, a ``get``/``pop``/
    ``setdefault``/``getenv`` call, an ``in`` test, a keyword of ``dict(...)``; and every
    environment-variable-like literal (``CDK_TRN_*``), wherever it stands."""
    tree = ast.parse(path.read_text(), filename=str(path))

    def text(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return None

    for node in ast.walk(tree):
        found: list[str | None] = []
        if isinstance(node, ast.Dict):
            found += [text(k) for k in node.keys]
        elif isinstance(node, ast.Subscript):
            found.append(text(node.slice))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in _LOOKUPS and node.args:
                found.append(text(node.args[0]))
            if name == "dict":
                found += [k.arg for k in node.keywords]
        elif isinstance(node, ast.Compare) and any(
            isinstance(op, (ast.In, ast.NotIn)) for op in node.ops
        ):
            found.append(text(node.left))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("CDK_TRN_")
        ):
            found.append(node.value)
        yield from (f for f in found if f)


def _spelled(root: Path, keys: set[str], skip: Path | None = None) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        if skip is not None and skip in path.parents:
            continue
        for literal in set(_keys_used(path)) & keys:
            where.setdefault(literal, []).append(str(path.relative_to(ROOT)))
    return where


#: Keys that are also plain names of something else on both sides; each entry says what, and is
#: removed once the key is no longer spelled twice (a test checks it).
COINCIDENCES = {
    "InstanceType": "AWS's own field: the launch template's CloudFormation property (compliance "
    "rules) and DescribeCapacityReservations' answer (preflight handler)",
    "nodes": "the cluster summary (TrainiumCluster.summary), the twin's state file and the cost "
    "report's job records, not the cluster document",
    "region": "cfn-lint's settings (compliance) and the vault's /v1/info answer, not power_save",
    "job_user": "the researcher documents' placeholders and the twin's state file",
    "AutoScalingGroupName": "AWS's own name: the CloudWatch metric dimension (dashboard) and the "
    "DescribeScalingActivities parameter (cost report), not the acceptance run's property",
}
#: Keys another change moves into the contract (none pending).
PENDING: dict[str, str] = {}


def test_the_contract_has_messages_of_every_module():
    modules = {cls.__module__.rsplit(".", 1)[1] for cls in _contract_messages()}
    assert {
        "preflight",
        "eif",
        "cluster_document",
        "boot",
        "deploy_time",
        "acceptance",
    } <= modules, modules


def _spelled_twice() -> dict[str, dict[str, list[str]]]:
    keys = {wire for cls in _contract_messages() for wire in cls.keys().values()}
    constructs = _spelled(CONSTRUCTS, keys)
    runtime = _spelled(RUNTIME, keys, skip=CONTRACT)
    return {
        wire: {"constructs": constructs[wire], "runtime": runtime[wire]}
        for wire in sorted(constructs.keys() & runtime.keys())
    }


def test_no_message_key_is_spelled_in_both_a_construct_and_a_runtime_module():
    twice = _spelled_twice()
    unexplained = {k: v for k, v in twice.items() if k not in COINCIDENCES and k not in PENDING}
    assert not unexplained, unexplained
    stale = sorted((COINCIDENCES.keys() | PENDING.keys()) - twice.keys())
    assert not stale, f"no longer spelled twice, remove from COINCIDENCES/PENDING: {stale}"
