"""A researcher's own training script: plain PyTorch, FSDP2, written for torchrun.

Nothing in it knows about cdk-trn, Slurm or Trainium: the device is the one ``torch.accelerator``
reports (``neuron`` on Trainium with TorchNeuron, ``cuda`` on a GPU, else ``cpu``) and the
process-group backend is PyTorch's default for that device (``neuron``, ``nccl``, ``gloo``).

    torchrun --standalone --nproc-per-node 2 examples/train_fsdp2.py --steps 20   # one machine
    sbatch -N2 examples/slurm/torchrun.sbatch examples/train_fsdp2.py --steps 20  # two nodes

Rank 0 prints ``fsdp2: step=<N> loss=<x>`` every ``--log-every`` steps and ends with
``fsdp2: done steps=<N> world=<W> loss_first=<a> loss_last=<b>``.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard


def device() -> torch.device:
    if torch.accelerator.is_available():
        accelerator = torch.accelerator.current_accelerator()
        assert accelerator is not None
        index = int(os.environ.get("LOCAL_RANK", "0")) % torch.accelerator.device_count()
        torch.accelerator.set_device_index(index)
        return torch.device(accelerator.type, index)
    return torch.device("cpu")


class Model(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, 4 * width),
                nn.GELU(),
                nn.Linear(4 * width, width),
            )
            for _ in range(layers)
        )
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sequence", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args()

    here = device()
    dist.init_process_group(dist.get_default_backend_for_device(here))
    rank, world = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)  # the same initial weights everywhere; FSDP2 shards them
    model = Model(args.vocab, args.width, args.layers).to(here)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    if args.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

    # A learnable synthetic language: the next token is the previous one plus 3. Each rank draws
    # its own batches.
    generator = torch.Generator().manual_seed(1 + rank)
    losses = []
    for step in range(1, args.steps + 1):
        start = torch.randint(0, args.vocab, (args.batch, 1), generator=generator)
        tokens = ((start + 3 * torch.arange(args.sequence + 1)) % args.vocab).to(here)
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, args.vocab), tokens[:, 1:].reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
        if rank == 0 and step % args.log_every == 0:
            print(f"fsdp2: step={step} loss={losses[-1]:.4f}", flush=True)
    if rank == 0:
        print(
            f"fsdp2: done steps={args.steps} world={world} loss_first={losses[0]:.4f} "
            f"loss_last={losses[-1]:.4f}",
            flush=True,
        )
    # Every rank is done with its collectives before any tears the group down (a rank leaving
    # while another still talks to it ends that one with an error instead of a clean exit).
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
