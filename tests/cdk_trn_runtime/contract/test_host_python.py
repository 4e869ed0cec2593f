"""What the hosts run with AL2023's system ``python3`` (3.9) works on 3.9.

The modules are found in the scripts, not listed here: every line of a runtime shell script that
starts the system ``python3`` must have one of the forms below, so a new invocation is either
recognized (and its module tested on 3.9) or fails this test. Lines that pass ``-P`` or start
``python3`` in a container (``--entrypoint python3``) run the image's Python: ``-P`` does not
exist before 3.11, so they cannot be meant for a 3.9 host. (The node metrics' collector,
``node_metrics.sh``, runs ``python3`` in the Slurm container, whose Python is newer; a script
cannot tell, so its module is held to 3.9 as well.)

Each module, and what it imports from ``cdk_trn_runtime``, is compiled and imported by a real 3.9
(``tests/support/host_python.py``); the tests of its functions run it on 3.9 too
(``test_python_of_scripts.py``, ``tests/cdk_trn_runtime/vault/test_state_store.py``). An import runs
the module's top level only, so the source is also scanned for what 3.9 lacks at run time in code
the tests may not reach (``zip(strict=)``, ``datetime.UTC``, ``X | Y`` outside annotations).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.host_python import REPO, host_python

RUNTIME = REPO / "cdk_trn_runtime"

#: A word ``python3`` (not ``python3.11``, not ``python3-botocore``) or the ``$PY`` alias.
_STARTS_PYTHON = re.compile(r"(^|[^\w.$/-])python3($|[^\w.-])|\"\$PY\"")
_CONTAINER = re.compile(r"--entrypoint python3\b|python3 -P\b")
#: The forms a host starts the system python3 with: (pattern, how the match names a module file).
_FILE_IN_BUNDLE = re.compile(r'python3 -I "\$\w+/src/(cdk_trn_runtime/[\w/]+\.py)"')
_MODULE_FROM_BUNDLE = re.compile(r"python3 -E -s -m (cdk_trn_runtime(?:\.\w+)+)")
_BUNDLE_PYTHON_DEFINITION = re.compile(r'python3 -I "\$BUNDLE_SRC/\$module"')
_BUNDLE_PYTHON_CALL = re.compile(r"\bbundle_python ([\w/]+\.py)")
_PY_ALIAS = re.compile(r'PY="\$\{CDK_TRN_PYTHON:-python3\}"')
_PY_FILE = re.compile(r'"\$PY" -I "\$HERE/([\w/]+\.py)"')


def _host_invocations() -> tuple[set[Path], list[str]]:
    """The module files the scripts run with the system python3, and the lines of no known form."""
    files: set[Path] = set()
    unknown: list[str] = []
    for script in sorted(RUNTIME.rglob("*.sh")):
        for number, line in enumerate(script.read_text().splitlines(), 1):
            code = line.split(" #", 1)[0]
            if code.lstrip().startswith("#"):
                continue
            for match in _BUNDLE_PYTHON_CALL.finditer(code):
                files.add(RUNTIME / match[1])
            if not _STARTS_PYTHON.search(code) or _CONTAINER.search(code):
                continue
            if match := _FILE_IN_BUNDLE.search(code):
                files.add(REPO / match[1])
            elif match := _MODULE_FROM_BUNDLE.search(code):
                files.add(REPO / (match[1].replace(".", "/") + ".py"))
                package = REPO / match[1].replace(".", "/")
                # -m imports each package above the module first.
                for parent in package.parents:
                    if parent == REPO:
                        break
                    files.add(parent / "__init__.py")
            elif match := _PY_FILE.search(code):
                files.add(script.parent / match[1])
            elif not (_BUNDLE_PYTHON_DEFINITION.search(code) or _PY_ALIAS.search(code)):
                unknown.append(f"{script.relative_to(REPO)}:{number}: {line.strip()}")
    return files, unknown


def _runtime_imports(path: Path) -> set[Path]:
    """The files of ``cdk_trn_runtime`` that ``path`` imports, and theirs."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        for name in names:
            if name.split(".")[0] == "cdk_trn_runtime":
                base = REPO / name.replace(".", "/")
                target = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
                if target not in found:
                    found.add(target)
                    found |= _runtime_imports(target)
    return found


def _host_modules() -> list[Path]:
    files, _ = _host_invocations()
    for path in list(files):
        files |= _runtime_imports(path)
    return sorted(files)


HOST_MODULES = _host_modules()
_IDS = [str(p.relative_to(REPO)) for p in HOST_MODULES]


