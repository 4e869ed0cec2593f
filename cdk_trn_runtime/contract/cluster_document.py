"""The Slurm cluster document: what ``cdk_trn.SlurmScheduler`` writes (at synth, into the
controller's user data and an SSM parameter) and the local twin writes (at ``up``), and what the
controller parses into slurm.conf (``cdk_trn_runtime.slurm.config.cloud_config``) and its power
saving programs read (``cdk_trn_runtime.slurm.power``).

Its JSON form (:meth:`ClusterDocument.to_properties`, dumped with sorted keys) is what running
controllers already read from the SSM parameter: the keys are the field names, ``munge_socket``
is ``null`` when unset, optional keys are absent when unset. Changing a key means versioning the
document.

Host-specific keys (:data:`HOST_KEYS`) default to the cloud's values; the twin sets its own (its
directories, its munge socket, shorter timeouts). ``controller_host`` and ``controller_addr`` are
added by the controller at boot (``controller_bootstrap.sh``, ``cdk_trn_runtime.slurm.apply``).

Standard library only (it runs in the training image and on the twin).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cdk_trn_runtime.contract import (
    SHARED_COMPILE_CACHE,
    SHARED_HOMES,
    SHARED_JOB_LOGS,
    SHARED_SLURM_STATE,
    SLURM_DAEMON_USER,
    SLURM_DEFAULT_CLUSTER_NAME,
    SLURM_JOB_UID,
    SLURM_JOB_USER,
    SLURMCTLD_PORT,
    SLURMD_PORT,
)
from cdk_trn_runtime.contract.message import Message, MessageError, key

#: Where the bundled training image keeps the node scripts (``cdk_trn_runtime`` under
#: ``/opt/cdk-trn``, see ``cdk_trn_runtime/container/Dockerfile``).
IMAGE_SCRIPTS = "/opt/cdk-trn/cdk_trn_runtime/slurm/scripts"
#: srun's ports (SrunPortRange) unless the scheduler says otherwise.
DEFAULT_SRUN_PORT_RANGE = (60001, 63000)


def max_node_count(nodes: int) -> int:
    """MaxNodeCount for ``nodes`` configured nodes: room for as many replacements as nodes, and
    at least 8, while dead nodes' records wait for the reaper (a record of a node that died
    running a job cannot be deleted until the job left it)."""
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes must be a positive integer, got {nodes!r}")
    return max(2 * nodes, nodes + 8)


@dataclass(frozen=True)
class PowerSave(Message):
    """Idle scale-in through Slurm's power saving (``SlurmScheduler(idle_scale_in=...)``)."""

    DESCRIPTION = "cluster document power_save"

    idle_seconds: int = key("idle_seconds", doc="SuspendTime")
    cluster_tag: tuple[str, ...] = key(
        "cluster_tag", doc="[tag key, value] the programs find the nodes' instances by"
    )
    region: str = key("region", doc="the nodes' region")

    def validate(self) -> None:
        if self.idle_seconds < 1:
            raise self.invalid("idle_seconds", "a positive number of seconds")
        if len(self.cluster_tag) != 2:
            raise self.invalid("cluster_tag", "[key, value]")


