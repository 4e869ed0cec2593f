"""Every module of cdk_trn_runtime imports with aws-cdk-lib, constructs and cdk-nag made
unimportable: what runs on instances, in handlers and in the enclave never needs the CDK."""

import pkgutil
import subprocess
import sys

import cdk_trn_runtime

BLOCKER = """
import importlib.abc, sys
class _NoCdk(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("aws_cdk", "constructs", "cdk_nag", "jsii"):
            raise ImportError(f"{name} is blocked: cdk_trn_runtime must not import it")
        return None
sys.meta_path.insert(0, _NoCdk())
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print("imported", len(sys.argv) - 1)
"""


def _modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(cdk_trn_runtime.__path__, "cdk_trn_runtime.")
        if not info.name.endswith("__main__")
    ]


def test_the_walk_finds_the_runtime_packages():
    names = set(_modules())
    for expected in (
        "cdk_trn_runtime.contract",
        "cdk_trn_runtime.slurm.config",
        "cdk_trn_runtime.vault.server",
        "cdk_trn_runtime.acceptance.handler",
        "cdk_trn_runtime.cli.command",
    ):
        assert expected in names


def test_every_runtime_module_imports_without_the_cdk():
    modules = _modules()
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER, *modules], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"imported {len(modules)}"
