"""The Slurm cluster document: its message (``cdk_trn_runtime.contract.cluster_document``) built
for the ``SlurmScheduler`` construct (at synth) and for the local twin
(``cdk_trn_runtime.slurm.twin``) by one function, and what a change of it needs from slurmctld.

:func:`cluster_document` returns the document's JSON form (the message's ``to_properties()``);
``config.cloud_config`` parses it back into the message and turns it into slurm.conf on the
controller. Host-specific keys (``HOST_DEFAULTS``) default to the cloud's values; the twin sets its
own. The controller adds ``controller_host`` and ``controller_addr`` at boot.

:func:`change_action` says what a controller does when the document it runs changes: nothing,
``scontrol reconfigure``, or a restart of slurmctld (keys Slurm reads only at start; a changed
MaxNodeCount on reconfigure is fatal to slurmctld).

Standard library only (it runs in the training image and on the twin).
"""

from __future__ import annotations

from typing import Any

from cdk_trn_runtime.contract.cluster_document import (
    HOST_DEFAULTS,
    IMAGE_SCRIPTS,
    ClusterDocument,
    max_node_count,
)

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


def cluster_document(**arguments: Any) -> dict[str, Any]:
    """The cluster document's JSON form: :meth:`ClusterDocument.build` with ``arguments``
    (``nodes``, ``shared_root``, ``node_cpus``, ``node_real_memory_mib``, ``node_features``,
    optional ``cluster_name``, ``partition``, ``ultraserver_size``, ``max_nodes_per_job``,
    ports, ``srun_port_range`` and ``host`` overrides of ``HOST_DEFAULTS`` keys)."""
    return ClusterDocument.build(**arguments).to_properties()


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


__all__ = [
    "HOST_DEFAULTS",
    "IMAGE_SCRIPTS",
    "RESTART_KEYS",
    "ClusterDocument",
    "change_action",
    "cluster_document",
    "conf_values",
    "max_node_count",
]
