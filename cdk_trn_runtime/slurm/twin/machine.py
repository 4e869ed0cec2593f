"""Preparing the machine for a twin: root and the tools it needs, the job user with the cloud's
uid, the jobs' Python environment, the twin's directories, munge key, command doubles and bridge."""

from __future__ import annotations

import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from cdk_trn_runtime import contract
from cdk_trn_runtime.slurm.twin import net
from cdk_trn_runtime.slurm.twin.host import (
    CLEAN_PATH,
    DEBIAN_PYTHON,
    log,
    write_file,
)
from cdk_trn_runtime.slurm.twin.settings import FIRST_NODE_OCTET, PACKAGE_ROOT
from cdk_trn_runtime.slurm.twin.state import TwinState

__all__ = ["TwinMachine"]


class TwinMachine(TwinState):
    """Preparation of the machine (:meth:`Twin.up` runs it first)."""

    def _check_machine(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the twin needs root (namespaces, slurmd)")
        for tool in ("munged", "slurmctld", "slurmd", "sinfo", "ip", "nsenter", "unshare"):
            if shutil.which(tool) is None:
                raise RuntimeError(
                    f"{tool} not found: install slurm-wlm, munge, iproute2 and util-linux"
                )
        for parent in self.layout.root.parents:
            if parent.exists() and not parent.stat().st_mode & 0o001:
                raise RuntimeError(
                    f"{parent} is not traversable by others: the slurm user and uid "
                    f"{contract.SLURM_JOB_UID} could not reach {self.layout.root}; put the twin "
                    "elsewhere"
                )

    def _job_user(self) -> tuple[str, int, int]:
        user, uid = contract.SLURM_JOB_USER, contract.SLURM_JOB_UID
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            home = self.layout.shared / contract.SHARED_HOMES / user
            net.run("useradd", "-u", str(uid), "-U", "-M", "-d", str(home), "-s", "/bin/bash", user)
            entry = pwd.getpwnam(user)
        if entry.pw_uid != uid:
            raise RuntimeError(f"user {user} has uid {entry.pw_uid}, the cloud's is {uid}")
        return user, entry.pw_uid, entry.pw_gid

    def _job_environment(self, user: str) -> None:
        """The jobs' Python: Debian's interpreter (the default python3 may live under root's
        0700 home) in a venv that sees this package and the shared venv's packages (torch)."""
        env = self.layout.jobenv
        if not (env / "bin" / "python").exists():
            net.run(
                DEBIAN_PYTHON, "-m", "venv", "--without-pip", "--system-site-packages", str(env)
            )
        version = net.run(
            str(env / "bin" / "python"), "-c", "import sys; print(sys.version_info[:2])"
        ).stdout.strip()
        paths = [str(PACKAGE_ROOT)]
        if version == str(sys.version_info[:2]):
            paths.append(str(Path(sysconfig.get_paths()["purelib"]).resolve()))
        else:
            log(
                f"{DEBIAN_PYTHON} is {version}, this interpreter {sys.version_info[:2]}: jobs "
                "get this package without the shared venv's packages"
            )
        site = net.run(
            str(env / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ).stdout.strip()
        write_file(Path(site) / "cdk-trn-twin.pth", "".join(f"{p}\n" for p in paths))
        probe = subprocess.run(
            [
                "runuser",
                "-u",
                user,
                "--",
                str(env / "bin" / "python"),
                "-c",
                "import cdk_trn_runtime.contract",
            ],
            capture_output=True,
            text=True,
            cwd="/",
            env={"PATH": CLEAN_PATH},
        )
        if probe.returncode != 0:
            raise RuntimeError(
                f"user {user} cannot run the job environment {env}: {probe.stderr.strip()}"
            )

    def _prepare(self, nodes: int) -> None:
        layout = self.layout
        layout.root.mkdir(parents=True, exist_ok=True)
        layout.root.chmod(0o755)
        if "subnet" not in self.state:
            self.state.update(
                subnet=net.choose_subnet(self.tid),
                next_octet=FIRST_NODE_OCTET,
                cluster=f"twin{self.tid}",
                nodes=nodes,
            )
        try:
            slurm = pwd.getpwnam("slurm")
            self.state["slurm_user"] = "slurm"
        except KeyError:
            slurm = pwd.getpwnam("root")
            self.state["slurm_user"] = "root"
        user, uid, gid = self._job_user()
        self.state["job_user"] = user
        self.save()
        for directory in (layout.logs, layout.run, layout.spool / "slurmctld", layout.bin):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
        for directory in (layout.logs, layout.run, layout.spool / "slurmctld"):
            os.chown(directory, slurm.pw_uid, slurm.pw_gid)
        layout.munge.mkdir(exist_ok=True)
        layout.munge.chmod(0o755)  # munged: its socket's directory must be traversable by all
        key = layout.munge / "munge.key"
        if not key.exists():
            write_file(key, secrets.token_hex(512) + "\n", 0o600)
        shared = layout.shared
        shared.mkdir(exist_ok=True)
        shared.chmod(0o755)
        for sub in (contract.SHARED_SLURM_STATE, contract.SHARED_JOB_LOGS):
            (shared / sub).mkdir(parents=True, exist_ok=True)
            os.chown(shared / sub, slurm.pw_uid, slurm.pw_gid)
        (shared / contract.SHARED_SLURM_STATE).chmod(0o700)
        for sub in (
            f"{contract.SHARED_HOMES}/{user}",
            contract.SHARED_CHECKPOINTS,
            contract.SHARED_COMPILE_CACHE,
        ):
            (shared / sub).mkdir(parents=True, exist_ok=True)
            os.chown(shared / sub, uid, gid)
        self._job_environment(user)
        wrapper = (
            "#!/bin/sh\n"
            "# Command double: the twin's {tool} (cdk_trn_runtime/slurm/twin/{module}.py).\n"
            f"export CDK_TRN_TWIN_DIR={shlex.quote(str(layout.root))}\n"
            f"PYTHONPATH={shlex.quote(str(PACKAGE_ROOT))} TWIN_DOUBLE={{tool}} "
            f"exec {DEBIAN_PYTHON} "
            '-m cdk_trn_runtime.slurm.twin.{module} "$@"\n'
        )
        for tool, module in (
            ("aws", "aws_double"),
            ("docker", "doubles"),
            ("systemctl", "doubles"),
        ):
            write_file(layout.bin / tool, wrapper.format(tool=tool, module=module), 0o755)
        net.bridge_up(self.tid, self.state["subnet"])