@dataclass(frozen=True)
class ClusterDocument(Message):
    """One Slurm cluster's configuration, from which the controller renders slurm.conf."""

    DESCRIPTION = "cluster document"

    shared_root: str = key("shared_root", doc="the shared file system's mount path")
    node_cpus: int = key("node_cpus")
    node_real_memory_mib: int = key("node_real_memory_mib", doc="RealMemory")
    node_features: tuple[str, ...] = key("node_features")
    max_node_count: int = key("max_node_count", doc="MaxNodeCount: max_node_count(nodes)")
    max_nodes_per_job: int = key("max_nodes_per_job", doc="the partition's MaxNodes")
    state_save_location: str = key("state_save_location")
    srun_port_range: tuple[int, ...] = key("srun_port_range", doc="[low, high]")
    cluster_name: str = key("cluster_name", default=SLURM_DEFAULT_CLUSTER_NAME)
    partition: str = key("partition", default="trn")
    slurmctld_port: int = key("slurmctld_port", default=SLURMCTLD_PORT)
    slurmd_port: int = key("slurmd_port", default=SLURMD_PORT)
    nodes: int | None = key("nodes", default=None, doc="the configured node count")
    ultraserver_size: int = key("ultraserver_size", default=0)
    job_log_dir: str | None = key("job_log_dir", default=None)
    home_dir: str | None = key("home_dir", default=None)
    compile_cache: str | None = key("compile_cache", default=None)
    job_user: str = key("job_user", default=SLURM_JOB_USER)
    job_uid: int = key("job_uid", default=SLURM_JOB_UID)
    # Host-specific keys (HOST_KEYS), the cloud's values by default.
    script_dir: str = key("script_dir", default=IMAGE_SCRIPTS)
    slurmctld_spool_dir: str = key("slurmctld_spool_dir", default="/var/spool/slurmctld")
    slurmd_spool_dir: str = key("slurmd_spool_dir", default="/var/spool/slurmd")
    log_dir: str = key("log_dir", default="/var/log/slurm")
    pid_dir: str = key("pid_dir", default="/run/slurm")
    munge_socket: str | None = key("munge_socket", default=None, keep_none=True)
    slurm_user: str = key("slurm_user", default=SLURM_DAEMON_USER)
    slurmd_timeout: int = key("slurmd_timeout", default=180)
    slurmctld_timeout: int = key("slurmctld_timeout", default=300)
    message_timeout: int = key("message_timeout", default=10)
    kill_wait: int = key("kill_wait", default=30)
    # Left out in the cloud: Slurm's default (120 s), which also delays a requeued job's start.
    cred_expire: int | None = key(
        "cred_expire", default=None, doc="AuthInfo cred_expire: seconds a job credential lives"
    )
    resume_timeout: int = key("resume_timeout", default=1800)
    health_check_interval: int = key("health_check_interval", default=300)
    # Written by the construct.
    document_parameter: str | None = key(
        "document_parameter", default=None, doc="the SSM parameter the controller re-reads"
    )
    power_save: PowerSave | None = key("power_save", default=None)
    # Added by the controller at boot.
    controller_host: str | None = key("controller_host", default=None, doc="SlurmctldHost")
    controller_addr: str | None = key("controller_addr", default=None, doc="SlurmctldAddr")

    def validate(self) -> None:
        if len(self.srun_port_range) != 2:
            raise self.invalid("srun_port_range", "[low, high]")
        if self.max_node_count < 1:
            raise self.invalid("max_node_count", "at least 1")

    @classmethod
    def build(
        cls,
        *,
        nodes: int,
        shared_root: str,
        node_cpus: int,
        node_real_memory_mib: int,
        node_features: Sequence[str],
        cluster_name: str = SLURM_DEFAULT_CLUSTER_NAME,
        partition: str = "trn",
        ultraserver_size: int = 0,
        max_nodes_per_job: int | None = None,
        slurmctld_port: int = SLURMCTLD_PORT,
        slurmd_port: int = SLURMD_PORT,
        srun_port_range: tuple[int, int] = DEFAULT_SRUN_PORT_RANGE,
        host: Mapping[str, Any] | None = None,
    ) -> ClusterDocument:
        """The document for ``nodes`` nodes under ``shared_root`` (its Slurm state, job logs,
        homes and compile cache are the contract's paths there); ``host`` overrides
        :data:`HOST_KEYS`."""
        unknown = sorted(set(host or {}) - set(HOST_KEYS))
        if unknown:
            raise ValueError(f"cluster document: unknown host keys {unknown}")
        return cls(
            cluster_name=cluster_name,
            partition=partition,
            nodes=nodes,
            node_cpus=node_cpus,
            node_real_memory_mib=node_real_memory_mib,
            node_features=tuple(node_features),
            ultraserver_size=ultraserver_size,
            max_node_count=max_node_count(nodes),
            max_nodes_per_job=nodes if max_nodes_per_job is None else max_nodes_per_job,
            shared_root=shared_root,
            state_save_location=f"{shared_root}/{SHARED_SLURM_STATE}",
            job_log_dir=f"{shared_root}/{SHARED_JOB_LOGS}",
            home_dir=f"{shared_root}/{SHARED_HOMES}",
            compile_cache=f"{shared_root}/{SHARED_COMPILE_CACHE}",
            slurmctld_port=slurmctld_port,
            slurmd_port=slurmd_port,
            srun_port_range=tuple(srun_port_range),
            **dict(host or {}),
        )

    def for_controller(self, host: str, address: str) -> ClusterDocument:
        """The document as the controller applies it, with its host name and address."""
        return dataclasses.replace(self, controller_host=host, controller_addr=address)

    def controller(self) -> tuple[str, str]:
        """``controller_host`` and ``controller_addr``, which the controller adds at boot."""
        if self.controller_host is None or self.controller_addr is None:
            missing = "controller_host" if self.controller_host is None else "controller_addr"
            raise MessageError(
                f"{self.DESCRIPTION}: {missing} is missing (the controller adds it at boot)"
            )
        return self.controller_host, self.controller_addr


#: The keys whose values depend on the host (the cloud's by default).
HOST_KEYS = (
    "script_dir",
    "slurmctld_spool_dir",
    "slurmd_spool_dir",
    "log_dir",
    "pid_dir",
    "munge_socket",
    "slurm_user",
    "slurmd_timeout",
    "slurmctld_timeout",
    "message_timeout",
    "kill_wait",
    "cred_expire",
    "resume_timeout",
    "health_check_interval",
)
#: Those keys' cloud values.
HOST_DEFAULTS: dict[str, Any] = {
    f.metadata["key"]: f.default for f in dataclasses.fields(ClusterDocument) if f.name in HOST_KEYS
}
