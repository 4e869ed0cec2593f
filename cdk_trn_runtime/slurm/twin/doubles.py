"""Command doubles for the cloud's boot code on the twin: ``docker`` and ``systemctl``.

Installed as ``<twin>/bin/docker`` and ``<twin>/bin/systemctl`` (first on the boot's PATH); they
run inside an instance's namespaces, as root.

``docker run`` runs the image's command on the host inside a mount namespace of its own (a child
of the instance's): the image's files are this checkout's ``cdk_trn_runtime`` at
``/opt/cdk-trn/cdk_trn_runtime`` and the host's Slurm and munge packages; the image's writable
directories (``/var/lib/munge``, ``/var/log/munge``, ``/var/log/slurm``, ``/var/spool/slurmd``)
are tmpfs of its own; ``--volume`` binds, ``--env-file`` and ``--entrypoint`` are honoured,
the image's ``python`` is Debian's python3; network, PID, IPC, privileges and ulimits are the
instance's. ``docker exec [-u USER] [-w DIR]`` enters that mount namespace as USER in DIR;
``docker rm --force``/``stop`` end it; ``pull``/``login`` succeed (no registry).

``systemctl enable --now``/``start``/``restart``/``stop`` run a unit's ``ExecStart`` (and
``ExecStop``) from ``/etc/systemd/system`` detached, in a clean environment with the unit's
``Environment=``; timers are recorded but not run; ``docker.service`` always runs.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path("/run/twin-doubles")
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PACKAGE_ROOT = Path(__file__).resolve().parents[3]
#: Where the double puts the image's commands this host lacks (``python``).
IMAGE_BIN = "/opt/cdk-trn/bin"
IMAGE_WRITABLE = ("/var/lib/munge", "/var/log/munge", "/var/log/slurm", "/var/spool/slurmd")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _stop(pid: int, timeout: float) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


# --- docker ------------------------------------------------------------------------------------

_FLAGS_WITH_VALUE = {
    "--name",
    "--network",
    "--pid",
    "--ipc",
    "--cgroupns",
    "--ulimit",
    "--env-file",
    "--volume",
    "-v",
    "--entrypoint",
    "--env",
    "-e",
    "--time",
    "-t",
    "--username",
    "--user",
    "-u",
    "-w",
    "--workdir",
}


def _container(name: str) -> Path:
    return STATE / "docker" / name


def docker_run(argv: list[str]) -> int:
    options: dict[str, list[str]] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        flag = argv[i]
        if "=" in flag:
            flag, value = flag.split("=", 1)
            options.setdefault(flag, []).append(value)
        elif flag in _FLAGS_WITH_VALUE:
            options.setdefault(flag, []).append(argv[i + 1])
            i += 1
        else:
            options.setdefault(flag, []).append("")
        i += 1
    image, command = argv[i], argv[i + 1 :]
    # The image's `python` (its PATH has one): Debian's python3 stands in for it.
    env = {
        "PATH": f"{IMAGE_BIN}:{CLEAN_PATH}",
        "PYTHONPATH": "/opt/cdk-trn",
        "LANG": "C.UTF-8",
        "HOME": "/root",
    }
    for env_file in options.get("--env-file", []):
        for line in Path(env_file).read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                env[key] = value
    for item in options.get("--env", []) + options.get("-e", []):
        key, _, value = item.partition("=")
        env[key] = value
    entrypoint = options.get("--entrypoint", [""])[-1]
    program = ([entrypoint] if entrypoint else []) + command
    if not program:
        print(f"docker (twin double): {image} has no command here", file=sys.stderr)
        return 125
    setup = [
        "set -e",
        "mount -t tmpfs -o mode=0755 tmpfs /opt",
        "mkdir -p /opt/cdk-trn/cdk_trn_runtime",
        f"mkdir -p {IMAGE_BIN} && ln -s /usr/bin/python3 {IMAGE_BIN}/python",
        f"mount --bind {shlex.quote(str(PACKAGE_ROOT / 'cdk_trn_runtime'))} "
        "/opt/cdk-trn/cdk_trn_runtime",
    ]
    for writable in IMAGE_WRITABLE:
        owner = "munge" if "munge" in writable else "root"
        ids = f"uid=$(id -u {owner}),gid=$(id -g {owner})"
        setup += [f"mkdir -p {writable}", f"mount -t tmpfs -o mode=0755,{ids} tmpfs {writable}"]
    for volume in options.get("--volume", []) + options.get("-v", []):
        parts = volume.split(":")
        source, target = parts[0], parts[1]
        read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        s, t = shlex.quote(source), shlex.quote(target)
        make_file = f'mkdir -p "$(dirname {t})"; [ -e {t} ] || : > {t}'
        setup.append(f"if [ -d {s} ]; then mkdir -p {t}; else {make_file}; fi")
        setup.append(f"mount --bind {s} {t}")
        if read_only:
            setup.append(f"mount -o remount,bind,ro {t}")
    name = options.get("--name", [""])[-1]
    if name:
        directory = _container(name)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "env.json").write_text(json.dumps(env))
        setup.append(f"echo $$ > {shlex.quote(str(directory / 'pid'))}")
    env_args = [f"{k}={v}" for k, v in env.items()]
    setup.append('exec env -i "$@"')
    os.execvp(  # noqa: S606 (the container's command, as docker runs it)
        "unshare",
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            "\n".join(setup),
            "twin-container",
            *env_args,
            *program,
        ],
    )
    return 0  # not reached


def _container_pid(name: str) -> int | None:
    try:
        pid = int((_container(name) / "pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def docker_exec(argv: list[str]) -> int:
    """``docker exec [-u USER] [-w DIR] [-i] [-t] NAME COMMAND...``: Docker's options end at the
    container's name; the command's own options are the command's."""
    user, workdir, i = "root", "/", 0
    while i < len(argv) and argv[i].startswith("-"):
        flag = argv[i]
        if flag in ("-u", "--user", "-w", "--workdir"):
            value = argv[i + 1]
            i += 1
            if flag in ("-u", "--user"):
                user = value
            else:
                workdir = value
        i += 1
    name, command = argv[i], argv[i + 1 :]
    pid = _container_pid(name)
    if pid is None:
        print(f"Error response from daemon: No such container: {name}", file=sys.stderr)
        return 1
    env = json.loads((_container(name) / "env.json").read_text())
    return subprocess.run(
        [
            "nsenter",
            "-t",
            str(pid),
            "-m",
            f"--wd={workdir}",
            "--",
            "runuser",
            "-u",
            user,
            "--",
            "env",
            "-i",
            *[f"{k}={v}" for k, v in env.items()],
            *command,
        ]
    ).returncode


