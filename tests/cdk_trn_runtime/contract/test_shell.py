"""contract.sh: the contract's constants for shell scripts, rendered from the contract, and the
scripts that use it instead of spelling the values themselves."""

from __future__ import annotations

import re
import subprocess
import types
from pathlib import Path

import pytest

from cdk_trn_runtime import contract
from cdk_trn_runtime.contract import shell

RUNTIME = Path(contract.__file__).resolve().parents[1]


def _bash(script: str, **env: str) -> str:
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        check=True,
    )
    return done.stdout


def test_the_committed_file_is_the_contract_rendered():
    assert shell.CONTRACT_SH.read_text() == shell.render(), (
        "contract.sh is stale: run python -m cdk_trn_runtime.contract.shell"
    )


def test_every_scalar_sequence_and_mapping_reads_back_in_bash():
    printed = _bash(f'. "{shell.CONTRACT_SH}"; declare -p ${{!CONTRACT_@}}')
    names = set(re.findall(r"^declare -\w+ (CONTRACT_\w+)=", printed, re.M))
    for name, value in vars(contract).items():
        if not name.isupper() or callable(value):
            continue
        if isinstance(value, (str, int)) or (
            isinstance(value, tuple) and all(isinstance(v, (str, int)) for v in value)
        ):
            assert f"CONTRACT_{name}" in names, name
    assert _bash(f'. "{shell.CONTRACT_SH}"; echo "$CONTRACT_SLURMCTLD_PORT"') == "6817\n"
    ports = _bash(f'. "{shell.CONTRACT_SH}"; echo "${{CONTRACT_RENDEZVOUS_PORTS[@]}}"')
    assert ports.split() == [str(p) for p in contract.RENDEZVOUS_PORTS]
    efa = _bash(f'. "{shell.CONTRACT_SH}"; echo "${{CONTRACT_NODE_EFA_COUNTERS[rx_drops]}}"')
    assert efa == contract.NODE_EFA_COUNTERS["rx_drops"] + "\n"


@pytest.mark.parametrize(
    "value", ["it's", "$(touch /tmp/x) `id` $HOME", "a b\tc", "\\", "'", "", "--flag", 0, 6817]
)
def test_a_value_is_one_single_quoted_word_whatever_it_holds(tmp_path, value):
    module = types.ModuleType("m")
    module.VALUE = value  # type: ignore[attr-defined]
    path = tmp_path / "c.sh"
    path.write_text(shell.render(module))
    assert _bash(f'. "{path}"; printf %s "$CONTRACT_VALUE"') == str(value)


def test_a_value_the_shell_cannot_hold_on_one_line_is_refused():
    with pytest.raises(ValueError, match="one line"):
        shell.quote("two\nlines")
    with pytest.raises(TypeError):
        shell.quote(True)


def test_only_constants_are_rendered():
    module = types.ModuleType("m")
    module.NAME = "x"  # type: ignore[attr-defined]
    module.FLAG = True  # type: ignore[attr-defined]
    module.NESTED = {"a": ("b",)}  # type: ignore[attr-defined]
    module.lower = "y"  # type: ignore[attr-defined]
    assert list(shell.constants(module)) == ["CONTRACT_NAME"]


def test_the_environment_cannot_preset_a_name_and_sourcing_twice_is_harmless():
    source = f'. "{shell.CONTRACT_SH}"'
    out = _bash(
        f'set -e; {source}; {source}; echo "$CONTRACT_SLURMCTLD_PORT"',
        CONTRACT_SLURMCTLD_PORT="1",
        CONTRACT_SH_LOADED="1",
    )
    assert out == f"{contract.SLURMCTLD_PORT}\n"


