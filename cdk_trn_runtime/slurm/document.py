"""The Slurm cluster document: one function builds it for the ``SlurmScheduler`` construct (at
synth) and for the local twin (``cdk_trn_runtime.slurm.twin``), and ``config.cloud_config`` turns
it into slurm.conf on the controller.

Keys every document has: ``cluster_name``, ``partition``, ``node_cpus``,
``node_real_memory_mib``, ``node_features``, ``ultraserver_size``, ``nodes`` (the configured node
count), ``max_node_count`` (MaxNodeCount: :func:`max_node_count` of ``nodes``, headroom for
replacements whose dead predecessors' records are not deleted yet), ``max_nodes_per_job`` (the
partition's MaxNodes), ``shared_root``, ``state_save_location``, ``job_log_dir``, ``home_dir``,
``compile_cache``, ``slurmctld_port``, ``slurmd_port``, ``srun_port_range``, ``job_user``,
``job_uid``.

Host-specific keys (``HOST_DEFAULTS``) default to the cloud's values; the twin sets its own (its
directories, its munge socket, its ports, shorter timeouts). The controller adds
``controller_host`` and ``controller_addr`` at boot.

:func:`change_action` says what a controller does when the document it runs changes: nothing,
``scontrol reconfigure``, or a restart of slurmctld (keys Slurm reads only at start; a changed
MaxNodeCount on reconfigure is fatal to slurmctld).

Standard library only (it runs in the training image and on the twin).
"""

from __future__ import annotations

from typing import Any

from cdk_trn_runtime import contract

#: Where the bundled training image keeps the node scripts (``cdk_trn_runtime`` under
#: ``/opt/cdk-trn``, see ``cdk_trn_runtime/container/Dockerfile``).
IMAGE_SCRIPTS = "/opt/cdk-trn/cdk_trn_runtime/slurm/scripts"

#: Host-specific keys and the cloud's values (the training image's paths, Slurm's own defaults
#: where the image does not say otherwise, ParallelCluster-like timeouts).
HOST_DEFAULTS: dict[str, Any] = {
    "script_dir": IMAGE_SCRIPTS,
    "slurmctld_spool_dir": "/var/spool/slurmctld",
    "slurmd_spool_dir": "/var/spool/slurmd",
    "log_dir": "/var/log/slurm",
    "pid_dir": "/run/slurm",
    "munge_socket": None,
    "slurm_user": "slurm",
    "slurmd_timeout": 180,
    "slurmctld_timeout": 300,
    "message_timeout": 10,
    "kill_wait": 30,
    # Slurm's default (120 s), which also delays the start of a requeued job.
    "cred_expire": None,
    "resume_timeout": 1800,
    "health_check_interval": 300,
}

#: slurm.conf keys Slurm reads only when slurmctld starts (slurm.conf(5): "requires a restart"),
#: MaxNodeCount included (a change on reconfigure is fatal, read_config.c).
RESTART_KEYS = frozenset(
    {
        "ClusterName",
        "SlurmctldHost",
        "SlurmctldPort",
        "SlurmdPort",
        "SlurmUser",
        "AuthType",
        "AuthInfo",
        "CredType",
        "StateSaveLocation",
        "SlurmctldPidFile",
        "SlurmdPidFile",
        "SlurmdSpoolDir",
        "SelectType",
        "SelectTypeParameters",
        "ProctrackType",
        "TaskPlugin",
        "MpiDefault",
        "SlurmctldParameters",
        "MaxNodeCount",
        "TreeWidth",
        "JobCompType",
        "AccountingStorageType",
        "JobAcctGatherType",
        "SchedulerType",
    }
)


def max_node_count(nodes: int) -> int:
    """MaxNodeCount for ``nodes`` configured nodes: room for as many replacements as nodes, and
    at least 8, while dead nodes' records wait for the reaper (a record of a node that died
    running a job cannot be deleted until the job left it)."""
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes must be a positive integer, got {nodes!r}")
    return max(2 * nodes, nodes + 8)


def cluster_document(
    *,
    nodes: int,
    shared_root: str,
    node_cpus: int,
    node_real_memory_mib: int,
    node_features: list[str],
    cluster_name: str = contract.SLURM_DEFAULT_CLUSTER_NAME,
    partition: str = "trn",
    ultraserver_size: int = 0,
    max_nodes_per_job: int | None = None,
    slurmctld_port: int = contract.SLURMCTLD_PORT,
    slurmd_port: int = contract.SLURMD_PORT,
    srun_port_range: tuple[int, int] = (60001, 63000),
    host: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The cluster document for ``nodes`` nodes; ``host`` overrides ``HOST_DEFAULTS`` keys."""
    unknown = sorted(set(host or {}) - set(HOST_DEFAULTS))
    if unknown:
        raise ValueError(f"cluster document: unknown host keys {unknown}")
    document: dict[str, Any] = {
        "cluster_name": cluster_name,
        "partition": partition,
        "nodes": nodes,
        "node_cpus": node_cpus,
        "node_real_memory_mib": node_real_memory_mib,
        "node_features": list(node_features),
        "ultraserver_size": ultraserver_size,
        "max_node_count": max_node_count(nodes),
        "max_nodes_per_job": nodes if max_nodes_per_job is None else max_nodes_per_job,
        "shared_root": shared_root,
        "state_save_location": f"{shared_root}/{contract.SHARED_SLURM_STATE}",
        "job_log_dir": f"{shared_root}/{contract.SHARED_JOB_LOGS}",
        "home_dir": f"{shared_root}/{contract.SHARED_HOMES}",
        "compile_cache": f"{shared_root}/{contract.SHARED_COMPILE_CACHE}",
        "slurmctld_port": slurmctld_port,
        "slurmd_port": slurmd_port,
        "srun_port_range": list(srun_port_range),
        "job_user": contract.SLURM_JOB_USER,
        "job_uid": contract.SLURM_JOB_UID,
    }
    document.update({**HOST_DEFAULTS, **(host or {})})
    return document


def conf_values(text: str) -> dict[str, str]:
    """``Key=value`` lines of a slurm.conf (first ``=`` splits; comments and blanks skipped);
    ``PartitionName``/``NodeName`` lines keyed by their whole line."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key in ("PartitionName", "NodeName"):
            values[line] = ""
        else:
            values[key] = value
    return values


def change_action(old_conf: str | None, new_conf: str) -> str:
    """``"none"``, ``"reconfigure"`` or ``"restart"``: what slurmctld running ``old_conf`` needs
    to run ``new_conf`` (``restart`` when there is no old configuration)."""
    if old_conf is None:
        return "restart"
    old, new = conf_values(old_conf), conf_values(new_conf)
    if old == new:
        return "none"
    changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    return "restart" if changed & RESTART_KEYS else "reconfigure"
