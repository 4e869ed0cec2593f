"""The one place that chooses the device, starts the process group and does collectives.

In the bundled container ``PJRT_DEVICE=NEURON``: torch-neuronx registers the Neuron PJRT plugin and
every rank drives one NeuronCore through torch_xla; collectives go through torch_xla
(``xm.all_reduce`` / ``xm.all_gather``, the ``xla`` process-group backend), i.e. over
NeuronLink and EFA. Off Trainium ``PJRT_DEVICE=CPU`` gives the XLA CPU device: the same lazy
tensors, graph capture, compilation and compile cache.

One difference is forced by torch-xla itself: its PJRT CPU client has only in-process
collectives (XLA's ``InProcessCollectives``), so separate processes on XLA CPU cannot all-reduce
through XLA. With ``PJRT_DEVICE=CPU`` and more than one rank the collectives check therefore
runs ``torch.distributed`` with the gloo backend on host tensors; with one rank it uses the
torch_xla path that Neuron uses. Nothing else in the suite knows which transport is in use.

Functions that need no torch (``choose_platform``, ``process_info``) import none, so the pure
parts of the package stay importable without it.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

NEURON = "NEURON"
CPU = "CPU"
PLATFORMS = (NEURON, CPU)


def choose_platform(environ: MutableMapping[str, str] | None = None) -> str:
    """NEURON or CPU, from ``PJRT_DEVICE``; when unset, NEURON only if torch-neuronx imports.

    The choice is written back to ``PJRT_DEVICE`` so torch_xla starts the same runtime.
    """
    env = os.environ if environ is None else environ
    requested = env.get("PJRT_DEVICE", "").strip().upper()
    if requested:
        if requested not in PLATFORMS:
            raise ValueError(f"PJRT_DEVICE must be one of {', '.join(PLATFORMS)}, got {requested}")
        platform = requested
    else:
        try:
            # PyPI's torch-neuronx is a placeholder that raises ImportError; the real one is in
            # the Neuron container.
            importlib.import_module("torch_neuronx")
            platform = NEURON
        except ImportError:
            platform = CPU
    env["PJRT_DEVICE"] = platform
    return platform


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process sits in the job, from the variables torchrun sets."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node: str

    @property
    def under_torchrun(self) -> bool:
        return self.world_size > 1


def process_info(
    environ: MutableMapping[str, str] | None = None, node: str | None = None
) -> ProcessInfo:
    env = os.environ if environ is None else environ
    rank = int(env.get("RANK", "0"))
    world = int(env.get("WORLD_SIZE", "1"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    if not (0 <= rank < world):
        raise ValueError(f"RANK must be in [0, WORLD_SIZE={world}), got {rank}")
    name = node or env.get("TRN_ACCEPTANCE_NODE") or socket.gethostname()
    return ProcessInfo(rank, world, local_rank, local_world, name)


# Variables that make a process join the torchrun job. The compile-cache warm pass runs alone,
# so its environment drops them.
TORCHRUN_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_ERROR_FILE",
    "NEURON_PJRT_WORLD_SIZE",
    "NEURON_PJRT_PROCESS_INDEX",
    "NEURON_PJRT_PROCESSES_NUM_DEVICES",
    "PJRT_LOCAL_PROCESS_COUNT",
    "PJRT_LOCAL_PROCESS_RANK",
)


def standalone_environment(info: ProcessInfo, platform: str) -> dict[str, str]:
    """The environment for a single-process helper of this rank (the cache warm pass)."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    if platform == NEURON and "NEURON_RT_VISIBLE_CORES" not in env:
        # torch-neuronx maps LOCAL_RANK to a core only under torchrun; pin the same core here.
        env["NEURON_RT_VISIBLE_CORES"] = str(info.local_rank)
    return env