def test_every_system_python3_line_of_the_scripts_has_a_known_form():
    assert _host_invocations()[1] == []


def test_the_modules_the_hosts_run_are_found():
    # The scan finds at least the ones known today (a scan finding nothing would test nothing).
    assert {
        "cdk_trn_runtime/node/cluster_spec.py",
        "cdk_trn_runtime/monitoring/neuron_report.py",
        "cdk_trn_runtime/vault/host_checks.py",
        "cdk_trn_runtime/vault/state_store.py",
        "cdk_trn_runtime/vault/__init__.py",
        "cdk_trn_runtime/__init__.py",
    } <= set(_IDS)
    assert all(p.is_file() for p in HOST_MODULES)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", HOST_MODULES, ids=_IDS)
def test_python_3_9_compiles_and_imports_it(path: Path):
    done = subprocess.run(
        [
            host_python(),
            "-I",
            "-c",
            "import importlib, sys; path, name, root = sys.argv[1:]; "
            "compile(open(path).read(), path, 'exec'); sys.path.insert(0, root); "
            "importlib.import_module(name)",
            str(path),
            _module_name(path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


#: Names that exist only from 3.10 on, by module (what an import at 3.9 would not find).
_NEWER_NAMES = {
    "typing": {"TypeAlias", "ParamSpec", "Concatenate", "TypeGuard", "Self", "Never", "Required"}
    | {"NotRequired", "LiteralString", "assert_never", "reveal_type", "dataclass_transform"},
    "itertools": {"pairwise"},
    "datetime": {"UTC"},
}
_NEWER_MODULES = {"tomllib"}
_TYPE_NAMES = {"int", "str", "bytes", "float", "bool", "dict", "list", "tuple", "set", "type"}


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """Annotations are never evaluated (every host module has ``from __future__ import
    annotations``), so ``X | Y`` is fine there."""
    annotations: list[ast.expr | None] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign):
            annotations.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations.append(node.returns)
    return {id(n) for a in annotations if a is not None for n in ast.walk(a)}


def _is_type(node: ast.expr) -> bool:
    return (isinstance(node, ast.Constant) and node.value is None) or (
        isinstance(node, ast.Name) and node.id in _TYPE_NAMES
    )


def _newer_than_3_9(tree: ast.AST) -> list[str]:
    """What 3.9 lacks at run time, where a compile does not see it."""
    found = []
    annotations = _annotation_nodes(tree)
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            keywords = {k.arg for k in node.keywords}
            name = node.func.id if isinstance(node.func, ast.Name) else ""
            if name in {"zip", "map"} and "strict" in keywords:
                found.append(f"{where}: {node.func.id}(strict=) is 3.10")
            if keywords & {"slots", "kw_only"}:
                found.append(f"{where}: dataclass slots=/kw_only= are 3.10")
        elif isinstance(node, ast.Attribute) and node.attr in {"UTC", "bit_count"}:
            found.append(f"{where}: .{node.attr} is newer than 3.9")
        elif (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.BitOr)
            and id(node) not in annotations
            and (_is_type(node.left) or _is_type(node.right))
        ):
            found.append(f"{where}: X | Y of types at run time is 3.10")
        elif isinstance(node, ast.ImportFrom) and node.module in _NEWER_NAMES:
            newer = [a.name for a in node.names if a.name in _NEWER_NAMES[node.module]]
            found += [f"{where}: {node.module}.{name} is newer than 3.9" for name in newer]
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            found += [f"{where}: {n} is 3.11" for n in names if n in _NEWER_MODULES]
    return found


@pytest.mark.parametrize("path", HOST_MODULES, ids=_IDS)
def test_nothing_newer_than_3_9_hides_where_an_import_does_not_reach(path: Path):
    assert _newer_than_3_9(ast.parse(path.read_text())) == []


def test_the_scan_sees_what_3_9_lacks():
    source = (
        "import datetime, tomllib\nfrom typing import TypeAlias\n"
        "def f(a: int | None) -> int | None:\n"
        "    for x, y in zip(a, a, strict=True):\n        pass\n"
        "    isinstance(a, int | None)\n    return datetime.UTC\n"
    )
    assert sorted(f.split(": ", 1)[1] for f in _newer_than_3_9(ast.parse(source))) == [
        ".UTC is newer than 3.9",
        "X | Y of types at run time is 3.10",
        "tomllib is 3.11",
        "typing.TypeAlias is newer than 3.9",
        "zip(strict=) is 3.10",
    ]
