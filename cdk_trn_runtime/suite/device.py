"""The one place that chooses the device, starts the process group and does collectives.

Standard PyTorch only, the same code on three devices: ``neuron`` on Trainium (TorchNeuron, the
native PyTorch backend Neuron ships from 2.33: a PrivateUse1 device that PyTorch autoloads),
``cuda`` where there is a GPU, ``cpu`` everywhere else. The device comes from ``--device`` (or
``CDK_TRN_DEVICE``) when given, otherwise from ``torch.accelerator``; the process-group backend is
the one that device takes (``neuron``, ``nccl``, ``gloo``), and ``torch.compile`` uses Neuron's
``neuron`` backend on Trainium and PyTorch's default (inductor) elsewhere. Under torchrun the
process group starts from its environment (``env://``); alone, from an in-memory store, so a
single process needs no port.

Functions that need no torch (``resolve_device``, ``process_info``, ...) import none, so the pure
parts of the package stay importable without it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

NEURON = "neuron"
CUDA = "cuda"
CPU = "cpu"
DEVICES = (NEURON, CUDA, CPU)
#: torch.distributed backend per device type.
BACKENDS = {NEURON: "neuron", CUDA: "nccl", CPU: "gloo"}
#: torch.compile backend per device type: Neuron's compiler on Trainium, inductor elsewhere.
COMPILE_BACKENDS = {NEURON: "neuron", CUDA: "inductor", CPU: "inductor"}
#: Environment variable that chooses the device when ``--device`` is not given.
DEVICE_VARIABLE = "CDK_TRN_DEVICE"


def platform_name(device: str) -> str:
    """The device type as results name it (``NEURON``, ``CUDA``, ``CPU``)."""
    return device.upper()


def resolve_device(requested: str | None, accelerator: str | None) -> str:
    """The device type to use: ``requested`` when given, else the accelerator's, else ``cpu``.

    ``accelerator`` is ``torch.accelerator.current_accelerator().type`` (None without one).
    """
    if requested:
        choice = requested.strip().lower()
        if choice not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
        return choice
    if accelerator in (NEURON, CUDA):
        return accelerator
    return CPU


def choose_device(requested: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The device for this process: ``requested``, else ``$CDK_TRN_DEVICE``, else the accelerator.

    Imports torch only when it has to ask ``torch.accelerator``.
    """
    env = os.environ if environ is None else environ
    wanted = requested or env.get(DEVICE_VARIABLE, "").strip() or None
    if wanted:
        return resolve_device(wanted, None)
    import torch

    current = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return resolve_device(None, current.type if current is not None else None)


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
)


