"""The twin's nodes: booted with the cloud's boot bundle (``--boot cloud``) or started directly,
slurmd configless against the controller, waited for until usable, rejoined, retired or
forgotten when lost."""

from __future__ import annotations

import contextlib
import json
import secrets
import shlex
import shutil
from typing import Any

from cdk_trn_runtime import contract
from cdk_trn_runtime.node.bundle import write_bundle
from cdk_trn_runtime.slurm.twin import net
from cdk_trn_runtime.slurm.twin.controller import TwinController
from cdk_trn_runtime.slurm.twin.host import (
    CLEAN_PATH,
    DEBIAN_PYTHON,
    alive,
    log,
    wait_for,
)
from cdk_trn_runtime.slurm.twin.settings import (
    FAKE_NEURON_DEVICES,
    PACKAGE_ROOT,
    REGION,
    SLURMCTLD_NAME,
    USABLE,
)

__all__ = ["TwinNodes"]


class TwinNodes(TwinController):
    """Node instances and their slurmd."""

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
        wait_for(
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
            wait_for(f"{name} signalled", lambda: signalled() != "", 300, 0.5)
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
            wait_for(f"{name} usable", lambda: self.node_state(name) in USABLE, timeout, 0.5)
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
            if not alive(instance["holder"]):
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
