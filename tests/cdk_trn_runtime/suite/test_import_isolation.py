"""Importing cdk_trn, or the suite's pure modules, never imports torch."""

import subprocess
import sys

import pytest


def _imports_torch(statement: str) -> subprocess.CompletedProcess:
    code = f"import sys\n{statement}\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_import_cdk_trn_does_not_import_torch():
    done = _imports_torch("import cdk_trn")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "module", ["schema", "formulas", "thresholds", "summary", "cli", "device", "compile_cache"]
)
def test_pure_module_of_the_suite_does_not_import_torch(module):
    done = _imports_torch(f"import cdk_trn_runtime.suite.{module}")
    assert done.returncode == 0, done.stderr


def test_suite_does_not_import_cdk_trn():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, cdk_trn_runtime.suite.cli, cdk_trn_runtime.suite.summary\n"
            "assert not any(m == 'cdk_trn' or m.startswith('cdk_trn.') for m in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_no_module_imports_the_retired_xla_path_and_no_dependency_names_it():
    """Issue 25: PyTorch/XLA training is retired (TorchNeuron replaced it); torch alone runs the
    code here and in the image."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    name = "torch" + "_xla"  # spelled apart so this file does not match itself
    pattern = re.compile(rf"^\s*(import|from)\s+{name}\b", re.MULTILINE)
    sources = [
        p
        for folder in ("cdk_trn", "cdk_trn_runtime", "stacks", "examples", "benchmarks", "tests")
        for p in (repo / folder).rglob("*.py")
    ]
    assert len(sources) > 100
    assert [str(p) for p in sources if pattern.search(p.read_text())] == []
    for spec in ("pyproject.toml", "constraints.txt", "constraints-oldest.txt"):
        assert "torch-" + "xla" not in (repo / spec).read_text().lower(), spec
    pyproject = (repo / "pyproject.toml").read_text()
    assert re.search(r'"torch==2\.1[34]\.\d+"', pyproject)


def test_the_launcher_and_the_driver_check_need_no_torch():
    for module in ("cdk_trn_runtime.launch", "cdk_trn_runtime.container.driver_check"):
        done = _imports_torch(f"import {module}")
        assert done.returncode == 0, done.stderr
