"""The training loop every domain trains through: explicit, on ``accelerate``.

``fit(model, dataset, cfg)`` (or ``fit(model, dataset, max_steps=..., lr=...)``: the options are
``config.TrainConfig``'s, validated into one) runs ``max_steps`` optimizer steps. It reads top to
bottom in named parts. The adapter methods' own training behaviour (step hooks, optimizer groups,
data-driven inits, ``method_training.collect``) is attached in ``_set_up``; the caller's ``hooks``
run after the methods' hooks:

* ``_set_up``: seeding, the run's identity, optimizer (``_build_optimizer``), schedule, data order,
  process group, then ``_resume_or_start``: the newest intact checkpoint of the same identity is
  loaded (model, optimizer, scheduler, RNG states, hook states, data position), a checkpoint of
  another configuration is refused naming what changed; hooks ``on_train_start`` then run once;
* ``_train_step``: hooks ``on_step_start`` -> forward/backward per micro-batch (``grad_accum`` of
  ``batch_size`` examples per process; no DDP sync but the last) -> hooks ``before_optimizer_step``
  -> gradient clipping -> optimizer step -> LR scheduler step -> hooks ``after_optimizer_step`` ->
  zero grads;
* ``_log_evaluate_save``: a metrics line every ``log_every`` steps (its ``lr``: the rate that step's
  update used, before the scheduler moved on), ``_evaluate`` every ``eval_every``, ``_checkpoint``
  every ``save_every``;
* ``_finish``: the last evaluation and checkpoint.

W processes with batch B behave like one process with batch W*B (gradients of the mean loss are
all-reduced by DDP; with a method's step hooks DDP looks for parameters left out of the loss, as LaMDA's
B once frozen). A resumed run ends with the same weights as an uninterrupted one. Ctrl-C stops
at the end of the step with a checkpoint and a one-line ``Interrupted`` saying how to resume; a
collective that waits longer than ``dist_timeout_s`` is a ``PeerTimeout`` naming the stalled rank.

Distributed: run the same script under ``torchrun`` or ``accelerate launch``;
``distributed.make_accelerator`` joins the launcher's process group (gloo on CPU, NCCL on GPUs).
When ``fit`` creates the Accelerator it also ends it (``end_training``); a caller that writes
outputs after training passes its own. Only the main process writes metrics and checkpoints.
Not covered: FSDP-sharded checkpoints (trainable parameters are saved from the main process, fine
for adapters), iterable datasets (map-style datasets only), and early stopping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from adaptome.core.atomic import clean_stale
from adaptome.core.config import InvalidValue
from adaptome.core.errors import AdaptomeError
from adaptome.core.progress import progress_bar
from adaptome.core.train.checkpoint import (
    ResumeError,
    check_identity,
    clean_checkpoint_root,
    find_resumable,
    load_checkpoint,
    save_checkpoint,
)
from adaptome.core.train.config import TrainConfig
from adaptome.core.train.data import ResumableBatchSampler
from adaptome.core.train.distributed import Heartbeat, is_collective_failure, make_accelerator, peer_timeout
from adaptome.core.train.hooks import TrainState, call_hooks
from adaptome.core.train.identity import fingerprint, run_identity
from adaptome.core.train.interrupt import Interrupted, StopRequest
from adaptome.core.train.method_training import collect as collect_method_training
from adaptome.core.train.metrics import MetricsLog
from adaptome.core.train.schedule import make_scheduler
from adaptome.core.train.threads import torch_threads

log = logging.getLogger(__name__)

__all__ = ["FitResult", "NonFiniteLoss", "NothingToTrain", "TrainConfig", "fit", "make_accelerator"]


class NonFiniteLoss(AdaptomeError, FloatingPointError):
    """The loss became inf or NaN (the weights are those of the step before)."""


class NothingToTrain(AdaptomeError, ValueError):
    """The model has no trainable parameter."""


@dataclass
class FitResult:
    model: nn.Module
    step: int
    history: list[dict[str, Any]]
    output_dir: Path
    resumed_from: int | None = None
    first_loss: float | None = None  # the loss of step 1 and of the last step, whatever log_every (a resumed run:
    last_loss: float | None = None  # from its checkpoint; None from a checkpoint of a version that kept none)


@dataclass
class _Run:
    """What one ``fit`` call works with: built by ``_set_up``, advanced by the other parts."""

    cfg: TrainConfig
    acc: Any
    model: nn.Module  # unwrapped
    wrapped: nn.Module  # what the forward pass goes through (DDP wrapper with several processes)
    optimizer: Any
    scheduler: Any
    sampler: ResumableBatchSampler
    loader: Any
    hooks: list[Any]
    loss_fn: Callable
    eval_fn: Callable | None
    state: TrainState
    log: MetricsLog
    trainable: dict[str, nn.Parameter]
    identity: dict[str, Any]
    fingerprint: str
    heartbeat: Heartbeat
    raw_optimizer: Any = None  # the optimizer before ``accelerate`` wrapped it
    in_backward: bool = False  # it updates inside backward (layerwise GaLore): ``_check_updates_in_backward``
    batches: Iterator[Any] | None = None  # micro-batches from the data position on (``_batches``)
    micro: int = 0  # micro-batches consumed in the current epoch
    start_step: int = 0
    resumed_from: int | None = None
    last_checkpoint: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    running: float = 0.0
    step_lr: float = 0.0  # the learning rate the last optimizer step used (what metrics record as ``lr``)
    first_loss: float | None = None  # step 1's loss (kept in checkpoints, so a resumed run still knows it)
    last_loss: float | None = None  # the last step's loss
    last_logged: int = 0
    t0: float = field(default_factory=time.perf_counter)

    @property
    def ckpt_root(self) -> Path:
        return Path(self.cfg.output_dir) / "checkpoints"


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """``model(**batch).loss``: the transformers convention."""
    return model(**batch).loss


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def fit(
    model: nn.Module,
    train_data: torch.utils.data.Dataset,
    config: TrainConfig | None = None,
    *,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    collate_fn: Callable | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    hooks: Iterable[Any] = (),
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    accelerator: Any = None,
    identity: dict[str, Any] | None = None,
    start_again: bool = False,
    **options: Any,
) -> FitResult:
    """Train ``model`` on ``train_data``; see the module docstring for the parts.

    ``config`` and ``options`` are ``TrainConfig``'s options (``options`` replace fields of
    ``config``). ``identity``: what else made this run (model options, data file digests...), part
    of the resume check (``identity.run_identity``). ``start_again`` (a CLI's ``--overwrite``): checkpoints
    in ``output_dir`` are removed, with ``metrics.jsonl``, and the run starts at step 0, whatever configuration
    wrote them (resuming a finished run of the same configuration would take no step and save the old weights
    again, also after an update of the code that trained them); without it checkpoints of this configuration
    are resumed and those of another are refused.
    """
    cfg = TrainConfig.from_options(config, **options)
    with torch_threads(cfg.threads):  # cfg.threads CPU threads for the run, the caller's count restored after
        return _fit(model, train_data, cfg, loss_fn=loss_fn, collate_fn=collate_fn, eval_fn=eval_fn, hooks=hooks,
                    make_optimizer=make_optimizer, accelerator=accelerator, identity=identity,
                    start_again=start_again)


def _fit(model, train_data, cfg: TrainConfig, *, loss_fn, collate_fn, eval_fn, hooks, make_optimizer, accelerator,
         identity, start_again: bool = False) -> FitResult:
    acc = accelerator or make_accelerator(cfg.mixed_precision, cfg.cpu, cfg.dist_timeout_s)
    run = _set_up(model, train_data, cfg, acc, loss_fn=loss_fn or default_loss, collate_fn=collate_fn,
                  eval_fn=eval_fn, hooks=list(hooks), make_optimizer=make_optimizer, identity=identity,
                  start_again=start_again)
    call_hooks(run.hooks, "on_train_start", run.state)
    bar_on = cfg.progress and acc.is_main_process
    with StopRequest() as stop, \
            progress_bar("train", cfg.max_steps, run.state.step, enabled=bar_on) as bar:
        try:
            while run.state.step < cfg.max_steps:
                loss = _train_step(run)
                bar.advance(description=f"loss {loss:.4f}")
                _log_evaluate_save(run, loss)
                run.heartbeat.beat(f"end of step {run.state.step}")
                if stop.agreed(acc) and run.state.step < cfg.max_steps:  # at the last step: finish normally
                    _stop_on_request(run)
            _finish(run)
        except RuntimeError as e:
            if acc.num_processes > 1 and is_collective_failure(e):
                raise peer_timeout(e, run.heartbeat, cfg.dist_timeout_s, _resume_hint(run)) from None
            raise
    acc.wait_for_everyone()
    if accelerator is None:
        acc.end_training()
    return FitResult(model=run.model, step=run.state.step, history=run.history, output_dir=Path(cfg.output_dir),
                     resumed_from=run.resumed_from, first_loss=run.first_loss, last_loss=run.last_loss)


# ---------------------------------------------------------------------------------------------
# set-up or resume
# ---------------------------------------------------------------------------------------------
def _set_up(model, train_data, cfg: TrainConfig, acc, *, loss_fn, collate_fn, eval_fn, hooks, make_optimizer,
            identity, start_again: bool = False) -> _Run:
    seed_everything(cfg.seed)
    methods = collect_method_training(model)  # the adapters' own hooks, optimizer groups, data inits
    hooks = methods.hooks + hooks
    ident = run_identity(model, cfg, n_examples=len(train_data), world_size=acc.num_processes, extra=identity)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    trainable.update(methods.checkpoint_params)  # frozen tensors a data init writes (LoRA-SB's A, B)
    model = model.to(acc.device)
    model.train()
    optimizer = _build_optimizer(model, cfg, make_optimizer, methods)
    raw_optimizer = optimizer
    in_backward = _check_updates_in_backward(optimizer, cfg.max_grad_norm, cfg.mixed_precision)
    scheduler = make_scheduler(optimizer, cfg.schedule, cfg.warmup_steps, cfg.max_steps)
    sampler = ResumableBatchSampler(len(train_data), cfg.batch_size, cfg.seed, acc.process_index, acc.num_processes)
    # a private generator: creating a loader iterator would otherwise draw from the global RNG, and
    # a resumed run creates one more iterator than an uninterrupted run does
    loader = torch.utils.data.DataLoader(train_data, batch_sampler=sampler, collate_fn=collate_fn,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    _find_unused_when_methods_change_trainables(acc, methods.hooks)
    wrapped, optimizer = acc.prepare(model, optimizer)
    state = TrainState(model=model, optimizer=optimizer, scheduler=scheduler, accelerator=acc,
                       max_steps=cfg.max_steps)
    run = _Run(cfg=cfg, acc=acc, model=model, wrapped=wrapped, optimizer=optimizer, scheduler=scheduler,
               sampler=sampler, loader=loader, hooks=hooks, loss_fn=loss_fn, eval_fn=eval_fn, state=state,
               log=MetricsLog(Path(cfg.output_dir) / "metrics.jsonl", enabled=acc.is_main_process),
               trainable=trainable, identity=ident, fingerprint=fingerprint(ident), heartbeat=Heartbeat(acc),
               raw_optimizer=raw_optimizer, in_backward=in_backward)
    _resume_or_start(run, start_again)
    if run.resumed_from is None:  # data-driven inits (LoRA-SB) at the first step's rate; a checkpoint holds them
        methods.initialise(model, train_data, collate_fn, loss_fn, scheduler.get_last_lr()[0], acc.device, _move)
    run.batches = _batches(run)
    return run


def _build_optimizer(model: nn.Module, cfg: TrainConfig, make_optimizer, methods) -> torch.optim.Optimizer:
    """The caller's optimizer, or AdamW over the methods' parameter groups with the config's options. A
    ``make_optimizer`` that takes ``groups`` (the registry's factories) is given the methods' groups."""
    if make_optimizer is not None:
        if "groups" in inspect.signature(make_optimizer).parameters:
            optimizer = make_optimizer(model, groups=methods.optimizer_groups(model, cfg.weight_decay))
        else:
            optimizer = make_optimizer(model)
        methods.check_optimizer(optimizer)  # warns when the methods' groups (SoRA's gates) are not applied
        return optimizer
    if not any(p.requires_grad for p in model.parameters()):
        raise NothingToTrain("the model has no trainable parameters (did you apply an adapter?)")
    groups = methods.optimizer_groups(model, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))


def _find_unused_when_methods_change_trainables(acc, method_hooks: list) -> None:
    """With several processes, let DDP tolerate parameters that stop taking part in the loss: a method's
    step hook may freeze one mid-run (LaMDA's B once all its columns are frozen: ``requires_grad`` turns
    off), and DDP built with the default ``find_unused_parameters=False`` then fails the next step with
    "Expected to have finished reduction". Only runs with method hooks pay for the search; a DDP handler
    the caller gave the accelerator keeps its other options."""
    if acc.num_processes == 1 or not method_hooks:
        return
    from accelerate.utils import DistributedDataParallelKwargs

    handler = getattr(acc, "ddp_handler", None) or DistributedDataParallelKwargs()
    acc.ddp_handler = dataclasses.replace(handler, find_unused_parameters=True)


def _check_updates_in_backward(optimizer, max_grad_norm, mixed_precision: str) -> bool:
    """Optimizers with ``updates_in_backward`` (layerwise GaLore) update each parameter inside backward:
    ``fit`` tells them the micro-batch (``set_micro_batch``) and leaves the gradient all-reduce to them;
    clipping by the global norm and fp16 loss scaling cannot work there and are refused."""
    if not getattr(optimizer, "updates_in_backward", False):
        return False
    if max_grad_norm is not None and max_grad_norm > 0:
        raise InvalidValue("max_grad_norm", f"{max_grad_norm}: a layerwise optimizer updates each parameter during "
                           "backward, before a global gradient norm exists; set max_grad_norm to null")
    if mixed_precision == "fp16":
        raise InvalidValue("mixed_precision", "fp16 needs loss scaling before the update; a layerwise optimizer "
                           "updates during backward: use bf16 or no")
    return True


def _resume_or_start(run: _Run, start_again: bool = False) -> None:
    """Load the newest intact checkpoint of this identity, or start fresh; sets ``run.resumed_from``. Checkpoints
    of another identity are refused; with ``start_again`` any checkpoints are removed (``_remove_checkpoints``)."""
    acc, cfg = run.acc, run.cfg
    if acc.is_main_process:
        clean_checkpoint_root(run.ckpt_root)
        clean_stale(run.log.path.parent, run.log.path.name)  # a metrics rewrite cut short
    acc.wait_for_everyone()
    found = find_resumable(run.ckpt_root, warn=acc.is_main_process)
    if found and start_again:  # before the resume=False refusal: --overwrite asked for exactly this
        _remove_checkpoints(run, found[0])
        found = None
    if found and not cfg.resume:
        raise ResumeError(f"{run.ckpt_root}: holds checkpoints of an earlier run; resume=True continues it, "
                          "or choose another output_dir (nothing was overwritten)")
    if found:
        path, trainer_state = found
        check_identity(path, trainer_state, run.identity, run.fingerprint)
        if trainer_state["step"] > cfg.max_steps:  # else its weights would pass for a run of max_steps
            raise ResumeError(f"{path}: is step {trainer_state['step']}, beyond max_steps {cfg.max_steps}; raise "
                              "max_steps to at least that, or choose another output_dir (nothing was overwritten)")
        ts = load_checkpoint(path, named_params=run.trainable, optimizer=run.optimizer, scheduler=run.scheduler,
                             hooks=run.hooks)
        run.state.step, run.state.epoch, run.micro = ts["step"], ts["epoch"], ts["micro_batch"]
        run.first_loss, run.last_loss = ts.get("first_loss"), ts.get("last_loss")
        run.resumed_from = run.state.resumed_from = run.state.step
        run.last_checkpoint = path
        run.log.truncate_after(run.state.step)
    else:
        run.log.remove()  # a fresh run with no checkpoint: an old partial log is not this run's
    run.start_step = run.last_logged = run.state.step
    acc.wait_for_everyone()


def _remove_checkpoints(run: _Run, newest: Path) -> None:
    """``start_again``: the earlier run's checkpoints go, renamed aside first (a kill leaves a temporary folder
    ``clean_stale`` removes, never half a ``checkpoints/``), and so does its ``metrics.jsonl``. Every process
    decided so from the same files; the main process removes them while the others wait."""
    if run.acc.is_main_process:
        old = run.ckpt_root.parent / f".{run.ckpt_root.name}.old-{os.getpid()}"
        os.replace(run.ckpt_root, old)
        shutil.rmtree(old, ignore_errors=True)
        log.warning(f"removed {run.ckpt_root} (newest {newest.name}) and {run.log.path.name} of an earlier run: "
                    "--overwrite starts again")
    run.acc.wait_for_everyone()


# ---------------------------------------------------------------------------------------------
# one training step
# ---------------------------------------------------------------------------------------------
def _batches(run: _Run) -> Iterator[Any]:
    """Micro-batches from the data position onward, epoch after epoch."""
    while True:
        run.sampler.set_position(run.state.epoch, run.micro)
        for batch in run.loader:
            run.micro += 1
            yield batch
        run.state.epoch += 1
        run.micro = 0


def _train_step(run: _Run) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns its mean loss."""
    acc, cfg, state = run.acc, run.cfg, run.state
    run.heartbeat.beat(f"step {state.step + 1}")
    call_hooks(run.hooks, "on_step_start", state)
    loss_sum = None  # a device tensor: reading it once per step keeps the GPU queue full
    for i in range(cfg.grad_accum):
        batch = _move(next(run.batches), acc.device)
        sync = i == cfg.grad_accum - 1 and not run.in_backward  # a layerwise optimizer all-reduces per parameter
        if run.in_backward:
            run.raw_optimizer.set_micro_batch(i, cfg.grad_accum)
        with (acc.no_sync(run.wrapped) if not sync else contextlib.nullcontext()):
            with acc.autocast():
                loss = run.loss_fn(run.wrapped, batch)
            acc.backward(loss / cfg.grad_accum)
        part = loss.detach().float() / cfg.grad_accum
        loss_sum = part if loss_sum is None else loss_sum + part
    if acc.num_processes > 1:  # the global batch's loss, the same on every process
        loss_sum = acc.reduce(loss_sum, reduction="mean")
    step_loss = loss_sum.item()
    if not math.isfinite(step_loss):  # before the update, so the weights stay usable
        raise NonFiniteLoss(f"loss is {step_loss} at step {state.step + 1}; lower train.lr or check the data")
    call_hooks(run.hooks, "before_optimizer_step", state)
    if cfg.max_grad_norm:
        acc.clip_grad_norm_(run.wrapped.parameters(), cfg.max_grad_norm)
    run.step_lr = run.scheduler.get_last_lr()[0]  # the rate this step uses; the scheduler moves to the next one
    run.optimizer.step()
    run.scheduler.step()
    state.step += 1
    state.loss = run.last_loss = step_loss
    if state.step == 1:
        run.first_loss = step_loss
    call_hooks(run.hooks, "after_optimizer_step", state)
    run.optimizer.zero_grad(set_to_none=True)
    return step_loss


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(v, device) for v in batch)
    return batch


