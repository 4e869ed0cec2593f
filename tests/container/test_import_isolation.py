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