class Collectives:
    """All-reduce, all-gather and barrier over all ranks; subclasses pick the transport."""

    backend = ""

    def __init__(self, rank: int, world_size: int, tensor_device: Any) -> None:
        self.rank = rank
        self.world_size = world_size
        self.tensor_device = tensor_device

    def all_reduce_sum(self, tensor: Any) -> Any:
        raise NotImplementedError

    def all_gather(self, tensor: Any) -> Any:
        """The ranks' 1-D tensors concatenated in rank order."""
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Start execution of everything recorded so far (lazy devices)."""

    def wait(self) -> None:
        """Block until everything started has finished."""

    def all_gather_bytes(self, payload: bytes) -> list[bytes]:
        """Every rank's ``payload``, in rank order, on every rank.

        Bytes travel as float32 values 0..255 so the same collective works on every backend.
        """
        import torch

        length = torch.tensor([float(len(payload))], dtype=torch.float32)
        lengths = self.all_gather(length.to(self.tensor_device))
        self.flush()
        sizes = [int(v) for v in lengths.cpu().tolist()]
        width = max(sizes)
        buffer = torch.zeros(width, dtype=torch.float32)
        if payload:
            buffer[: len(payload)] = torch.tensor(list(payload), dtype=torch.float32)
        gathered = self.all_gather(buffer.to(self.tensor_device))
        self.flush()
        rows = gathered.cpu().reshape(self.world_size, width).to(torch.uint8)
        return [bytes(rows[i, : sizes[i]].tolist()) for i in range(self.world_size)]


class XlaCollectives(Collectives):
    """torch_xla collectives on XLA device tensors: the path Neuron uses."""

    backend = "xla"

    def all_reduce_sum(self, tensor: Any) -> Any:
        import torch_xla.core.xla_model as xm

        return xm.all_reduce(xm.REDUCE_SUM, tensor)

    def all_gather(self, tensor: Any) -> Any:
        import torch_xla.core.xla_model as xm

        return xm.all_gather(tensor, dim=0)

    def barrier(self) -> None:
        import torch_xla.core.xla_model as xm

        self.wait()
        # Not dist.barrier(): the xla process group's barrier returns without waiting.
        # xm.rendezvous all-gathers over the devices and reads the result back, so it blocks.
        xm.rendezvous("cdk_trn_runtime.suite")

    def flush(self) -> None:
        import torch_xla

        torch_xla.sync()

    def wait(self) -> None:
        import torch_xla.core.xla_model as xm

        xm.wait_device_ops()


class HostCollectives(Collectives):
    """torch.distributed gloo on host tensors: XLA CPU with several processes (see module doc)."""

    backend = "gloo"

    def all_reduce_sum(self, tensor: Any) -> Any:
        import torch.distributed as dist

        out = tensor.clone()
        dist.all_reduce(out)
        return out

    def all_gather(self, tensor: Any) -> Any:
        import torch
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


class Runtime:
    """The initialized device of this rank: device, collectives and compile metrics."""

    def __init__(
        self,
        platform: str,
        info: ProcessInfo,
        xla_cache_dir: str | None,
        *,
        distributed: bool = True,
    ) -> None:
        self.platform = platform
        self.info = info
        os.environ["PJRT_DEVICE"] = platform
        if platform == NEURON:
            importlib.import_module("torch_neuronx")
        import torch
        import torch.distributed as dist
        import torch_xla
        import torch_xla.runtime as xr

        if xla_cache_dir:
            # Must come before the first computation of this process.
            xr.initialize_cache(xla_cache_dir, readonly=False)
        self.device = torch_xla.device()
        self.collectives: Collectives
        if not distributed:
            self.collectives = XlaCollectives(0, 1, self.device)
            return
        if platform == NEURON or info.world_size == 1:
            import torch_xla.distributed.xla_backend  # noqa: F401  (registers the xla backend)

            if info.under_torchrun:
                # torchrun's RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (env://), as in
                # the Neuron documentation.
                dist.init_process_group("xla")
            else:
                # One process: no rendezvous, so no port to collide with other runs.
                dist.init_process_group("xla", store=dist.HashStore(), rank=0, world_size=1)
            self.collectives = XlaCollectives(dist.get_rank(), dist.get_world_size(), self.device)
        else:
            dist.init_process_group("gloo")
            self.collectives = HostCollectives(
                dist.get_rank(), dist.get_world_size(), torch.device("cpu")
            )
        if self.collectives.world_size != info.world_size:
            raise RuntimeError(
                f"the process group has {self.collectives.world_size} ranks but WORLD_SIZE is "
                f"{info.world_size}"
            )

    def sync(self) -> None:
        import torch_xla

        torch_xla.sync()

    def wait(self) -> None:
        import torch_xla.core.xla_model as xm

        xm.wait_device_ops()

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def compile_metrics() -> dict[str, float]:
    """Compilations so far in this process (torch_xla's CompileTime metric) and their seconds."""
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    count, total_ns = (data[0], data[1]) if data else (0, 0.0)
    return {"compilations": int(count), "compile_seconds": float(total_ns) / 1e9}


def counters(*names: str) -> dict[str, int]:
    """torch_xla counters by name; an unset counter is 0."""
    import torch_xla.debug.metrics as met

    present = set(met.counter_names())
    return {name: int(met.counter_value(name) or 0) if name in present else 0 for name in names}
