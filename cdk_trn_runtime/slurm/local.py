"""A real Slurm cluster on this machine: munged, slurmctld and two slurmd (n1, n2) on one host.

    python -m cdk_trn_runtime.slurm.local up|down|status --dir <state dir>

Everything lives under the state directory: the munge key and socket (so a system munged is left
alone), slurm.conf from the one generator (``config.py``), pid files, logs, spools, a directory
standing in for the shared file system (``shared/``) and per-node fake device trees
(``nodes/<n>/root/dev/neuron0..1``) the health check, prolog and epilog (``scripts/``) read
through ``CDK_TRN_DEVICE_ROOT``. Deleting ``nodes/n1/root/dev/neuron1`` makes n1's health check
drain it with the reason ``neuron devices 1 of 2``.

``up`` leaves running daemons alone and starts the ones that are not running: after a slurmd was
killed, ``up`` plays the replacement node. ``down`` cancels the jobs, then stops exactly the
daemons it started, by their pid files, and waits until they have exited. ``up`` prints one line
on stdout, ``export SLURM_CONF=<path>``; everything else goes to stderr.

Jobs run as ``contract.SLURM_JOB_USER`` (uid ``contract.SLURM_JOB_UID``), created when missing.
When that user cannot be created or cannot run this interpreter (e.g. a virtualenv whose Python
lives under a private home directory), jobs run as root and ``up`` says so; ``cluster.json``
records the job user either way. The job environment is this interpreter's virtualenv: the
TaskProlog puts its ``bin`` first on PATH, sets ``CDK_TRN_PYTHON`` and puts this package on
PYTHONPATH.

Needs root and the Debian packages ``slurm-wlm`` and ``munge``.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cdk_trn_runtime import contract
from cdk_trn_runtime.slurm.config import SlurmConfig, StaticNode, render_slurm_conf

NODES = ("n1", "n2")
#: Fake Neuron devices per node; the health check expects exactly this many.
FAKE_NEURON_DEVICES = 2
REAL_MEMORY_MB = 1024
#: Locally a dead slurmd is noticed within this many seconds (the cloud uses 180).
SLURMD_TIMEOUT = 8
HEALTH_CHECK_INTERVAL = 5
SCRIPTS = Path(__file__).resolve().parent / "scripts"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
DAEMONS = ("munged", "slurmctld", *(f"slurmd-{n}" for n in NODES))


def log(message: str) -> None:
    print(f"local-cluster: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Layout:
    """Where everything of one local cluster lives."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge(self) -> Path:
        return self.root / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge / "munge.socket.2"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    def node_root(self, node: str) -> Path:
        return self.root / "nodes" / node / "root"

    def node_env(self, node: str) -> Path:
        return self.root / "nodes" / node / "slurm-node.env"

    def pid_file(self, daemon: str) -> Path:
        if daemon == "munged":
            return self.munge / "munged.pid"
        return self.run / f"{daemon}.pid"


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _alive(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` when that process runs (and is not a zombie), else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return None if state in ("Z", "X") else pid


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def _job_user(layout: Layout) -> tuple[str, int]:
    """contract's job user when it can be made to work here, else root (and why, on stderr)."""
    user, uid = contract.SLURM_JOB_USER, contract.SLURM_JOB_UID
    home = layout.shared / contract.SHARED_HOMES / user
    if subprocess.run(["getent", "passwd", user], capture_output=True).returncode != 0:
        made = subprocess.run(
            ["useradd", "-u", str(uid), "-U", "-M", "-d", str(home), "-s", "/bin/bash", user],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            log(f"jobs run as root: could not create user {user}: {made.stderr.strip()}")
            return "root", 0
    probe = subprocess.run(
        ["runuser", "-u", user, "--", sys.executable, "-c", "import cdk_trn_runtime.contract"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)},
        cwd="/",
    )
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        log(f"jobs run as root: user {user} cannot run {sys.executable} here ({reason})")
        return "root", 0
    actual = int(subprocess.run(["id", "-u", user], capture_output=True, text=True).stdout)
    return user, actual


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def _wrapper(layout: Layout, script: str) -> str:
    env = shlex.quote(str(layout.root / "nodes")) + '/"$SLURMD_NODENAME"/slurm-node.env'
    return (
        "#!/bin/bash\n"
        "# Local cluster: one slurm.conf for all nodes, so the node's environment file is chosen\n"
        "# by the node name slurmd passes.\n"
        f"export CDK_TRN_SLURM_ENV={env}\n"
        f'exec {shlex.quote(str(SCRIPTS / script))} "$@"\n'
    )


def _task_prolog(layout: Layout, user: str) -> str:
    venv_bin = _venv_bin()
    home = layout.shared / contract.SHARED_HOMES / user
    lines = {
        "CDK_TRN_PYTHON": str(venv_bin / "python"),
        "PYTHONPATH": str(PACKAGE_ROOT),
        "CDK_TRN_SHARED_ROOT": str(layout.shared),
        "HOME": str(home),
    }
    # Values are single-quoted for the shell; only PATH appends the task's own $PATH.
    body = "".join(f"printf 'export %s=%s\\n' {k} {shlex.quote(v)}\n" for k, v in lines.items())
    return (
        "#!/bin/bash\n"
        "# Slurm TaskProlog: 'export NAME=value' lines on stdout set the task's environment.\n"
        f"printf 'export PATH=%s:%s\\n' {shlex.quote(str(venv_bin))} \"$PATH\"\n" + body
    )


def _prepare(layout: Layout) -> dict[str, object]:
    """Files of the cluster; returns cluster.json's content (ports and job user are kept)."""
    root = layout.root
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    state: dict[str, object] = {}
    if layout.state_file.exists():
        state = json.loads(layout.state_file.read_text())
    if "ports" not in state:
        state["ports"] = _free_ports(1 + len(NODES))
    if "job_user" not in state:
        user, uid = _job_user(layout)
        state["job_user"], state["job_uid"] = user, uid
    user, uid = str(state["job_user"]), int(str(state["job_uid"]))
    ports = [int(p) for p in state["ports"]]  # type: ignore[attr-defined]

    for directory in (layout.run, layout.logs, root / "spool", layout.bin):
        directory.mkdir(parents=True, exist_ok=True)
    layout.munge.mkdir(exist_ok=True)
    layout.munge.chmod(0o755)  # munged requires execute permission for all on its socket's dir
    key = layout.munge / "munge.key"
    if not key.exists():
        _write(key, os.urandom(1024).hex(), 0o600)

    shared = layout.shared
    for sub in (contract.SHARED_SLURM_STATE, contract.SHARED_JOB_LOGS):
        (shared / sub).mkdir(parents=True, exist_ok=True)
    for sub in (f"{contract.SHARED_HOMES}/{user}", contract.SHARED_CHECKPOINTS):
        path = shared / sub
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, uid, pwd.getpwuid(uid).pw_gid)
    shared.chmod(0o755)

    host = socket.gethostname().split(".")[0]
    nodes = []
    for node, port in zip(NODES, ports[1:], strict=True):
        dev = layout.node_root(node) / "dev"
        dev.mkdir(parents=True, exist_ok=True)
        (layout.node_root(node) / "sys" / "class" / "infiniband").mkdir(parents=True, exist_ok=True)
        for index in range(FAKE_NEURON_DEVICES):
            device = dev / f"neuron{index}"
            if not state.get("created") and not device.exists():
                device.touch()
        env = {
            contract.SLURM_ENV_EXPECTED_NEURON: str(FAKE_NEURON_DEVICES),
            contract.SLURM_ENV_EXPECTED_EFA: "0",
            contract.SLURM_ENV_SHARED_ROOT: str(shared),
            contract.SLURM_ENV_SHARED_FS_TYPE: "",
            contract.SLURM_ENV_DEVICE_ROOT: str(layout.node_root(node)),
            "CDK_TRN_HOST_NODES": " ".join(NODES),
            # This host is not the cluster's alone (other local clusters, other work may run as
            # the same user): the epilog kills only processes that carry the job's id.
            "CDK_TRN_EPILOG_USER_SWEEP": "0",
            "SLURM_CONF": str(layout.conf),
        }
        _write(layout.node_env(node), "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
        nodes.append(StaticNode(node, hostname=host, address="127.0.0.1", port=port))

    for name in ("healthcheck", "prolog", "epilog"):
        _write(layout.bin / name, _wrapper(layout, f"{name}.sh"), 0o755)
    _write(layout.bin / "task-prolog", _task_prolog(layout, user), 0o755)

    config = SlurmConfig(
        cluster_name="local",
        controller_host=host,
        controller_address="127.0.0.1",
        controller_port=ports[0],
        shared_root=str(shared),
        cpus=os.cpu_count() or 1,
        real_memory_mb=REAL_MEMORY_MB,
        nodes=tuple(nodes),
        features=("local", "cpu"),
        partition="local",
        slurmctld_spool_dir=str(root / "spool" / "slurmctld"),
        slurmd_spool_dir=str(root / "spool" / "slurmd-%n"),
        log_dir=str(layout.logs),
        pid_dir=str(layout.run),
        slurm_user="root",
        prolog=str(layout.bin / "prolog"),
        epilog=str(layout.bin / "epilog"),
        task_prolog=str(layout.bin / "task-prolog"),
        health_check_program=str(layout.bin / "healthcheck"),
        health_check_interval=HEALTH_CHECK_INTERVAL,
        slurmd_timeout=SLURMD_TIMEOUT,
        slurmctld_timeout=30,
        resume_timeout=60,
        kill_wait=5,
        message_timeout=4,
        munge_socket=str(layout.munge_socket),
        # One host runs every slurmd: no cgroup hierarchy per node.
        proctrack="proctrack/linuxproc",
        task_plugin="task/none",
    )
    _write(layout.conf, render_slurm_conf(config))
    state["created"] = True
    _write(layout.state_file, json.dumps(state, indent=2) + "\n")
    return state


def _slurm_env(layout: Layout) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(layout.conf)}


def _command(layout: Layout, daemon: str) -> list[str]:
    if daemon == "munged":
        m = layout.munge
        return [
            "munged",
            f"--socket={layout.munge_socket}",
            f"--key-file={m / 'munge.key'}",
            f"--pid-file={m / 'munged.pid'}",
            f"--log-file={m / 'munged.log'}",
            f"--seed-file={m / 'munged.seed'}",
        ]
    if daemon == "slurmctld":
        return ["slurmctld", "-f", str(layout.conf)]
    return ["slurmd", "-f", str(layout.conf), "-N", daemon.removeprefix("slurmd-")]


def _start(layout: Layout, daemon: str) -> None:
    pid_file = layout.pid_file(daemon)
    pid_file.unlink(missing_ok=True)
    result = subprocess.run(
        _command(layout, daemon), env=_slurm_env(layout), capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{daemon} did not start: {result.stderr.strip() or result.stdout}")
    deadline = time.monotonic() + 30
    while _alive(pid_file) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{daemon} wrote no pid file {pid_file}; see {layout.logs}")
        time.sleep(0.2)
    log(f"started {daemon} (pid {_alive(pid_file)})")


def _sinfo_states(layout: Layout) -> dict[str, str]:
    result = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %t"], env=_slurm_env(layout), capture_output=True, text=True
    )
    if result.returncode != 0:
        return {}
    return dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())


def up(layout: Layout, wait_seconds: float = 90) -> dict[str, object]:
    for tool in ("munged", "slurmctld", "slurmd", "sinfo"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: install the packages slurm-wlm and munge")
    if os.geteuid() != 0:
        raise RuntimeError("the local cluster runs slurmd, which needs root")
    state = _prepare(layout)
    for daemon in DAEMONS:
        pid = _alive(layout.pid_file(daemon))
        if pid is None:
            _start(layout, daemon)
        else:
            log(f"{daemon} already running (pid {pid})")
    deadline = time.monotonic() + wait_seconds
    while True:
        states = _sinfo_states(layout)
        ready = [n for n in NODES if states.get(n, "").rstrip("*~#") in ("idle", "alloc", "mix")]
        if len(ready) == len(NODES) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    log("nodes: " + ", ".join(f"{n} {states.get(n, '?')}" for n in NODES))
    log(f"jobs run as {state['job_user']}; shared directory {layout.shared}")
    return state


def _stop(layout: Layout, daemon: str, timeout: float = 30) -> None:
    pid_file = layout.pid_file(daemon)
    pid = _alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid_file) == pid:
        if time.monotonic() > deadline:
            log(f"{daemon} (pid {pid}) ignored SIGTERM for {timeout:.0f}s: SIGKILL")
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
        time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    log(f"stopped {daemon} (pid {pid})")


def down(layout: Layout) -> None:
    if _alive(layout.pid_file("slurmctld")) is not None:
        # Jobs first, so no slurmstepd outlives its slurmd.
        env = _slurm_env(layout)
        jobs = subprocess.run(
            ["squeue", "-h", "-o", "%A"], env=env, capture_output=True, text=True
        ).stdout.split()
        if jobs:
            subprocess.run(["scancel", *jobs], env=env, capture_output=True)
            deadline = time.monotonic() + 20
            while (
                time.monotonic() < deadline
                and subprocess.run(
                    ["squeue", "-h", "-o", "%A"], env=env, capture_output=True, text=True
                ).stdout.split()
            ):
                time.sleep(0.5)
    for daemon in reversed(DAEMONS):
        _stop(layout, daemon)


def status(layout: Layout) -> bool:
    running = True
    for daemon in DAEMONS:
        pid = _alive(layout.pid_file(daemon))
        running &= pid is not None
        print(f"{daemon}: {'running pid ' + str(pid) if pid else 'stopped'}")
    if _alive(layout.pid_file("slurmctld")) is not None:
        for node, node_state in _sinfo_states(layout).items():
            print(f"node {node}: {node_state}")
    return running


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdk_trn_runtime.slurm.local")
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--dir", required=True, type=Path, help="the cluster's state directory")
    args = parser.parse_args(argv)
    layout = Layout(args.dir.resolve())
    try:
        if args.action == "up":
            up(layout)
            print(f"export SLURM_CONF={shlex.quote(str(layout.conf))}")
        elif args.action == "down":
            down(layout)
        else:
            return 0 if status(layout) else 3
    except RuntimeError as error:
        log(str(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
