"""A small decoder-only transformer trained for a few steps on this rank's device.

The data is a synthetic language a model can learn in a few steps (each token follows from the
previous one by a fixed affine rule mod the vocabulary, from random starts), so a falling loss
shows that forward, backward and the optimizer compute the right thing. The model runs under
``torch.compile`` (the ``neuron`` backend on Trainium, inductor on CPU and CUDA); steps after the
warm-up must reuse the compiled graphs: torch.compile's own counters of graphs compiled and
recompilations must not move.

Training is per device (no gradient all-reduce): the compile-cache warm pass can then replay
exactly these graphs in a process of its own, and collectives are measured by their own check.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from . import formulas


@dataclass(frozen=True)
class TrainConfig:
    """Model and run sizes; the defaults suit one NeuronCore and finish in seconds there."""

    steps: int = 20
    warmup_steps: int = 3
    batch: int = 8
    sequence: int = 256
    vocab: int = 1024
    d_model: int = 256
    layers: int = 4
    heads: int = 4
    learning_rate: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {self.warmup_steps}")
        if self.steps <= self.warmup_steps:
            raise ValueError(f"steps ({self.steps}) must exceed warmup_steps ({self.warmup_steps})")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        for name in ("batch", "sequence", "vocab", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _model(config: TrainConfig) -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = config.d_model
            self.norm1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.norm2 = nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x: Any, mask: Any) -> Any:
            b, t, d = x.shape
            h = config.heads
            q, k, v = self.qkv(self.norm1(x)).split(d, dim=-1)
            q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // h)
            scores = scores.masked_fill(mask, float("-inf"))
            attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
            x = x + self.proj(attended)
            return x + self.mlp(self.norm2(x))

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(config.vocab, config.d_model)
            self.positions = nn.Embedding(config.sequence, config.d_model)
            self.blocks = nn.ModuleList(Block() for _ in range(config.layers))
            self.norm = nn.LayerNorm(config.d_model)
            self.causal_mask: Any
            upper = torch.ones(config.sequence, config.sequence, dtype=torch.bool).triu(1)
            self.register_buffer("causal_mask", upper, persistent=False)

        def forward(self, tokens: Any) -> Any:
            t = tokens.shape[1]
            positions = torch.arange(t, device=tokens.device)
            x = self.tokens(tokens) + self.positions(positions)
            mask = self.causal_mask[:t, :t]
            for block in self.blocks:
                x = block(x, mask)
            return self.norm(x) @ self.tokens.weight.t()

    return Decoder()


def synthetic_batches(config: TrainConfig, count: int) -> list[Any]:
    """``count`` batches of the learnable language, as host tensors of shape (batch, seq+1)."""
    import torch

    generator = torch.Generator().manual_seed(config.seed)
    batches = []
    for _ in range(count):
        start = torch.randint(0, config.vocab, (config.batch, 1), generator=generator)
        steps = torch.arange(config.sequence + 1).unsqueeze(0)
        # x_{t} = (x_0 + 7 t) mod V: the next token is the previous one plus 7.
        batches.append((start + 7 * steps) % config.vocab)
    return batches


def train(config: TrainConfig, device: Any, compile_backend: str = "inductor") -> dict[str, Any]:
    """Train, and report loss, step time, tokens/s and compilations after the warm-up."""
    import torch

    from .device import compile_metrics, synchronize

    torch.manual_seed(config.seed)
    model = _model(config).to(device)
    compiled = torch.compile(model, backend=compile_backend)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = [b.to(device) for b in synthetic_batches(config, 8)]
    parameters = sum(p.numel() for p in model.parameters())

    losses: list[Any] = []

    def step(index: int) -> None:
        batch = batches[index % len(batches)]
        inputs, targets = batch[:, :-1], batch[:, 1:]
        optimizer.zero_grad(set_to_none=True)
        logits = compiled(inputs)
        loss = loss_fn(logits.reshape(-1, config.vocab), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    for index in range(config.warmup_steps):
        step(index)
    synchronize(device)
    before = compile_metrics()
    start = time.perf_counter()
    for index in range(config.warmup_steps, config.steps):
        step(index)
    synchronize(device)
    seconds = time.perf_counter() - start
    after = compile_metrics()

    values = [float(v) for v in torch.stack(losses).cpu().tolist()]
    measured = config.steps - config.warmup_steps
    window = min(3, len(values))
    first = sum(values[:window]) / window
    last = sum(values[-window:]) / window
    return {
        "config": config.as_dict(),
        "parameters": parameters,
        "compile_backend": compile_backend,
        "losses": values,
        "first_loss": first,
        "last_loss": last,
        "loss_drop_fraction": (first - last) / first if first > 0 else 0.0,
        "measured_steps": measured,
        "seconds": seconds,
        "step_ms": seconds / measured * 1e3,
        "tokens_per_s": formulas.tokens_per_second(
            config.batch, config.sequence, measured, seconds
        ),
        # torch.compile's own count of graphs compiled (a recompilation after a failed guard
        # is one of them).
        "compilations_after_warmup": after["compilations"] - before["compilations"],
        "recompilations_after_warmup": after["recompilations"] - before["recompilations"],
        "compile_seconds_after_warmup": after["compile_seconds"] - before["compile_seconds"],
    }


def decoder_model(config: TrainConfig) -> Any:
    """The decoder-only transformer ``train`` uses, untrained (for other training loops)."""
    return _model(config)
