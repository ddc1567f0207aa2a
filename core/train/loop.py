"""The training loop every domain trains through: explicit, on ``accelerate``.

``fit(model, dataset, ...)`` runs ``max_steps`` optimizer steps. One step is ``grad_accum``
micro-batches of ``batch_size`` examples per process (gradients of the mean loss, all-reduced by
DDP across processes, so W processes with batch B behave like one process with batch W*B). In
order, a step does: hooks ``on_step_start`` -> forward/backward per micro-batch (no DDP sync but
the last) -> hooks ``before_optimizer_step`` -> gradient clipping -> optimizer step -> LR scheduler
step -> hooks ``after_optimizer_step`` -> zero grads -> logging / eval / checkpoint. The adapter
methods' own training behaviour (step hooks, optimizer groups, data-driven inits) is collected from
the model by ``method_training.collect`` and attached here; the caller's ``hooks`` run after them.

It owns seeding, the data order (``data.ResumableBatchSampler``), warmup + decay schedules, mixed
precision (``bf16`` / ``fp16`` through ``accelerator.autocast`` where the device allows), JSONL
metrics, a rich progress bar, atomic checkpoints (``checkpoint.py``) and exact resume: with
``resume=True`` the latest complete checkpoint in ``output_dir`` is loaded (model, optimizer,
scheduler, RNG states, hook states, data position) and a resumed run ends with the same weights
as an uninterrupted one.

Distributed: run the same script under ``torchrun`` or ``accelerate launch``; the Accelerator
picks up the process group (gloo on CPU, NCCL on GPUs). ``end_training()`` is called at the end.
Not covered: FSDP-sharded checkpoints (trainable parameters are gathered on the main process, fine
for adapters; full-model FSDP training should save through ``accelerator.save_state``), iterable
datasets (map-style datasets only), and early stopping.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from adaptome.core.train.checkpoint import ResumeError, fingerprint, list_checkpoints, load_checkpoint, save_checkpoint
from adaptome.core.train.data import ResumableBatchSampler
from adaptome.core.train.hooks import TrainState, call_hooks
from adaptome.core.train.method_training import collect as collect_method_training
from adaptome.core.train.metrics import MetricsLog
from adaptome.core.train.schedule import make_scheduler


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"
    max_steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    max_grad_norm: float | None = 1.0
    eval_every: int = 0
    save_every: int = 0
    keep_last: int = 2
    log_every: int = 10
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    cpu: bool = False
    progress: bool = True
    resume: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class FitResult:
    model: nn.Module
    step: int
    history: list[dict[str, Any]]
    output_dir: Path
    resumed_from: int | None = None


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """``model(**batch).loss``: the transformers convention."""
    return model(**batch).loss


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_accelerator(mixed_precision: str = "no", cpu: bool = False):
    """An Accelerator; in a single process, an earlier one with other settings is replaced."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    try:
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    except ValueError:
        if PartialState._shared_state and PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def _default_optimizer(model: nn.Module, lr: float, weight_decay: float, betas,
                       groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters (did you apply an adapter?)")
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas))


def _check_updates_in_backward(optimizer, max_grad_norm, mixed_precision: str) -> bool:
    """Optimizers with ``updates_in_backward`` (layerwise GaLore) update each parameter inside backward:
    ``fit`` tells them the micro-batch (``set_micro_batch``) and leaves the gradient all-reduce to them;
    clipping by the global norm and fp16 loss scaling cannot work there and are refused."""
    if not getattr(optimizer, "updates_in_backward", False):
        return False
    if max_grad_norm is not None and max_grad_norm > 0:
        raise ValueError(f"max_grad_norm={max_grad_norm}: a layerwise optimizer updates each parameter during "
                         "backward, before a global gradient norm exists; set max_grad_norm to null")
    if mixed_precision == "fp16":
        raise ValueError("mixed_precision=fp16 needs loss scaling before the update; a layerwise optimizer "
                         "updates during backward: use bf16 or no")
    return True


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(v, device) for v in batch)
    return batch


