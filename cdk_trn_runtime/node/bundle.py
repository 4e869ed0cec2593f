"""The boot bundle of each instance role: the shipped files an instance runs at boot, laid out once.

Roles: ``node`` (a Trainium node), ``controller`` (the Slurm controller) and ``vault`` (an
enclave vault host). The constructs pack a role's bundle into a deterministic tar archive, ship it
as an S3 asset and write the archive's SHA-256 into the user data (``cdk_trn._boot``); the boot
tests and the local twin lay the same files out in a directory with :func:`write_bundle` and run
them unchanged.

Contract (what a host must provide to run a bundle):

* The bundle directory (on an instance ``/opt/cdk-trn/boot``, root-owned, mode 0700) holds the
  files of :func:`bundle_files` under their archive names, the entry script
  :data:`ENTRY_SCRIPTS` ``[role]`` among them; under ``src/cdk_trn_runtime/`` the runtime
  package's files the boot uses, at their package paths: the contract for shell scripts
  (``contract/contract.sh``, which the scripts source) and the Python modules and scripts the
  boot runs from there (never from a directory a job can write); and ``boot.env``: one
  ``NAME=value`` line per
  variable, each value quoted for bash (:func:`render_environment`; the launcher writes the same
  lines with ``printf %q``). Every entry script sources ``boot.env`` from its own directory;
  nothing else passes configuration.
* The host runs ``bash <dir>/<entry>`` as root: with no argument it boots (and signals its
  Auto Scaling group), with a subcommand it is the helper the systemd units call
  (``ExecStart=<dir>/<entry> <subcommand>``; ``units/*.service|*.timer`` are installed from the
  bundle with ``@ENTRY@`` replaced by that path).
* Commands the boot calls (``aws``, ``curl`` for IMDSv2, ``docker``, ``systemctl``, ...) are the
  host's; tests put command doubles first on ``PATH``. ``NODE_BOOTSTRAP_TEST_ROOT`` (tests and
  twin only) names a directory that stands in for ``/`` for the files the node and controller
  scripts write.

Standard library only: this module runs in tests and in the twin, and the constructs import it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shlex
import tarfile
from collections.abc import Mapping
from pathlib import Path

#: The package folder (``cdk_trn_runtime``).
_PACKAGE = Path(__file__).resolve().parents[1]
_NODE = _PACKAGE / "node"
_UNITS = _NODE / "units"
_VAULT = _PACKAGE / "vault"

ROLES = ("node", "controller", "vault")
#: The script a role's launcher runs, by its archive name (the same as its file name here, so a
#: boot failure's ``file:line`` points into this package).
ENTRY_SCRIPTS = {
    "node": "node_bootstrap.sh",
    "controller": "controller_bootstrap.sh",
    "vault": "host_bootstrap.sh",
}
#: The environment file every entry script sources from its own directory.
ENV_FILE = "boot.env"
#: Where the launcher unpacks a bundle on an instance.
BOOT_DIR = "/opt/cdk-trn/boot"

#: systemd units of the Slurm roles, installed by the boot scripts from ``units/``.
_SLURM_UNITS = (
    "cdk-trn-imds-guard.service",
    "cdk-trn-controller-address.service",
    "cdk-trn-controller-address.timer",
    "cdk-trn-metrics.service",
    "cdk-trn-metrics.timer",
    "cdk-trn-lnet-efa.service",
)
_ROLE_UNITS = {
    "node": ("cdk-trn-slurmd.service", *_SLURM_UNITS),
    "controller": (
        "cdk-trn-slurmctld.service",
        "cdk-trn-reaper.service",
        "cdk-trn-apply-document.service",
        "cdk-trn-apply-document.timer",
        *_SLURM_UNITS,
    ),
}
_VAULT_UNITS = (
    "cdk-trn-kms-proxy.service",
    "cdk-trn-enclave.service",
    "cdk-trn-enclave-parent.service",
)
#: What the vault host's parent server imports: the package's common modules and these
#: subpackages (Python sources only), under ``src/``.
_VAULT_PYTHON = ("vault", "enclave")
#: Files of the package the Slurm roles' boot uses from ``src/`` (package paths): the contract
#: for shell scripts, and what the boot runs (node/cluster_spec.py: python3 -I, standard library
#: only; slurm/scripts/reaper.sh: units/cdk-trn-reaper.service).
_SLURM_SOURCES = {
    "node": ("contract/contract.sh",),
    "controller": (
        "contract/contract.sh",
        "node/cluster_spec.py",
        "slurm/scripts/reaper.sh",
    ),
}


def _python_sources(subpackage: str) -> dict[str, Path]:
    root = _PACKAGE / subpackage
    return {
        f"src/{_PACKAGE.name}/{path.relative_to(_PACKAGE).as_posix()}": path
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def bundle_files(role: str) -> dict[str, Path]:
    """The files of ``role``'s bundle: archive name -> file of this package."""
    if role not in ROLES:
        raise ValueError(f"no boot bundle for role {role!r}: one of {', '.join(ROLES)}")
    if role == "vault":
        files = {ENTRY_SCRIPTS[role]: _VAULT / ENTRY_SCRIPTS[role], "units.sh": _NODE / "units.sh"}
        files.update({f"units/{unit}": _VAULT / "units" / unit for unit in _VAULT_UNITS})
        files[f"src/{_PACKAGE.name}/__init__.py"] = _PACKAGE / "__init__.py"
        for subpackage in ("contract", *_VAULT_PYTHON):
            files.update(_python_sources(subpackage))
    else:
        files = {name: _NODE / name for name in ("boot_common.sh", "units.sh", "imds_guard.sh")}
        files[ENTRY_SCRIPTS[role]] = _NODE / ENTRY_SCRIPTS[role]
        files.update({f"units/{unit}": _UNITS / unit for unit in _ROLE_UNITS[role]})
        files.update(
            {f"src/{_PACKAGE.name}/{name}": _PACKAGE / name for name in _SLURM_SOURCES[role]}
        )
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"boot bundle {role!r} names missing files: {missing}")
    return files