def docker_end(argv: list[str], timeout: float = 10) -> int:
    names = [a for a in argv if not a.startswith("-") and not a.isdigit()]
    status = 0
    for name in names:
        pid = _container_pid(name)
        if pid is None:
            status = 0 if "--force" in argv or "-f" in argv else 1
            continue
        _stop(pid, timeout)
    return status


def docker(argv: list[str]) -> int:
    if not argv:
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        return docker_run(rest)
    if command == "exec":
        return docker_exec(rest)
    if command in ("rm", "stop", "kill"):
        return docker_end(rest)
    if command == "login":
        sys.stdin.read()
        return 0
    if command in ("pull", "info", "version"):
        return 0
    print(f"docker (twin double): unsupported: docker {' '.join(argv)}", file=sys.stderr)
    return 125


# --- systemctl ---------------------------------------------------------------------------------

UNITS = Path("/etc/systemd/system")


def _unit(name: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def _unit_pid(name: str) -> int | None:
    try:
        pid = int((STATE / "systemd" / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _unit_env(unit: dict[str, list[str]]) -> dict[str, str]:
    env = {"PATH": os.environ.get("TWIN_UNIT_PATH", CLEAN_PATH), "LANG": "C.UTF-8"}
    for line in unit.get("Environment", []):
        for item in shlex.split(line):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def unit_start(name: str) -> int:
    if name in ("docker", "docker.service"):
        return 0
    if name.endswith(".timer"):
        (STATE / "systemd").mkdir(parents=True, exist_ok=True)
        (STATE / "systemd" / f"{name}.enabled").touch()
        return 0
    if not name.endswith(".service"):
        name += ".service"
    if not (UNITS / name).exists():
        print(f"Failed to start {name}: Unit {name} not found.", file=sys.stderr)
        return 5
    if _unit_pid(name) is not None:
        return 0
    unit = _unit(name)
    (STATE / "systemd").mkdir(parents=True, exist_ok=True)
    log = Path(os.environ.get("TWIN_UNIT_LOGS", "/run/twin-doubles/systemd")) / f"{name}.log"
    process = subprocess.Popen(
        shlex.split(unit["ExecStart"][0]),
        env=_unit_env(unit),
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=open(log, "a"),  # noqa: SIM115 (the unit keeps it)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (STATE / "systemd" / f"{name}.pid").write_text(str(process.pid))
    return 0


def unit_stop(name: str) -> int:
    if not name.endswith((".service", ".timer")):
        name += ".service"
    pid = _unit_pid(name)
    if pid is None:
        return 0
    unit = _unit(name)
    for stop in unit.get("ExecStop", []):
        subprocess.run(shlex.split(stop), env=_unit_env(unit), cwd="/")
    _stop(pid, 60)
    return 0


def systemctl(argv: list[str]) -> int:
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] == "daemon-reload":
        return 0
    command, units = words[0], words[1:]
    status = 0
    if command == "enable":
        if "--now" in argv:
            for unit in units:
                status = status or unit_start(unit)
        return status
    if command == "start":
        for unit in units:
            status = status or unit_start(unit)
        return status
    if command == "stop":
        for unit in units:
            unit_stop(unit)
        return 0
    if command == "restart":
        for unit in units:
            unit_stop(unit)
            status = status or unit_start(unit)
        return status
    if command == "is-active":
        return 0 if all(_unit_pid(u if "." in u else u + ".service") for u in units) else 3
    print(f"systemctl (twin double): unsupported: systemctl {' '.join(argv)}", file=sys.stderr)
    return 1


def main() -> int:
    tool = os.environ.get("TWIN_DOUBLE", Path(sys.argv[0]).name)
    if tool == "docker":
        return docker(sys.argv[1:])
    if tool == "systemctl":
        return systemctl(sys.argv[1:])
    print(f"twin doubles: unknown tool {tool}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