def test_an_exported_function_named_declare_cannot_fake_the_load_guard():
    # The environment defines a function ``declare`` that prints what the old guard looked for
    # (``declare -r``) and presets a contract name: the file's readonly value still wins.
    out = _bash(
        f'. "{shell.CONTRACT_SH}"; printf %s "$CONTRACT_SLURM_NODE_ENV_FILE"',
        **{"BASH_FUNC_declare%%": "() {  echo declare -r; }"},
        CONTRACT_SLURM_NODE_ENV_FILE="/tmp/attacker-env",
        CONTRACT_SH_LOADED="1",
    )
    assert out == contract.SLURM_NODE_ENV_FILE
    # And the guard holds under set -u, with or without an earlier load.
    source = f'. "{shell.CONTRACT_SH}"'
    assert _bash(f'set -u; {source}; {source}; echo "$CONTRACT_SLURMCTLD_PORT"') == "6817\n"


def test_the_check_mode_tells_a_stale_file(tmp_path, monkeypatch):
    assert shell.main(["--check"]) == 0
    stale = tmp_path / "contract.sh"
    stale.write_text("readonly CONTRACT_SLURMCTLD_PORT='1'\n")
    monkeypatch.setattr(shell, "CONTRACT_SH", stale)
    assert shell.main(["--check"]) == 1


# --- No script spells a value contract.sh provides ------------------------------------------------

#: Values distinctive enough that a script spelling them means a copy of the contract.
DISTINCTIVE = {
    "SLURMCTLD_PORT": contract.SLURMCTLD_PORT,
    "SLURMD_PORT": contract.SLURMD_PORT,
    "SLURM_CONTROLLER_CONTAINER": contract.SLURM_CONTROLLER_CONTAINER,
    "SLURM_NODE_CONTAINER": contract.SLURM_NODE_CONTAINER,
    "SLURM_CONTROLLER_ADDR": contract.SLURM_CONTROLLER_ADDR,
    "SLURM_DAEMON_UID": contract.SLURM_DAEMON_UID,
    "SLURM_NODE_ENV_FILE": contract.SLURM_NODE_ENV_FILE,
    "CLUSTER_TAG": contract.CLUSTER_TAG,
    "VAULT_DISCOVERY_TAG": contract.VAULT_DISCOVERY_TAG,
    "METRICS_NAMESPACE_NODE": contract.METRICS_NAMESPACE_NODE,
    "METRICS_NAMESPACE_SLURM": contract.METRICS_NAMESPACE_SLURM,
    "METRICS_NAMESPACE_ACCEPTANCE": contract.METRICS_NAMESPACE_ACCEPTANCE,
    "SHARED_COMPILE_CACHE": contract.SHARED_COMPILE_CACHE,
}
#: Every script and systemd unit of the runtime but contract.sh itself. (The training image's
#: Dockerfile pins the uids too; tests/cdk_trn_runtime/container/test_dockerfile.py compares
#: them with the contract.)
SCRIPTS = sorted(
    path
    for pattern in ("*.sh", "*.sbatch", "*.service", "*.timer")
    for path in RUNTIME.rglob(pattern)
    if path != shell.CONTRACT_SH
)


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines that are code: neither comments nor a unit's human-readable Description."""
    return [
        (number, line)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if not line.lstrip().startswith("#") and not line.startswith("Description=")
    ]


def test_the_distinctive_values_are_in_contract_sh():
    text = shell.CONTRACT_SH.read_text()
    for name, value in DISTINCTIVE.items():
        assert f"readonly CONTRACT_{name}={shell.quote(value)}\n" in text


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(RUNTIME)))
def test_no_script_hard_codes_a_value_contract_sh_provides(path):
    spelled = [
        f"{path.name}:{number}: {name} ({value}): {line.strip()}"
        for number, line in _code_lines(path)
        for name, value in DISTINCTIVE.items()
        if re.search(rf"(?<![\w.-]){re.escape(str(value))}(?![\w.-])", line)
    ]
    assert not spelled, "source contract.sh and use CONTRACT_<name>:\n" + "\n".join(spelled)