# ---------------------------------------------------------------------------------------------
# log, evaluate, save
# ---------------------------------------------------------------------------------------------
def _log_evaluate_save(run: _Run, loss: float) -> None:
    cfg, step = run.cfg, run.state.step
    run.running += loss
    if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.max_steps):
        per_epoch = max(1, run.sampler.batches_per_epoch())
        _record(run, {"step": step, "loss": run.running / max(1, step - run.last_logged),
                      "lr": run.step_lr, "epoch": run.state.epoch + run.micro / per_epoch,
                      "elapsed_s": time.perf_counter() - run.t0})
        run.running, run.last_logged = 0.0, step
    if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.max_steps:
        _evaluate(run)
    if cfg.save_every and step % cfg.save_every == 0 and step != cfg.max_steps:  # the last one: _finish
        _checkpoint(run)


def _record(run: _Run, rec: dict[str, Any]) -> None:
    run.history.append(rec)
    run.log.write(rec)


def _evaluate(run: _Run) -> None:
    """``eval_fn`` in eval mode without gradients; the training RNG streams are left as they were, so
    evaluating (a masked-LM collator draws masks) never changes the training trajectory."""
    if run.eval_fn is None:
        return
    run.model.eval()
    with torch.no_grad(), _rng_preserved(run.acc.device):
        metrics = run.eval_fn(run.model)
    run.model.train()
    _record(run, {"step": run.state.step, **{f"eval/{k}": float(v) for k, v in metrics.items()}})


