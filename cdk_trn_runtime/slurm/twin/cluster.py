"""The twin's lifecycle: up (create, resize, heal), replace, restart-controller, down, status.

Every instance (the controller and each node) is a *holder* process (``sleep infinity``) in
namespaces of its own: a network namespace with its address on the twin's bridge, a UTS
namespace with EC2's host name, and a private mount namespace in which ``/etc`` is an overlay
(the instance's own ``/etc/hosts``, ``/etc/slurm``, ``/etc/cdk-trn``, written into its upper
directory) and ``/run`` a tmpfs carrying the twin's munge socket at munge's default path. Daemons
are started inside with ``nsenter`` in a clean environment, as systemd starts a unit: that is
the one place (:meth:`Twin.start_in`) where, with ``--boot cloud``, the node's boot bundle
(``cdk_trn_runtime.node.bundle.write_bundle``) runs unchanged.

The controller applies the cluster document (``document.json``, the stand-in for the SSM
parameter the cloud controller re-reads) with ``cdk_trn_runtime.slurm.apply`` and restarts or
reconfigures slurmctld as that says; the reaper (``scripts/reaper.sh``) runs beside it with the
``aws`` double first on its PATH. Nodes run ``slurmd -Z`` configless against the controller's
stable name ``cdk-trn-slurmctld`` with the cloud's prolog, epilog, health check and TaskProlog.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdk_trn_runtime import contract
from cdk_trn_runtime.node.bundle import write_bundle
from cdk_trn_runtime.slurm import document as cluster_doc
from cdk_trn_runtime.slurm.twin import net

PACKAGE_ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = PACKAGE_ROOT / "cdk_trn_runtime" / "slurm" / "scripts"
SLURMCTLD_NAME = "cdk-trn-slurmctld"
CONTROLLER = "controller"
CONTROLLER_OCTET = 2
FIRST_NODE_OCTET = 10
DEFAULT_NODES = 2
#: Fake Neuron devices per node; the health check expects exactly this many.
FAKE_NEURON_DEVICES = 2
#: The twin's shorter timeouts (the cloud's are in document.HOST_DEFAULTS).
TWIN_TIMEOUTS = {
    "slurmd_timeout": 20,
    "slurmctld_timeout": 10,
    "message_timeout": 10,  # Slurm's default: a loaded 2-core CI machine misses shorter ones
    "kill_wait": 5,
    "resume_timeout": 60,
    "health_check_interval": 10,
    # A requeued job waits this long before it starts again (Slurm's default: 120 s).
    "cred_expire": 30,
}
REAPER_INTERVAL = 5
REGION = "twin-local-1"
#: What systemd gives a unit: no caller's SLURM_CONF, venv PATH or AWS settings.
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_PYTHON = "/usr/bin/python3"
#: A node is usable in these sinfo states (%t, without the flags * ~ # ! % $ @ ^ -).
USABLE = ("idle", "alloc", "mix")


def log(message: str) -> None:
    print(f"twin: {message}", file=sys.stderr, flush=True)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def _wait(what: str, check: Any, timeout: float, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout:.0f}s: {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Layout:
    """Where one twin keeps everything (all of it removed by ``down``)."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "twin.json"

    @property
    def conf(self) -> Path:
        """The login node's slurm.conf: the controller's, copied after each apply."""
        return self.root / "slurm.conf"

    @property
    def document(self) -> Path:
        """The cluster document the controller applies (the cloud's SSM parameter)."""
        return self.root / "document.json"

    @property
    def munge(self) -> Path:
        return self.root / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge / "munge.socket.2"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def bin(self) -> Path:
        """Command doubles (``aws``), first on the PATH of the twin's controller processes."""
        return self.root / "bin"

    @property
    def jobenv(self) -> Path:
        return self.root / "jobenv"

    def instance(self, name: str) -> Path:
        return self.root / "instances" / name

    def device_root(self, name: str) -> Path:
        return self.instance(name) / "root"


