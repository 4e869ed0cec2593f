"""The twin's fixed facts: where this package is, the instances' addresses and names, and the
timeouts shorter than the cloud's."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CONTROLLER",
    "CONTROLLER_OCTET",
    "DEFAULT_NODES",
    "FAKE_NEURON_DEVICES",
    "FIRST_NODE_OCTET",
    "PACKAGE_ROOT",
    "REAPER_INTERVAL",
    "REGION",
    "SCRIPTS",
    "SLURMCTLD_NAME",
    "TWIN_TIMEOUTS",
    "USABLE",
]

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
#: A node is usable in these sinfo states (%t, without the flags * ~ # ! % $ @ ^ -).
USABLE = ("idle", "alloc", "mix")