@contextlib.contextmanager
def _rng_preserved(device: torch.device) -> Iterator[None]:
    py, npy = random.getstate(), np.random.get_state()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _checkpoint(run: _Run) -> None:
    acc, state = run.acc, run.state
    run.heartbeat.beat(f"checkpoint of step {state.step}")
    acc.wait_for_everyone()
    if acc.is_main_process:
        save_checkpoint(run.ckpt_root, state.step, trainable=run.trainable, optimizer=run.optimizer,
                        scheduler=run.scheduler, hooks=run.hooks, keep_last=run.cfg.keep_last,
                        trainer_state={"step": state.step, "epoch": state.epoch, "micro_batch": run.micro,
                                       "first_loss": run.first_loss, "last_loss": run.last_loss,
                                       "fingerprint": run.fingerprint, "identity": run.identity})
    acc.wait_for_everyone()
    run.last_checkpoint = run.ckpt_root / f"step-{state.step}"


def _finish(run: _Run) -> None:
    """The last evaluation and checkpoint (skipped when this call took no step: a finished run resumed)."""
    if run.state.step == run.start_step:
        return
    _evaluate(run)
    if run.cfg.save_every:
        _checkpoint(run)


def _resume_hint(run: _Run) -> str:
    if run.last_checkpoint is None:
        return "no checkpoint was written yet"
    return f"the last checkpoint is {run.last_checkpoint}; run the same command again to resume from it"


def _stop_on_request(run: _Run) -> None:
    """Ctrl-C: checkpoint at this step (unless checkpoints are off) and raise ``Interrupted``."""
    if run.cfg.save_every and run.last_checkpoint != run.ckpt_root / f"step-{run.state.step}":
        _checkpoint(run)
    where = _resume_hint(run) if run.cfg.save_every else "no checkpoint written (train.save_every is 0)"
    raise Interrupted(f"interrupted at step {run.state.step} of {run.cfg.max_steps}: {where}")