class Twin:
    def __init__(self, root: Path) -> None:
        self.layout = Layout(root.resolve())
        self.tid = net.twin_id(self.layout.root)
        self.state: dict[str, Any] = {}
        if self.layout.state_file.exists():
            self.state = json.loads(self.layout.state_file.read_text())

    # --- state ------------------------------------------------------------------------------

    def save(self) -> None:
        _write(self.layout.state_file, json.dumps(self.state, indent=2, sort_keys=True) + "\n")

    @property
    def instances(self) -> dict[str, dict[str, Any]]:
        return self.state.setdefault("instances", {})

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n: i for n, i in self.instances.items() if i["role"] == "node"}

    def address(self, octet: int) -> str:
        return net.address(self.state["subnet"], octet)

    @property
    def controller_address(self) -> str:
        return self.address(CONTROLLER_OCTET)

    def slurm_env(self) -> dict[str, str]:
        """The login node's environment for Slurm commands."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.layout.conf)
        return env

    def slurm(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, env=self.slurm_env(), capture_output=True, text=True, timeout=timeout
        )

    # --- the cluster document ---------------------------------------------------------------

    def cluster_document(self, nodes: int) -> dict[str, Any]:
        """The document of this twin, built by the function the construct uses."""
        root, ports = self.layout.root, self.state
        return cluster_doc.cluster_document(
            nodes=nodes,
            shared_root=str(self.layout.shared),
            node_cpus=os.cpu_count() or 1,
            node_real_memory_mib=1024,
            node_features=["twin", "cpu"],
            cluster_name=f"twin{self.tid}",
            partition="twin",
            slurmctld_port=ports.get("slurmctld_port", contract.SLURMCTLD_PORT),
            slurmd_port=ports.get("slurmd_port", contract.SLURMD_PORT),
            host={
                "script_dir": str(SCRIPTS),
                "slurmctld_spool_dir": str(root / "spool" / "slurmctld"),
                "slurmd_spool_dir": str(root / "spool" / "slurmd-%n"),
                "log_dir": str(self.layout.logs),
                "pid_dir": str(self.layout.run),
                "munge_socket": str(self.layout.munge_socket),
                "slurm_user": self.state.get("slurm_user", "slurm"),
                **TWIN_TIMEOUTS,
            },
        )

    # --- preparation ------------------------------------------------------------------------

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
        _write(Path(site) / "cdk-trn-twin.pth", "".join(f"{p}\n" for p in paths))
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
            _write(key, secrets.token_hex(512) + "\n", 0o600)
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
            _write(layout.bin / tool, wrapper.format(tool=tool, module=module), 0o755)
        net.bridge_up(self.tid, self.state["subnet"])

    # --- processes --------------------------------------------------------------------------

    def _munged(self) -> None:
        pid_file = self.layout.munge / "munged.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        if _alive(pid):
            return
        m = self.layout.munge
        subprocess.run(
            [
                "munged",
                f"--socket={self.layout.munge_socket}",
                f"--key-file={m / 'munge.key'}",
                f"--pid-file={pid_file}",
                f"--log-file={m / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
            env={"PATH": CLEAN_PATH},
            check=True,
            capture_output=True,
        )
        _wait("munged's socket", self.layout.munge_socket.exists, 20)

    def _hosts(self, own: tuple[str, str] | None = None) -> str:
        """An instance's /etc/hosts: the controller, the nodes up so far and, as the VPC's DNS
        resolves an instance's own name on EC2, ``own`` (name, address), the instance itself:
        Gloo (torch.distributed on CPU) binds to what the hostname resolves to, and falls back to
        127.0.0.1, which other nodes cannot reach, when it resolves to nothing."""
        lines = ["127.0.0.1 localhost"]
        controller = self.controller_address
        lines.append(f"{controller} {net.ec2_name(controller)} {SLURMCTLD_NAME}")
        nodes = {name: i["address"] for name, i in self.nodes().items()}
        if own is not None and own[0] != net.ec2_name(controller):
            nodes[own[0]] = own[1]
        lines += [f"{address} {name}" for name, address in nodes.items()]
        return "\n".join(lines) + "\n"

    def _boot_instance(
        self, name: str, role: str, octet: int, etc: dict[str, str], cloud: bool = False
    ) -> dict[str, Any]:
        """A new instance: namespaces, its /etc files, the holder process. ``cloud``: for the
        cloud's boot code (its own munged, /usr/local and console; metadata at 169.254.169.254)
        instead of the twin's munge socket."""
        directory = self.layout.instance(name)
        shutil.rmtree(directory, ignore_errors=True)
        upper, work = directory / "etc-upper", directory / "etc-work"
        work.mkdir(parents=True)
        hosts = self._hosts(own=(name, self.address(octet)))
        for relative, text in {"hosts": hosts, "hostname": name + "\n", **etc}.items():
            _write(upper / relative, text)
        ns = net.netns_up(self.tid, self.state["subnet"], octet)
        ready = directory / "ready"
        setup = (
            'set -e; hostname "$1"; '
            'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$2,workdir=$3" /etc; '
            "mount -t tmpfs -o mode=0755 tmpfs /run; "
        )
        if cloud:
            for sub in ("local-upper", "local-work"):
                (directory / sub).mkdir()
            (directory / "console").touch()
            net.run(
                "ip", "netns", "exec", ns, "ip", "addr", "add", "169.254.169.254/32", "dev", "lo"
            )
            setup += (
                f"mount -t overlay overlay -o lowerdir=/usr/local,upperdir={directory}/local-upper,"
                f"workdir={directory}/local-work /usr/local; "
                f"mount --bind {directory}/console /dev/console; "
            )
        else:
            setup += (
                "mkdir -p /run/munge; : > /run/munge/munge.socket.2; "
                'mount --bind "$4" /run/munge/munge.socket.2; '
            )
        setup += ': > "$5"; exec sleep infinity'
        holder = subprocess.Popen(
            [
                "nsenter",
                f"--net={net.NETNS_DIR / ns}",
                "--",
                "unshare",
                "--uts",
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                setup,
                "twin-instance",
                name,
                str(upper),
                str(work),
                str(self.layout.munge_socket),
                str(ready),
            ],
            env={"PATH": CLEAN_PATH},
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(directory / "holder.log", "w"),  # noqa: SIM115 (the child keeps it)
            start_new_session=True,
        )
        _wait(
            f"instance {name} set up (see {directory / 'holder.log'})",
            lambda: ready.exists() or holder.poll() is not None,
            20,
        )
        if holder.poll() is not None:
            raise RuntimeError(
                f"instance {name} did not start: {(directory / 'holder.log').read_text().strip()}"
            )
        instance = {
            "role": role,
            "octet": octet,
            "address": self.address(octet),
            "holder": holder.pid,
            "instance_id": "i-" + secrets.token_hex(8) + "0",
            "pids": {},
        }
        self.instances[name] = instance
        self.save()
        return instance

    def start_in(
        self, name: str, unit: str, argv: list[str], env: dict[str, str] | None = None
    ) -> int:
        """Start ``argv`` inside instance ``name`` as systemd starts a unit: clean environment,
        working directory /, output to the unit's log. The glue the boot bundle plugs into."""
        instance = self.instances[name]
        log_file = self.layout.logs / f"{name}-{unit}.out"
        process = subprocess.Popen(
            ["nsenter", "-t", str(instance["holder"]), "-n", "-u", "-m", "--", *argv],
            env={"PATH": CLEAN_PATH, "LANG": "C.UTF-8", **(env or {})},
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=open(log_file, "a"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        instance["pids"][unit] = process.pid
        self.save()
        return process.pid

    def run_in(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        instance = self.instances[name]
        return subprocess.run(
            ["nsenter", "-t", str(instance["holder"]), "-n", "-u", "-m", "--", *argv],
            env={"PATH": CLEAN_PATH, "LANG": "C.UTF-8", **(env or {})},
            cwd="/",
            capture_output=True,
            text=True,
        )

    def _stop_pid(self, pid: int, timeout: float = 30) -> None:
        if not _alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        try:
            _wait(f"pid {pid} exits", lambda: not _alive(pid), timeout)
        except RuntimeError:
            os.kill(pid, signal.SIGKILL)
            _wait(f"pid {pid} killed", lambda: not _alive(pid), 10)

    def _kill_instance(self, name: str) -> None:
        """Every process in the instance's namespaces killed at once (no shutdown hook), its link
        cut and its namespace removed."""
        instance = self.instances[name]
        octet = instance["octet"]
        net.cut_link(self.tid, octet)
        for _ in range(20):
            pids = set(net.netns_pids(self.tid, octet))
            pids.add(int(instance["holder"]))
            pids = {p for p in pids if _alive(p)}
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        net.netns_down(self.tid, octet)

    # --- the controller ---------------------------------------------------------------------

    def _apply_document(self, nodes: int) -> str:
        """The controller applies the document; its slurm.conf becomes the login node's."""
        _write(
            self.layout.document,
            json.dumps(self.cluster_document(nodes), indent=2, sort_keys=True) + "\n",
        )
        name = self.state["controller"]
        result = self.run_in(
            name,
            [
                DEBIAN_PYTHON,
                "-m",
                "cdk_trn_runtime.slurm.apply",
                "--document",
                str(self.layout.document),
                "--conf",
                "/etc/slurm/slurm.conf",
                "--controller-addr",
                self.controller_address,
            ],
            env={"PYTHONPATH": str(PACKAGE_ROOT)},
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"the controller could not apply the cluster document: {result.stderr.strip()}"
            )
        conf = self.run_in(name, ["cat", "/etc/slurm/slurm.conf"]).stdout
        _write(self.layout.conf, conf)
        self.state["nodes"] = nodes
        self.save()
        return result.stdout.strip()

    def _start_slurmctld(self) -> None:
        name = self.state["controller"]
        self.start_in(name, "slurmctld", ["slurmctld", "-D", "-f", "/etc/slurm/slurm.conf"])
        _wait("slurmctld answers", lambda: "UP" in self.slurm("scontrol", "ping").stdout, 60)

    def _stop_slurmctld(self) -> None:
        pid = self.instances[self.state["controller"]]["pids"].get("slurmctld")
        if pid:
            self._stop_pid(pid)

    def restart_controller(self) -> None:
        """slurmctld restarted (as ``systemctl restart`` does), then every node re-reads its
        configuration (``scontrol reconfigure``, as after a controller replacement)."""
        self._stop_slurmctld()
        self._start_slurmctld()
        self.slurm("scontrol", "reconfigure")
        log("slurmctld restarted")

    def _start_reaper(self) -> None:
        self.start_in(
            self.state["controller"],
            "reaper",
            ["/bin/bash", str(SCRIPTS / "reaper.sh")],
            env={
                "PATH": f"{self.layout.bin}:{CLEAN_PATH}",
                "CDK_TRN_TWIN_DIR": str(self.layout.root),
                "CDK_TRN_REGION": REGION,
                "CDK_TRN_CLUSTER": self.state["cluster"],
                "CDK_TRN_REAPER_INTERVAL": str(REAPER_INTERVAL),
            },
        )

    def _boot_controller(self) -> None:
        name = net.ec2_name(self.controller_address)
        self.state["controller"] = name
        self._boot_instance(name, "controller", CONTROLLER_OCTET, {})
        self._apply_document(self.state["nodes"])
        self._publish_controller()
        self._start_slurmctld()
        self._start_reaper()
        log(f"controller {name} at {self.controller_address}")

    # --- nodes ------------------------------------------------------------------------------

    def _node_env(self, name: str, instance_id: str) -> str:
        shared = self.layout.shared
        env = {
            "CDK_TRN_CLUSTER": self.state["cluster"],
            "NEURON_COMPILE_CACHE_URL": str(shared / contract.SHARED_COMPILE_CACHE),
            contract.SLURM_ENV_EXPECTED_NEURON: str(FAKE_NEURON_DEVICES),
            contract.SLURM_ENV_EXPECTED_EFA: "0",
            contract.SLURM_ENV_SHARED_ROOT: str(shared),
            contract.SLURM_ENV_SHARED_FS_TYPE: "",
            contract.SLURM_ENV_REPLACE_ON_HARDWARE_FAILURE: "0",
            contract.SLURM_ENV_INSTANCE_ID: instance_id,
            contract.SLURM_ENV_REGION: REGION,
            contract.SLURM_ENV_DEVICE_ROOT: str(self.layout.device_root(name)),
            # Nodes share this host's process table (no PID namespace): the epilog kills only
            # processes that carry the job's id.
            "CDK_TRN_EPILOG_USER_SWEEP": "0",
            "CDK_TRN_PYTHON": str(self.layout.jobenv / "bin" / "python"),
            "CDK_TRN_JOB_PATH": str(self.layout.jobenv / "bin"),
        }
        return "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items())

    def controller_parameter(self) -> str:
        return f"/cdk-trn/{self.state['cluster']}/controller-address"

    def _publish_controller(self) -> None:
        """What the cloud controller writes at boot: its address in the SSM parameter (double)."""
        stored = self.layout.root / "ssm" / self.controller_parameter().strip("/").replace("/", "_")
        _write(stored, self.controller_address)

    def _boot_node_cloud(self, octet: int, name: str) -> dict[str, Any]:
        """The cloud's node boot code, unchanged, with the doubles first on PATH: ``docker``,
        ``systemctl``, ``aws`` (twin/doubles.py, twin/aws_double.py) and instance metadata at
        169.254.169.254 inside the node's namespace (twin/metadata.py)."""
        instance = self._boot_instance(name, "node", octet, {}, cloud=True)
        instance_id = instance["instance_id"]
        (self.layout.spool / f"slurmd-{name}").mkdir(parents=True, exist_ok=True)
        self.start_in(
            name,
            "imds",
            [
                DEBIAN_PYTHON,
                "-m",
                "cdk_trn_runtime.slurm.twin.metadata",
                "--instance-id",
                instance_id,
                "--address",
                instance["address"],
            ],
            env={"PYTHONPATH": str(PACKAGE_ROOT)},
        )
        probe = [
            "curl",
            "-fsS",
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 60",
            "http://169.254.169.254/latest/api/token",
        ]
        _wait(
            f"{name}: instance metadata double",
            lambda: self.run_in(name, probe).returncode == 0,
            20,
        )
        shared = str(self.layout.shared)
        variables = {
            "CDK_TRN_REGION": REGION,
            "CDK_TRN_STACK": "twin",
            "CDK_TRN_RESOURCE": "Nodes",
            "CDK_TRN_CLUSTER": self.state["cluster"],
            "CDK_TRN_NODE_OS": "ubuntu-24.04",
            "CDK_TRN_EXPECTED_NEURON_DEVICES": "0",
            "CDK_TRN_EXPECTED_EFA_DEVICES": "0",
            "CDK_TRN_LOGICAL_NC": "2",
            "CDK_TRN_ULTRASERVER_SIZE": "0",
            "CDK_TRN_FSX_DNS": "",
            "CDK_TRN_FSX_MOUNT_NAME": "",
            "CDK_TRN_FSX_MOUNT_PATH": shared,
            "CDK_TRN_FSX_EFA": "0",
            "CDK_TRN_COMPILE_CACHE": f"{shared}/{contract.SHARED_COMPILE_CACHE}",
            "CDK_TRN_RENDEZVOUS_PORTS": "{}-{}".format(*contract.RENDEZVOUS_PORTS),
            "CDK_TRN_SLURM_IMAGE": "twin.invalid/cdk-trn-slurm:twin",
            "CDK_TRN_SLURM_KEY_SECRET": f"arn:aws:secretsmanager:{REGION}:0:secret:munge",
            "CDK_TRN_SLURM_CONTROLLER_PARAMETER": self.controller_parameter(),
            "CDK_TRN_SLURM_FEATURES": ",".join(self.cluster_document(1)["node_features"]),
            "CDK_TRN_SLURM_REGISTER_SECONDS": "120",
            # fail_retryable's bound (the twin never replaces on a failed check: no group).
            "CDK_TRN_BOOT_SECONDS": "900",
            "CDK_TRN_SIGNAL_SECONDS": "2700",
            # No vault on the twin: the signing agent has no role to assume.
            "CDK_TRN_SIGNER_ROLE": "",
        }
        # The node's boot bundle, laid out as the launcher unpacks it (cdk_trn_runtime.node.bundle):
        # the same shipped files, boot.env from these variables.
        script = write_bundle("node", self.layout.instance(name) / "boot", variables)
        units = self.layout.logs / f"{name}-units"
        units.mkdir(exist_ok=True)
        self.start_in(
            name,
            "cloud-init",
            # As the launcher runs the entry script (node/launcher.sh): its output to the console.
            [
                "/bin/bash",
                "-c",
                'set -o pipefail; bash "$1" 2>&1 | tee -a /dev/console',
                "cloud-init",
                str(script),
            ],
            env={
                "PATH": f"{self.layout.bin}:{CLEAN_PATH}",
                "TWIN_UNIT_PATH": f"{self.layout.bin}:{CLEAN_PATH}",
                "TWIN_UNIT_LOGS": str(units),
            },
        )
        signals = self.layout.root / "signals"

        def signalled() -> str:
            if not signals.exists():
                return ""
            for line in signals.read_text().splitlines():
                record = json.loads(line)
                if record["instance"] == instance_id:
                    return str(record["status"])
            return ""

        with contextlib.suppress(RuntimeError):
            _wait(f"{name} signalled", lambda: signalled() != "", 300, 0.5)
        if signalled() != "SUCCESS":
            boot_log = self.layout.logs / f"{name}-cloud-init.out"
            tail = boot_log.read_text().splitlines()[-3:] if boot_log.exists() else []
            raise RuntimeError(
                f"node {name} boot {signalled() or 'sent no signal'}: {' | '.join(tail)}"
            )
        instance["pids"]["slurmd"] = instance["holder"]  # the unit's pid lives in the node
        self.save()
        return instance

    def boot_node(self) -> str:
        """A new node on an address never used before in this twin; its name once it is usable."""
        octet = int(self.state["next_octet"])
        if octet > 254:
            raise RuntimeError("this twin used every address of its subnet: down and up again")
        self.state["next_octet"] = octet + 1
        name = net.ec2_name(self.address(octet))
        instance_id = "i-" + secrets.token_hex(8) + "0"
        if self.state.get("boot") == "cloud":
            instance = self._boot_node_cloud(octet, name)
            self._wait_usable(name)
            log(f"node {name} at {instance['address']} (the cloud's boot code)")
            return name
        etc = {"cdk-trn/slurm-node.env": self._node_env(name, instance_id)}
        instance = self._boot_instance(name, "node", octet, etc)
        instance["instance_id"] = instance_id
        devices = self.layout.device_root(name)
        (devices / "sys" / "class" / "infiniband").mkdir(parents=True, exist_ok=True)
        (devices / "dev").mkdir(parents=True, exist_ok=True)
        for index in range(FAKE_NEURON_DEVICES):
            (devices / "dev" / f"neuron{index}").touch()
        spool = self.layout.spool / f"slurmd-{name}"
        spool.mkdir(parents=True, exist_ok=True)
        self._start_slurmd(name)
        log(f"node {name} at {instance['address']}")
        return name

    def _start_slurmd(self, name: str) -> None:
        """slurmd as the cloud's node runs it: dynamic (-Z), configless from the controller's
        stable name, with the cluster's static features; then wait until it is usable."""
        features = ",".join(self.cluster_document(1)["node_features"])
        port = self.state.get("slurmctld_port", contract.SLURMCTLD_PORT)
        self.start_in(
            name,
            "slurmd",
            [
                "slurmd",
                "-D",
                "-Z",
                "-N",
                name,
                "--conf-server",
                f"{SLURMCTLD_NAME}:{port}",
                "--conf",
                f"Feature={features}",
            ],
        )
        self._wait_usable(name)

    def node_state(self, name: str) -> str:
        out = self.slurm("sinfo", "-h", "-N", "-n", name, "-o", "%t").stdout.split()
        return out[0] if out else ""

    def _wait_usable(self, name: str, timeout: float = 120) -> None:
        """Registration counts only in a usable state (not down, drained or not responding)."""
        try:
            _wait(f"{name} usable", lambda: self.node_state(name) in USABLE, timeout, 0.5)
        except RuntimeError:
            show = self.slurm("scontrol", "show", "node", name).stdout.strip()
            log_file = self.layout.logs / f"slurmd-{name}.log"
            tail = log_file.read_text().splitlines()[-5:] if log_file.exists() else []
            raise RuntimeError(
                f"node {name} did not register usable: {show or 'no record'}; {' | '.join(tail)}"
            ) from None

    def _rejoin_unknown_nodes(self) -> None:
        """A replaced controller whose saved state predates a node's registration does not know
        the node: its slurmd restarts and registers again (on the cloud, the node's address
        timer does this: node_bootstrap.sh rejoin_if_unknown)."""
        known = set(self.slurm("sinfo", "-h", "-N", "-o", "%N").stdout.split())
        for name, instance in self.nodes().items():
            if name in known or self.state.get("boot") == "cloud":
                continue
            if not _alive(instance["holder"]):
                continue
            log(f"the controller does not know {name}: restarting its slurmd")
            pid = instance["pids"].get("slurmd")
            if pid:
                self._stop_pid(pid)
            self._start_slurmd(name)

    def _retire_node(self, name: str) -> None:
        """Scale-in: the node leaves Slurm as the cloud's shutdown hook does (delete its record),
        then the instance is terminated."""
        if self.instances[name]["pids"].get("slurmd"):
            self.slurm("scontrol", "delete", f"nodename={name}")
        self._kill_instance(name)
        del self.instances[name]
        shutil.rmtree(self.layout.instance(name), ignore_errors=True)
        shutil.rmtree(self.layout.spool / f"slurmd-{name}", ignore_errors=True)
        self.save()
        log(f"node {name} removed")

    def _forget_dead(self, name: str) -> None:
        """An instance that is gone: its namespace is cleaned up, its Slurm record is the
        reaper's."""
        self._kill_instance(name)
        del self.instances[name]
        self.save()

    # --- lifecycle --------------------------------------------------------------------------

    def up(self, nodes: int | None, boot: str | None = None) -> None:
        self._check_machine()
        fresh = "subnet" not in self.state
        if fresh and boot is not None:
            self.state["boot"] = boot
        wanted = nodes if nodes is not None else int(self.state.get("nodes", DEFAULT_NODES))
        if wanted < 1:
            raise RuntimeError(f"NODES must be at least 1, got {wanted}")
        self._prepare(wanted)
        self._munged()
        controller = self.state.get("controller")
        if controller is None or not _alive(self.instances.get(controller, {}).get("holder")):
            if controller is not None:
                self._forget_dead(controller)
            self._boot_controller()
            if not fresh:
                self.slurm("scontrol", "reconfigure")
                self._rejoin_unknown_nodes()
        else:
            action = self._apply_document(wanted)
            if action == "restart":
                self.restart_controller()
            elif action == "reconfigure":
                self.slurm("scontrol", "reconfigure")
            if action != "none":
                log(f"cluster document applied: {action}")
            ctld = self.instances[controller]["pids"].get("slurmctld")
            if not _alive(ctld):
                self._start_slurmctld()
            if not _alive(self.instances[controller]["pids"].get("reaper")):
                self._start_reaper()
        for name, instance in list(self.nodes().items()):
            if not _alive(instance["holder"]) or not _alive(instance["pids"].get("slurmd")):
                log(f"node {name} is gone: replacing it")
                self._forget_dead(name)
        current = self.nodes()
        if len(current) > wanted:
            states = {n: self.node_state(n) for n in current}
            order = sorted(current, key=lambda n: (states[n] != "idle", -current[n]["octet"]))
            for name in order[: len(current) - wanted]:
                self._retire_node(name)
        while len(self.nodes()) < wanted:
            self.boot_node()
        self.state["nodes"] = wanted
        self.save()

    def replace(self, name: str) -> str:
        """A lost instance (link cut, every process SIGKILLed, no shutdown hook) and its
        replacement on a new address, as the Auto Scaling group does."""
        if name not in self.nodes():
            raise RuntimeError(f"no node {name} in this twin: {', '.join(self.nodes()) or 'none'}")
        self._forget_dead(name)
        log(f"node {name} lost")
        return self.boot_node()

    def down(self) -> None:
        for name in list(self.instances):
            self._kill_instance(name)
        for ns in net.twin_namespaces(self.tid):
            for pid in net.netns_pids_by_name(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            net.run("ip", "netns", "del", ns, check=False)
        pid_file = self.layout.munge / "munged.pid"
        if pid_file.exists():
            self._stop_pid(int(pid_file.read_text().split()[0]))
        net.bridge_down(self.tid)
        shutil.rmtree(self.layout.root, ignore_errors=True)
        log(f"down: {self.layout.root} removed")

    def status(self) -> bool:
        ok = True
        for name, instance in self.instances.items():
            alive = _alive(instance["holder"])
            ok &= alive
            state = self.node_state(name) if instance["role"] == "node" else ""
            where = f"{instance['role']} {name} {instance['address']}"
            print(f"{where} {'up' if alive else 'gone'} {state}".rstrip())
        return ok
