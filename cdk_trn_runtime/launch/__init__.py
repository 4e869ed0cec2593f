"""``python -m cdk_trn_runtime.launch``: any torchrun script on every node of a Slurm job.

The one launch logic of ``examples/slurm/torchrun.sbatch`` and ``examples/slurm/train.sbatch``
(a batch script cannot find a sibling file by its own path, so they call this module). Run in the
batch script, it plans the job and starts one task per node with ``srun``; each task runs this
module again (``--node``), which sets the node's environment and replaces itself with torchrun::

    python -m cdk_trn_runtime.launch [--procs-per-node N] SCRIPT [ARGS...]
    python -m cdk_trn_runtime.launch [--procs-per-node N] -m MODULE [ARGS...]

- Rendezvous on the job's first host (its ``NodeAddr``; node names need not resolve), on a port of
  ``contract.RENDEZVOUS_PORTS`` (reserved on every node) chosen by the job id, or
  ``$TRAIN_MASTER_PORT`` / ``--master-port``. On UltraServers the ranks follow (UltraServer id,
  node id) and the rendezvous is on the first of that order (``cdk_trn_runtime.slurm.topology``).
- Per node: one rank per logical NeuronCore on Trainium (``neuron-ls``), one per GPU with CUDA,
  one on CPU; ``--procs-per-node`` or ``$TRAIN_PROCS_PER_NODE`` overrides.
- Environment: EFA (``FI_PROVIDER=efa`` ...), the Neuron runtime's
  (``NEURON_RT_ROOT_COMM_ID`` ...) and the compile cache on the shared file system
  (``$CDK_TRN_SHARED_ROOT/neuron-compile-cache``: ``neuron/`` for ``NEURON_COMPILE_CACHE_URL``,
  ``inductor/`` for ``TORCHINDUCTOR_CACHE_DIR``, the layout the acceptance suite uses), each only
  where the job has not set it.
- The job's Python is the node environment's (``$CDK_TRN_PYTHON`` on the local cluster, the
  training image's ``python3`` on the cloud); this module runs torchrun with the interpreter that
  runs it.

Standard library only (it runs before anything else of the job).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cdk_trn_runtime import contract
from cdk_trn_runtime.slurm import topology

#: Environment variables the launcher reads (the examples' documented interface).
ENV_MASTER_PORT = "TRAIN_MASTER_PORT"
ENV_PROCS_PER_NODE = "TRAIN_PROCS_PER_NODE"
#: Prefix of /dev and /sys (tests and the local cluster), as the node scripts use it.
ENV_DEVICE_ROOT = contract.SLURM_ENV_DEVICE_ROOT

EFA_ENVIRONMENT = {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "FI_EFA_FORK_SAFE": "1"}
#: Neuron's multi-node recipe (FACTS.md "Slurm").
NEURON_ENVIRONMENT = {"MALLOC_ARENA_MAX": "128", "NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS": "7"}


class LaunchError(RuntimeError):
    """The job cannot be launched; the message says why."""


NOT_IN_A_JOB = (
    "not in a Slurm job (SLURM_JOB_ID and SLURM_NNODES unset): submit with "
    "sbatch examples/slurm/torchrun.sbatch SCRIPT [ARGS...]"
)


@dataclass(frozen=True)
class JobPlan:
    """What every node of the job needs to join one torchrun job."""

    nnodes: int
    master_addr: str
    master_port: int
    #: ``<hostname> <server id> <node id>`` lines on UltraServers; empty elsewhere.
    ultraserver_hosts: str = ""


def master_port(job_id: int, environ: Mapping[str, str]) -> int:
    """``$TRAIN_MASTER_PORT``, else a port of the reserved range chosen by the job id."""
    first, last = contract.RENDEZVOUS_PORTS
    raw = environ.get(ENV_MASTER_PORT, "").strip()
    if raw:
        if not raw.isdigit() or not first <= int(raw) <= last:
            raise LaunchError(
                f"{ENV_MASTER_PORT} must be a port from {first} to {last} (reserved for "
                f"rendezvous on every node), got {raw!r}"
            )
        return int(raw)
    return first + job_id % (last - first + 1)


def neuron_comm_port(port: int) -> int:
    """A second port of the reserved range for the Neuron runtime's root communicator."""
    first, last = contract.RENDEZVOUS_PORTS
    span = last - first + 1
    return first + (port - first + span // 2) % span


def plan_job(
    environ: Mapping[str, str],
    node_address: Callable[[str], str],
    first_host: str,
    ultraserver_hosts: str = "",
    requested_port: int | None = None,
) -> JobPlan:
    """The plan of the job whose environment is ``environ`` (SLURM_JOB_ID, SLURM_NNODES)."""
    try:
        job_id = int(environ["SLURM_JOB_ID"])
        nnodes = int(environ["SLURM_NNODES"])
    except (KeyError, ValueError):
        raise LaunchError(NOT_IN_A_JOB) from None
    port = requested_port if requested_port is not None else master_port(job_id, environ)
    if ultraserver_hosts.strip():
        hosts = topology.parse_hosts(ultraserver_hosts)
        if len(hosts) != nnodes:
            raise LaunchError(f"{len(hosts)} hosts reported their UltraServer ids, not {nnodes}")
        address = topology.order_hosts(hosts)[0].hostname
    else:
        address = node_address(first_host)
    return JobPlan(nnodes, address, port, ultraserver_hosts.strip())


def procs_per_node(
    environ: Mapping[str, str], device_root: str, neuron_cores: Callable[[], int]
) -> int:
    """Ranks on this node: the override, else logical NeuronCores, else GPUs, else 1."""
    raw = environ.get(ENV_PROCS_PER_NODE, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise LaunchError(f"{ENV_PROCS_PER_NODE} must be a positive integer, got {raw!r}")
        return int(raw)
    if glob.glob(f"{device_root}/dev/neuron[0-9]*"):
        return neuron_cores()
    gpus = glob.glob(f"{device_root}/dev/nvidia[0-9]*")
    return len(gpus) or 1


def neuron_ls_cores() -> int:
    """Logical NeuronCores of this node, from ``neuron-ls --json-output``."""
    tool = shutil.which("neuron-ls") or "/opt/aws/neuron/bin/neuron-ls"
    done = subprocess.run(  # noqa: S603  (a fixed argument list)
        [tool, "--json-output"], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise LaunchError(f"neuron-ls failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return sum(int(device["nc_count"]) for device in json.loads(done.stdout))


def node_environment(plan: JobPlan, environ: Mapping[str, str], device_root: str) -> dict[str, str]:
    """The variables this node's torchrun gets on top of the job's (never overriding the job's)."""
    extra: dict[str, str] = {}
    if glob.glob(f"{device_root}/sys/class/infiniband/*"):
        extra.update(EFA_ENVIRONMENT)
    if glob.glob(f"{device_root}/dev/neuron[0-9]*"):
        extra.update(NEURON_ENVIRONMENT)
        extra["NEURON_RT_ROOT_COMM_ID"] = f"{plan.master_addr}:{neuron_comm_port(plan.master_port)}"
    shared = environ.get(contract.SLURM_ENV_SHARED_ROOT, "").strip()
    if shared:
        cache = os.path.join(shared, contract.SHARED_COMPILE_CACHE)
        extra["NEURON_COMPILE_CACHE_URL"] = os.path.join(cache, "neuron")
        extra["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache, "inductor")
    return {k: v for k, v in extra.items() if not environ.get(k)}


def node_rank(
    plan: JobPlan, environ: Mapping[str, str], hostname: str
) -> tuple[int, dict[str, str]]:
    """This node's torchrun node rank, and the UltraServer topology variables (if any)."""
    if plan.ultraserver_hosts:
        ordered = topology.order_hosts(topology.parse_hosts(plan.ultraserver_hosts))
        variables = topology.topology_env(ordered, hostname)
        return int(variables["NEURON_GLOBAL_TOPOID"]), variables
    try:
        return int(environ["SLURM_NODEID"]), {}
    except (KeyError, ValueError):
        raise LaunchError("SLURM_NODEID is unset: --node runs as a task of srun") from None


def torchrun_command(
    python: str,
    plan: JobPlan,
    rank: int,
    procs: int,
    target: Sequence[str],
) -> list[str]:
    """``python -m torch.distributed.run ...`` for one node; ``target`` is the script (or
    ``-m MODULE``) and its arguments."""
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(plan.nnodes),
        "--node_rank",
        str(rank),
        "--nproc_per_node",
        str(procs),
        "--master_addr",
        plan.master_addr,
        "--master_port",
        str(plan.master_port),
        *target,
    ]


def scontrol_node_address(node: str) -> str:
    """The ``NodeAddr`` of ``node`` (``scontrol show node``)."""
    done = subprocess.run(  # noqa: S603  (a fixed argument list)
        ["scontrol", "show", "node", node], capture_output=True, text=True, timeout=60, check=False
    )
    match = re.search(r"\bNodeAddr=(\S+)", done.stdout)
    if done.returncode != 0 or not match:
        raise LaunchError(f"cannot find the address of node {node}: {done.stderr.strip()}")
    return match.group(1)


def first_host(environ: Mapping[str, str]) -> str:
    """The first host of the job's allocation (``scontrol show hostnames``)."""
    done = subprocess.run(  # noqa: S603  (a fixed argument list)
        ["scontrol", "show", "hostnames", environ.get("SLURM_JOB_NODELIST", "")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    hosts = done.stdout.split()
    if done.returncode != 0 or not hosts:
        raise LaunchError(f"cannot expand SLURM_JOB_NODELIST: {done.stderr.strip()}")
    return hosts[0]


def gather_ultraserver_hosts(python: str) -> str:
    """Every node's ``topology self`` line (one task per node); empty off UltraServers."""
    done = subprocess.run(  # noqa: S603  (our own module, an argument list)
        ["srun", "--ntasks-per-node=1", python, "-m", "cdk_trn_runtime.slurm.topology", "self"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise LaunchError(f"could not read the nodes' UltraServer ids: {done.stderr.strip()}")
    return done.stdout
