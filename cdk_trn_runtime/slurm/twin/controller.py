"""The twin's controller: the cluster document applied with ``cdk_trn_runtime.slurm.apply``,
slurmctld started, restarted or reconfigured as that says, the reaper beside it, and the
controller's address published where nodes look (the cloud's SSM parameter)."""

from __future__ import annotations

import json

from cdk_trn_runtime.slurm.twin import net
from cdk_trn_runtime.slurm.twin.host import (
    CLEAN_PATH,
    DEBIAN_PYTHON,
    log,
    wait_for,
    write_file,
)
from cdk_trn_runtime.slurm.twin.instances import TwinInstances
from cdk_trn_runtime.slurm.twin.settings import (
    CONTROLLER_OCTET,
    PACKAGE_ROOT,
    REAPER_INTERVAL,
    REGION,
    SCRIPTS,
)

__all__ = ["TwinController"]


class TwinController(TwinInstances):
    """The controller instance and what runs on it."""

    def _apply_document(self, nodes: int) -> str:
        """The controller applies the document; its slurm.conf becomes the login node's."""
        write_file(
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
        write_file(self.layout.conf, conf)
        self.state["nodes"] = nodes
        self.save()
        return result.stdout.strip()

    def _start_slurmctld(self) -> None:
        name = self.state["controller"]
        self.start_in(name, "slurmctld", ["slurmctld", "-D", "-f", "/etc/slurm/slurm.conf"])
        wait_for("slurmctld answers", lambda: "UP" in self.slurm("scontrol", "ping").stdout, 60)

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

    def controller_parameter(self) -> str:
        return f"/cdk-trn/{self.state['cluster']}/controller-address"

    def _publish_controller(self) -> None:
        """What the cloud controller writes at boot: its address in the SSM parameter (double)."""
        stored = self.layout.root / "ssm" / self.controller_parameter().strip("/").replace("/", "_")
        write_file(stored, self.controller_address)
