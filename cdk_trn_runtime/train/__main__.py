"""python -m cdk_trn_runtime.train: data-parallel training of the suite's small transformer.

Run once per rank by torchrun (``examples/slurm/train.sbatch``), or alone. Standard PyTorch on
the device ``torch.accelerator`` names (``neuron`` on Trainium, ``cuda``, else ``cpu``;
``CDK_TRN_DEVICE`` overrides) with that device's process-group backend (``neuron``, ``nccl``,
``gloo``), through ``suite.device.Runtime``. Every rank trains the same model (same seed) on its
own batches; gradients and the loss are averaged over all ranks each step. The model runs under
``torch.compile`` (the ``neuron`` backend on Trainium, inductor on CUDA; on CPU only with
``TRAIN_COMPILE=1``, as inductor's C++ build takes minutes on a small CPU). Rank 0 checkpoints every
``CHECKPOINT_EVERY`` steps and at the end, crash-safely (``checkpoint.py``); every rank resumes
from ``latest`` when present.

Rank 0 has the cluster's enclave vault sign each checkpoint it commits and writes
``step-<N>.manifest.json`` beside it (``cdk_trn_runtime.provenance.signing``): on by itself where
the cluster has a vault (its URL parameter exists) or ``CDK_TRN_VAULT_URL`` is set; the run id
signed is ``CDK_TRN_RUN_ID``, else the Slurm job id. The manifest lists the files as this process
wrote them: they are hashed in the staged directory, after their fsync and before the commit's
rename, and only this process's commits are ever signed, never another ``step-*`` directory in
the checkpoint directory. A resumed run does not sign its predecessor's checkpoints (that job
signs its own; one it could not sign stays unsigned, for the auditor to see). Signing happens
before the other ranks go on (they wait at the checkpoint's barrier). A failure to sign is
logged and never fails the run or touches the checkpoint; the next checkpoint retries the
manifests this run could not have signed yet, while their checkpoints are kept. At start-up rank
0 removes the staging directories (``.step-*.tmp``, ``.step-*.old``) an aborted save left behind.

Environment: ``TRAIN_STEPS`` (total steps, default 20), ``CHECKPOINT_DIR`` (default
the job's own ``$CDK_TRN_SHARED_ROOT/checkpoints/<job name>-<job id>``, ``.../train`` outside
Slurm, ``./checkpoints/...`` without a shared root; a requeue resumes there, a new submission
starts fresh; ``latest`` is resumed only when ``provenance.resume`` proves it this run's),
``CHECKPOINT_EVERY`` (default 5), ``TRAIN_STEP_SLEEP`` (seconds every rank waits after each step,
default 0: tests slow a run down to fail a node mid-run), ``TRAIN_COMPILE`` (1 or 0; default 1 on
an accelerator, 0 on CPU). On CPU the model is made smaller so a run takes seconds.

Rank 0 prints ``train: resumed step=<K> from=<path>`` when it resumed and ends with exactly one
``train: done step=<N> loss_first=<a> loss_last=<b> checkpoint=<path>`` line; the losses are the
rank-averaged losses of the first and last step this run trained (of the checkpoint's last step
when there was nothing left to train). After ``checkpoint=`` come ``tokens_per_s=<t>`` (all ranks,
this run's steps, checkpoints included) and, when ``CDK_TRN_HOURLY_PRICE`` gives one node's price
per hour, ``tokens_per_usd=<n>`` for the job's nodes (``cdk_trn_runtime.cost``); neither when
nothing was left to train.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdk_trn_runtime import contract
from cdk_trn_runtime.cost import throughput_fields
from cdk_trn_runtime.provenance.resume import check_resume
from cdk_trn_runtime.provenance.signing import CheckpointSigner
from cdk_trn_runtime.train import checkpoint


@dataclass(frozen=True)
class Settings:
    steps: int
    checkpoint_dir: Path
    checkpoint_every: int
    step_sleep: float = 0.0


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def _seconds(env: Mapping[str, str], name: str) -> float:
    raw = env.get(name, "").strip() or "0"
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds from 0 to 60, got {raw!r}") from None
    if not 0 <= value <= 60:
        raise ValueError(f"{name} must be a number of seconds from 0 to 60, got {raw!r}")
    return value


def settings(env: Mapping[str, str]) -> Settings:
    default_root = Path(env.get("CDK_TRN_SHARED_ROOT") or ".")
    # The job's own directory: a requeue (same job id) resumes there, a new submission starts
    # fresh; CHECKPOINT_DIR overrides.
    job = env.get("SLURM_JOB_ID", "").strip()
    own = f"{env.get('SLURM_JOB_NAME') or 'train'}-{job}" if job else "train"
    directory = env.get("CHECKPOINT_DIR") or str(
        default_root / contract.SHARED_CHECKPOINTS / own.replace("/", "_")
    )
    return Settings(
        steps=_positive(env, "TRAIN_STEPS", 20),
        checkpoint_dir=Path(directory).resolve(),
        checkpoint_every=_positive(env, "CHECKPOINT_EVERY", 5),
        step_sleep=_seconds(env, "TRAIN_STEP_SLEEP"),
    )


def _to_cpu(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def main() -> int:
    import torch

    from cdk_trn_runtime.suite import device as suite_device
    from cdk_trn_runtime.suite.training import TrainConfig, decoder_model, synthetic_batches

    run = settings(os.environ)
    device = suite_device.choose_device()
    info = suite_device.process_info()
    runtime = suite_device.Runtime(device, info)
    collectives = runtime.collectives
    rank, world = collectives.rank, collectives.world_size

    if device == suite_device.CPU:
        config = TrainConfig(batch=8, sequence=64, vocab=256, d_model=64, layers=2, heads=4)
    else:
        config = TrainConfig()
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = decoder_model(config).to(runtime.device)
    default_compile = "0" if device == suite_device.CPU else "1"
    forward = (
        torch.compile(model, backend=runtime.compile_backend)
        if os.environ.get("TRAIN_COMPILE", default_compile).strip() == "1"
        else model
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    # Each rank its own data: the batches' seed differs per rank.
    rank_config = TrainConfig(**{**config.as_dict(), "seed": config.seed + 1 + rank})
    batches = [b.to(runtime.device) for b in synthetic_batches(rank_config, 8)]

    if rank == 0:
        # A save killed mid-way leaves its staging directory; nobody else saves here now.
        for stale in checkpoint.remove_stale_staging(run.checkpoint_dir):
            print(f"train: removed {stale.name}, left by an aborted save", flush=True)

    start_step = 0
    previous_losses: list[float] = []
    resumed_from = checkpoint.latest(run.checkpoint_dir)
    lineage = None
    if resumed_from is not None:
        # Only a checkpoint proven to be this run's (provenance.resume); ResumeRefused ends the
        # job with the reason.
        # The state is read once: the bytes verified are the bytes loaded (a job could swap the
        # file between a check that reopens it and the load).
        state_path = checkpoint.state_file(resumed_from)
        data = state_path.read_bytes()
        contents = {state_path.name: data} if state_path != resumed_from else {}
        lineage = check_resume(
            resumed_from, os.environ, log=lambda m: print(f"train: {m}"), contents=contents
        )
        # Tensors and plain containers only: a checkpoint on the shared file system is never
        # unpickled as code.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        previous_losses = [float(v) for v in state["losses"]]
        if rank == 0:
            print(f"train: resumed step={start_step} from={resumed_from}", flush=True)

    parameters = [p for p in model.parameters() if p.requires_grad]
    losses: list[Any] = []
    last_saved: Path | None = resumed_from
    signer = CheckpointSigner.from_environment(os.environ) if rank == 0 else None
    if signer is not None and hasattr(signer, "resumed_from"):
        signer.resumed_from = lineage
    owned: list[Path] = [resumed_from] if resumed_from is not None else []

    def save(step: int) -> Path | None:
        values = previous_losses + [float(v) for v in losses]
        path = None
        if rank == 0:
            state = {
                "step": step,
                "model": _to_cpu(model.state_dict()),
                "optimizer": _to_cpu(optimizer.state_dict()),
                "losses": values[-10:],
                "config": config.as_dict(),
                "world_size": world,
            }
            buffer = io.BytesIO()
            torch.save(state, buffer)
            manifests: list[dict[str, Any]] = []

            def measure(staging: Path, final: Path) -> None:
                # The files just written and fsynced, before the rename makes them the checkpoint.
                if signer is not None and (manifest := signer.manifest_of(staging, final, step)):
                    manifests.append(manifest)

            path = checkpoint.save(
                run.checkpoint_dir,
                step,
                lambda handle: handle.write(buffer.getvalue()),
                before_commit=measure,
                owned=owned,
            )
            # Committed: ``latest`` names it whatever happens to the signature.
            if signer is not None:
                signer.after_commit(path, manifests[0] if manifests else None)
        collectives.barrier()  # nobody runs ahead of (or exits before) a checkpoint
        return path

    started, tokens, slept = time.perf_counter(), 0, 0.0  # throughput: tokens_per_s
    for step in range(start_step, run.steps):
        batch = batches[step % len(batches)]
        inputs, targets = batch[:, :-1], batch[:, 1:]
        tokens += inputs.numel() * world
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(forward(inputs).reshape(-1, config.vocab), targets.reshape(-1))
        loss.backward()
        # One all-reduce per step: every gradient and the loss, flattened together.
        flat = torch.cat([p.grad.reshape(-1) for p in parameters] + [loss.detach().reshape(1)])
        reduced = collectives.all_reduce_sum(flat) / world
        offset = 0
        for p in parameters:
            count = p.numel()
            p.grad.copy_(reduced[offset : offset + count].view_as(p))
            offset += count
        optimizer.step()
        losses.append(reduced[-1])
        done = step + 1
        if done % run.checkpoint_every == 0 or done == run.steps:
            saved = save(done)
            last_saved = saved if saved is not None else last_saved
        if run.step_sleep:
            time.sleep(run.step_sleep)
            slept += run.step_sleep

    runtime.wait()
    seconds = time.perf_counter() - started - slept
    trained = [float(v) for v in losses]
    first, last = (trained[0], trained[-1]) if trained else (previous_losses or [0.0])[-1:] * 2
    if rank == 0:
        where = last_saved if last_saved is not None else run.checkpoint_dir
        print(
            f"train: done step={max(run.steps, start_step)} loss_first={first:.4f} "
            f"loss_last={last:.4f} checkpoint={where}"
            + throughput_fields(tokens, seconds, os.environ),
            flush=True,
        )
    runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
