"""The twin's recorded state (``twin.json``: its subnet, instances and their processes), the
login node's Slurm commands, and the cluster document the twin applies."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from cdk_trn_runtime import contract
from cdk_trn_runtime.slurm import document as cluster_doc
from cdk_trn_runtime.slurm.twin import net
from cdk_trn_runtime.slurm.twin.host import write_file
from cdk_trn_runtime.slurm.twin.layout import Layout
from cdk_trn_runtime.slurm.twin.settings import CONTROLLER_OCTET, SCRIPTS, TWIN_TIMEOUTS

__all__ = ["TwinState"]


class TwinState:
    """One twin's layout and recorded state; the base of every part of :class:`Twin`."""

    def __init__(self, root: Path) -> None:
        self.layout = Layout(root.resolve())
        self.tid = net.twin_id(self.layout.root)
        self.state: dict[str, Any] = {}
        if self.layout.state_file.exists():
            self.state = json.loads(self.layout.state_file.read_text())

    # --- state ------------------------------------------------------------------------------

    def save(self) -> None:
        write_file(self.layout.state_file, json.dumps(self.state, indent=2, sort_keys=True) + "\n")

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
