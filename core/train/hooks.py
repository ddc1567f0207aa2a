"""Step hooks: how methods change the training step without living inside layers.

A hook is any object with some of these methods (all optional), called by ``loop.fit``:

* ``on_train_start(state)``: once, after set-up and before the first step; ``state.resumed_from``
  says whether the run continues a checkpoint (None: a fresh run). A run records what it is here
  (``adaptome train`` writes its resolved ``config.yaml`` once the resume check has passed);
* ``on_step_start(state)``: before the first micro-batch of an optimizer step (DyLoRA samples its
  rank here);
* ``before_optimizer_step(state)``: gradients are complete (accumulated, all-reduced) and not yet
  clipped (gradient rescaling, column freezing);
* ``after_optimizer_step(state)``: the parameters are updated (proximal steps, freezing fix-ups);
* ``state_dict()`` / ``load_state_dict(d)``: tensors and plain values saved with checkpoints so
  that resume is exact.

``TrainState`` is what hooks see. ``state.step`` counts optimizer steps already completed, so
inside ``on_step_start`` of the first step it is 0, and in ``after_optimizer_step`` it is the
number of the step just taken (1-based).

Not covered: hooks around evaluation or checkpointing (eval_fn and the loop own those).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn


@dataclass
class TrainState:
    model: nn.Module  # the unwrapped model (no DDP wrapper)
    optimizer: Any
    scheduler: Any
    accelerator: Any
    max_steps: int
    step: int = 0
    epoch: int = 0
    loss: float = float("nan")
    resumed_from: int | None = None  # the checkpoint step this run continues (None: a fresh run)


def call_hooks(hooks, event: str, state: TrainState) -> None:
    for h in hooks:
        fn = getattr(h, event, None)
        if fn is not None:
            fn(state)


class WriteOnStart:
    """Hook: calls ``write()`` on the main process once the run has started, i.e. once ``fit``'s resume check
    has passed, so a refused run leaves what an earlier run wrote as it was (``adaptome train``'s
    ``config.yaml``, ``codegen train``'s ``train_config.json``)."""

    def __init__(self, write: Callable[[], Any]):
        self.write = write

    def on_train_start(self, state: TrainState) -> None:
        if state.accelerator.is_main_process:
            self.write()
