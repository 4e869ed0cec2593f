"""The twin's instances as processes: munged, each instance's holder process in namespaces of its
own with its /etc overlay, daemons started inside as systemd starts a unit, and an instance's
sudden loss."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from typing import Any

from cdk_trn_runtime.slurm.twin import net
from cdk_trn_runtime.slurm.twin.host import (
    CLEAN_PATH,
    alive,
    wait_for,
    write_file,
)
from cdk_trn_runtime.slurm.twin.settings import SLURMCTLD_NAME
from cdk_trn_runtime.slurm.twin.state import TwinState

__all__ = ["TwinInstances"]


class TwinInstances(TwinState):
    """Instances and the processes in them."""

    def _munged(self) -> None:
        pid_file = self.layout.munge / "munged.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        if alive(pid):
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
        wait_for("munged's socket", self.layout.munge_socket.exists, 20)

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
            write_file(upper / relative, text)
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
        wait_for(
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
        if not alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        try:
            wait_for(f"pid {pid} exits", lambda: not alive(pid), timeout)
        except RuntimeError:
            os.kill(pid, signal.SIGKILL)
            wait_for(f"pid {pid} killed", lambda: not alive(pid), 10)

    def _kill_instance(self, name: str) -> None:
        """Every process in the instance's namespaces killed at once (no shutdown hook), its link
        cut and its namespace removed."""
        instance = self.instances[name]
        octet = instance["octet"]
        net.cut_link(self.tid, octet)
        for _ in range(20):
            pids = set(net.netns_pids(self.tid, octet))
            pids.add(int(instance["holder"]))
            pids = {p for p in pids if alive(p)}
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        net.netns_down(self.tid, octet)