def standalone_environment(info: ProcessInfo, device: str) -> dict[str, str]:
    """The environment for a single-process helper of this rank (the cache warm pass)."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env[DEVICE_VARIABLE] = device
    if device == NEURON and "NEURON_RT_VISIBLE_CORES" not in env:
        # The rank's own NeuronCore, which the measured run uses after the warm pass.
        env["NEURON_RT_VISIBLE_CORES"] = str(info.local_rank)
    if device == CUDA and "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = str(info.local_rank)
    return env


class Collectives:
    """All-reduce, all-gather and barrier over all ranks, through ``torch.distributed``.

    Tensors live on ``tensor_device`` (the rank's accelerator, or host memory on CPU), which is
    the path the backend of that device (neuron, nccl, gloo) takes.
    """

    def __init__(self, backend: str, rank: int, world_size: int, tensor_device: Any) -> None:
        self.backend = backend
        self.rank = rank
        self.world_size = world_size
        self.tensor_device = tensor_device

    def all_reduce_sum(self, tensor: Any) -> Any:
        import torch.distributed as dist

        out = tensor.clone()
        dist.all_reduce(out)
        return out

    def all_gather(self, tensor: Any) -> Any:
        """The ranks' 1-D tensors concatenated in rank order."""
        import torch
        import torch.distributed as dist

        out = torch.empty(
            tensor.numel() * self.world_size, dtype=tensor.dtype, device=tensor.device
        )
        dist.all_gather_single(out, tensor.contiguous())
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        self.wait()
        dist.barrier()

    def wait(self) -> None:
        """Block until the device finished everything queued so far."""
        synchronize(self.tensor_device)

    def all_gather_bytes(self, payload: bytes) -> list[bytes]:
        """Every rank's ``payload``, in rank order, on every rank.

        Bytes travel as float32 values 0..255 so the same collective works on every backend.
        """
        import torch

        length = torch.tensor([float(len(payload))], dtype=torch.float32)
        lengths = self.all_gather(length.to(self.tensor_device))
        sizes = [int(v) for v in lengths.cpu().tolist()]
        width = max(sizes)
        buffer = torch.zeros(width, dtype=torch.float32)
        if payload:
            buffer[: len(payload)] = torch.tensor(list(payload), dtype=torch.float32)
        gathered = self.all_gather(buffer.to(self.tensor_device))
        rows = gathered.cpu().reshape(self.world_size, width).to(torch.uint8)
        return [bytes(rows[i, : sizes[i]].tolist()) for i in range(self.world_size)]


def synchronize(device: Any) -> None:
    """Wait for the queued work of ``device`` (nothing to wait for on the host)."""
    import torch

    if getattr(device, "type", "cpu") != "cpu":
        torch.accelerator.synchronize(device)


class Runtime:
    """The initialized device of this rank: device, process group and collectives."""

    def __init__(self, device: str, info: ProcessInfo, *, distributed: bool = True) -> None:
        import torch
        import torch.distributed as dist

        self.device_type = device
        self.platform = platform_name(device)
        self.info = info
        self.backend = BACKENDS[device]
        self.compile_backend = COMPILE_BACKENDS[device]
        if device == CPU:
            self.device = torch.device("cpu")
        else:
            if not torch.accelerator.is_available():
                raise RuntimeError(f"device {device} was asked for but torch has no accelerator")
            count = torch.accelerator.device_count()
            # One device per rank: the local rank's, unless the runtime shows each process only
            # its own (NEURON_RT_VISIBLE_CORES, CUDA_VISIBLE_DEVICES).
            index = info.local_rank if count > info.local_rank else 0
            torch.accelerator.set_device_index(index)
            self.device = torch.device(device, index)
        if not distributed:
            self.collectives = Collectives(self.backend, 0, 1, self.device)
            return
        if info.under_torchrun:
            # torchrun's RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (env://).
            dist.init_process_group(self.backend)
        else:
            dist.init_process_group(self.backend, store=dist.HashStore(), rank=0, world_size=1)
        self.collectives = Collectives(
            self.backend, dist.get_rank(), dist.get_world_size(), self.device
        )
        if self.collectives.world_size != info.world_size:
            raise RuntimeError(
                f"the process group has {self.collectives.world_size} ranks but WORLD_SIZE is "
                f"{info.world_size}"
            )

    def wait(self) -> None:
        synchronize(self.device)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def compile_metrics() -> dict[str, float]:
    """torch.compile's own counters in this process: graphs compiled, recompilations, seconds.

    ``compilations`` is Dynamo's count of graphs it captured and compiled
    (``counters["stats"]["unique_graphs"]``); ``recompilations`` counts frames compiled again
    after a guard failed; the seconds are Dynamo's compile-time metrics.
    """
    from torch._dynamo.utils import compilation_time_metrics, counters

    seconds = sum(
        sum(values)
        for name, values in compilation_time_metrics.items()
        if name.endswith("compile_inner")
    )
    return {
        "compilations": int(counters["stats"]["unique_graphs"]),
        "recompilations": int(sum(counters["recompiles"].values())),
        "compile_seconds": float(seconds),
    }


#: torch.compile's cache counters: inductor's FX-graph cache and AOTAutograd's cache.
CACHE_COUNTERS = {
    "fx_graph_cache_hits": ("inductor", "fxgraph_cache_hit"),
    "fx_graph_cache_misses": ("inductor", "fxgraph_cache_miss"),
    "autograd_cache_hits": ("aot_autograd", "autograd_cache_hit"),
    "autograd_cache_misses": ("aot_autograd", "autograd_cache_miss"),
}


def cache_counters() -> dict[str, int]:
    """The compile-cache counters of this process so far (0 for a counter never set)."""
    from torch._dynamo.utils import counters

    return {name: int(counters[group][key]) for name, (group, key) in CACHE_COUNTERS.items()}