def _mode(name: str) -> int:
    return 0o700 if name.endswith(".sh") else 0o600


def bundle_archive(role: str) -> bytes:
    """``role``'s bundle as a gzip-compressed tar archive whose bytes depend only on the files'
    names and contents (sorted entries, root-owned, fixed times and modes), so its SHA-256 is
    known at synth and an unchanged bundle keeps its asset."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, path in sorted(bundle_files(role).items()):
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = _mode(name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def bundle_sha256(role: str) -> str:
    """The hex SHA-256 of :func:`bundle_archive` (what the launcher checks)."""
    return hashlib.sha256(bundle_archive(role)).hexdigest()


def render_environment(variables: Mapping[str, object]) -> str:
    """``NAME=value`` lines, each value quoted with ``shlex.quote``: the one quoting rule of the
    user data and of ``boot.env``."""
    lines = []
    for name, value in variables.items():
        if not name.isidentifier() or not name.isupper():
            raise ValueError(f"not an environment variable name: {name!r}")
        lines.append(f"{name}={shlex.quote(str(value))}")
    return "".join(f"{line}\n" for line in lines)


def write_bundle(role: str, dest: Path, environment: Mapping[str, object] | None = None) -> Path:
    """Lay ``role``'s bundle out in ``dest`` as the launcher unpacks it (and ``boot.env`` from
    ``environment`` when given); return the entry script's path."""
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o700)
    for name, path in bundle_files(role).items():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        target.chmod(_mode(name))
    if environment is not None:
        env = dest / ENV_FILE
        env.write_text(render_environment(environment))
        env.chmod(0o600)
    return dest / ENTRY_SCRIPTS[role]


__all__ = [
    "BOOT_DIR",
    "ENTRY_SCRIPTS",
    "ENV_FILE",
    "ROLES",
    "bundle_archive",
    "bundle_files",
    "bundle_sha256",
    "render_environment",
    "write_bundle",
]
