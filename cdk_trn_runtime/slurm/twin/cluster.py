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

The parts of :class:`Twin`, one module each: ``state`` (recorded state, Slurm commands, the cluster
document), ``machine`` (preparation), ``instances`` (namespaces and processes), ``controller``,
``nodes``; the constants in ``settings``, the helpers in ``host``, the paths in ``layout``. This
module holds the lifecycle operations and keeps the names ``cdk_trn_runtime.slurm.local`` and the
tests import.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal

from cdk_trn_runtime.slurm.twin import net
from cdk_trn_runtime.slurm.twin.host import alive, log
from cdk_trn_runtime.slurm.twin.layout import Layout
from cdk_trn_runtime.slurm.twin.machine import TwinMachine
from cdk_trn_runtime.slurm.twin.nodes import TwinNodes
from cdk_trn_runtime.slurm.twin.settings import DEFAULT_NODES

__all__ = ["Layout", "Twin", "log"]

#: The name tests use for :func:`cdk_trn_runtime.slurm.twin.host.alive`.
_alive = alive


class Twin(TwinNodes, TwinMachine):
    """A local twin of the cloud's Slurm cluster, rooted at ``root``."""

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
        if controller is None or not alive(self.instances.get(controller, {}).get("holder")):
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
            if not alive(ctld):
                self._start_slurmctld()
            if not alive(self.instances[controller]["pids"].get("reaper")):
                self._start_reaper()
        for name, instance in list(self.nodes().items()):
            if not alive(instance["holder"]) or not alive(instance["pids"].get("slurmd")):
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
            running = alive(instance["holder"])
            ok &= running
            state = self.node_state(name) if instance["role"] == "node" else ""
            where = f"{instance['role']} {name} {instance['address']}"
            print(f"{where} {'up' if running else 'gone'} {state}".rstrip())
        return ok