def fit(
    model: nn.Module,
    train_data: torch.utils.data.Dataset,
    *,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    collate_fn: Callable | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    hooks: Iterable[Any] = (),
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    accelerator: Any = None,
    output_dir: str | Path = "runs/train",
    max_steps: int = 100,
    batch_size: int = 8,
    grad_accum: int = 1,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    warmup_steps: int = 0,
    schedule: str = "linear",
    max_grad_norm: float | None = 1.0,
    eval_every: int = 0,
    save_every: int = 0,
    keep_last: int = 2,
    log_every: int = 10,
    seed: int = 0,
    mixed_precision: str = "no",
    cpu: bool = False,
    progress: bool = True,
    resume: bool = True,
) -> FitResult:
    """Train ``model`` on ``train_data``; see the module docstring for the step's anatomy."""
    methods = collect_method_training(model)  # the adapters' own hooks, optimizer groups, data inits
    hooks = methods.hooks + list(hooks)
    loss_fn = loss_fn or default_loss
    output_dir = Path(output_dir)
    acc = accelerator or make_accelerator(mixed_precision, cpu)
    seed_everything(seed)

    settings = dict(max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                    weight_decay=weight_decay, betas=list(betas), warmup_steps=warmup_steps, schedule=schedule,
                    seed=seed, world_size=acc.num_processes, n_examples=len(train_data))
    named_trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    named_trainable.update(methods.checkpoint_params)  # frozen tensors a data init writes (LoRA-SB's A, B)
    fp = fingerprint(named_trainable, settings)

    model = model.to(acc.device)
    model.train()
    if make_optimizer:
        optimizer = make_optimizer(model)
        methods.check_optimizer(optimizer)  # warns when the methods' groups (SoRA's gates) are not applied
    else:
        optimizer = _default_optimizer(model, lr, weight_decay, betas, methods.optimizer_groups(model, weight_decay))
    in_backward = _check_updates_in_backward(optimizer, max_grad_norm, mixed_precision)
    raw_optimizer = optimizer
    scheduler = make_scheduler(optimizer, schedule, warmup_steps, max_steps)
    sampler = ResumableBatchSampler(len(train_data), batch_size, seed, acc.process_index, acc.num_processes)
    # a private generator: creating a loader iterator would otherwise draw from the global RNG, and
    # a resumed run creates one more iterator than an uninterrupted run does
    loader = torch.utils.data.DataLoader(train_data, batch_sampler=sampler, collate_fn=collate_fn,
                                         generator=torch.Generator().manual_seed(seed))
    wrapped, optimizer = acc.prepare(model, optimizer)
    state = TrainState(model=model, optimizer=optimizer, scheduler=scheduler, accelerator=acc, max_steps=max_steps)

    ckpt_root = output_dir / "checkpoints"
    log = MetricsLog(output_dir / "metrics.jsonl", enabled=acc.is_main_process)
    micro = 0  # micro-batches consumed in the current epoch
    resumed_from = None
    existing = list_checkpoints(ckpt_root)
    if existing and resume:
        step0, path = existing[-1]
        ts = load_checkpoint(path, named_params=named_trainable, optimizer=optimizer, scheduler=scheduler,
                             hooks=hooks, expected_fingerprint=fp)
        state.step, state.epoch, micro = ts["step"], ts["epoch"], ts["micro_batch"]
        resumed_from = step0
        log.truncate_after(state.step)
    elif existing and not resume:
        raise ResumeError(f"{ckpt_root}: holds checkpoints of an earlier run; resume=True continues it, "
                          "or choose another output_dir (nothing was overwritten)")
    elif acc.is_main_process and (output_dir / "metrics.jsonl").exists():
        (output_dir / "metrics.jsonl").unlink()  # a fresh run with no checkpoint: old partial log
    if resumed_from is None:  # data-driven inits (LoRA-SB) at the first step's rate; on resume the checkpoint has them
        methods.initialise(model, train_data, collate_fn, loss_fn, scheduler.get_last_lr()[0], acc.device, _move)

    history: list[dict[str, Any]] = []
    per_epoch = sampler.batches_per_epoch()

    def batches():
        nonlocal micro
        while True:
            sampler.set_position(state.epoch, micro)
            for batch in loader:
                micro += 1
                yield batch
            state.epoch += 1
            micro = 0

    def checkpoint() -> None:
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_checkpoint(ckpt_root, state.step, trainable=named_trainable, optimizer=optimizer,
                            scheduler=scheduler, hooks=hooks, keep_last=keep_last,
                            trainer_state={"step": state.step, "epoch": state.epoch, "micro_batch": micro,
                                           "fingerprint": fp, "settings": settings})
        acc.wait_for_everyone()

    def evaluate() -> None:
        if eval_fn is None:
            return
        model.eval()
        with torch.no_grad():
            metrics = eval_fn(model)
        model.train()
        rec = {"step": state.step, **{f"eval/{k}": float(v) for k, v in metrics.items()}}
        history.append(rec)
        log.write(rec)

    bar = _progress(progress and acc.is_main_process, max_steps, state.step)
    it = batches()
    t0 = time.perf_counter()
    running, last_logged = 0.0, state.step
    try:
        while state.step < max_steps:
            call_hooks(hooks, "on_step_start", state)
            loss_sum = None  # a device tensor: reading it once per step keeps the GPU queue full
            for i in range(grad_accum):
                batch = _move(next(it), acc.device)
                sync = i == grad_accum - 1 and not in_backward  # a layerwise optimizer all-reduces per parameter
                if in_backward:
                    raw_optimizer.set_micro_batch(i, grad_accum)
                ctx = acc.no_sync(wrapped) if not sync else contextlib.nullcontext()
                with ctx:
                    with acc.autocast():
                        loss = loss_fn(wrapped, batch)
                    acc.backward(loss / grad_accum)
                part = loss.detach().float() / grad_accum
                loss_sum = part if loss_sum is None else loss_sum + part
            step_loss = loss_sum.item()
            if not math.isfinite(step_loss):  # before the update, so the weights stay usable
                raise FloatingPointError(f"loss is {step_loss} at step {state.step + 1}")
            call_hooks(hooks, "before_optimizer_step", state)
            if max_grad_norm is not None and max_grad_norm > 0:
                acc.clip_grad_norm_(wrapped.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            state.step += 1
            state.loss = step_loss
            call_hooks(hooks, "after_optimizer_step", state)
            optimizer.zero_grad(set_to_none=True)
            running += step_loss
            if bar is not None:
                bar[0].update(bar[1], advance=1, description=f"loss {step_loss:.4f}")
            if log_every and (state.step % log_every == 0 or state.step == max_steps):
                rec = {"step": state.step, "loss": running / max(1, state.step - last_logged), "lr": scheduler.get_last_lr()[0],
                       "epoch": state.epoch + micro / max(1, per_epoch), "elapsed_s": time.perf_counter() - t0}
                history.append(rec)
                log.write(rec)
                running, last_logged = 0.0, state.step
            if eval_every and state.step % eval_every == 0 and state.step != max_steps:
                evaluate()
            if save_every and state.step % save_every == 0:
                checkpoint()
        evaluate()
        if save_every and (not list_checkpoints(ckpt_root) or list_checkpoints(ckpt_root)[-1][0] != state.step):
            checkpoint()
    finally:
        if bar is not None:
            bar[0].stop()
    acc.wait_for_everyone()
    if accelerator is None:
        acc.end_training()
    return FitResult(model=model, step=state.step, history=history, output_dir=output_dir, resumed_from=resumed_from)


def _progress(enabled: bool, total: int, start: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                 TimeRemainingColumn(), transient=False)
    task = p.add_task("", total=total, completed=start)
    p.start()
    return p, task

