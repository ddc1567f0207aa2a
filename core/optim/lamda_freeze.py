"""LaMDA's progressive freezing of B (Azizi et al. 2024, arXiv 2406.12832, Sec. 3.2) as a step hook.

After optimizer step t (0-based), the first n(t) columns of every LaMDA B (in the order of W0's
singular values under the SVD init) are frozen:

* ``schedule="paper"``: n(t) = min(r, floor(r t / (freeze_fraction T))): every column is frozen by
  ``freeze_fraction`` of the T training steps ("during early training");
* ``schedule="code"``: n(t) = min(r, floor(t / (freeze_fraction T))), the official trainer's
  count (at most about 1 / freeze_fraction columns ever freeze).

Frozen really means fixed: ``before_optimizer_step`` zeroes their gradients and keeps a copy,
``after_optimizer_step`` writes the copy back, so neither Adam momentum nor decoupled weight decay
moves them (the official code only zeroes gradients). When every column of a B is frozen, B stops
requiring gradients: no gradient, no optimizer state update, less memory.

Not covered: freezing orders other than column index.
"""

from __future__ import annotations

import math

import torch

from adaptome.core.adapters.lamda import lamda_layers


class LamdaFreezeB:
    def __init__(self, freeze_fraction: float = 0.3, schedule: str = "paper", adapter_name: str = "default"):
        if not 0 < freeze_fraction <= 1:
            raise ValueError(f"freeze_fraction must be in (0, 1], got {freeze_fraction}")
        if schedule not in ("paper", "code"):
            raise ValueError(f"schedule must be 'paper' or 'code', got {schedule!r}")
        self.freeze_fraction, self.schedule, self.adapter_name = freeze_fraction, schedule, adapter_name
        self._stash: list[tuple[torch.Tensor, int, torch.Tensor]] = []

    def n_frozen(self, step: int, max_steps: int, r: int) -> int:
        span = self.freeze_fraction * max_steps
        n = r * step / span if self.schedule == "paper" else step / span
        return min(r, math.floor(n))

    @torch.no_grad()
    def before_optimizer_step(self, state) -> None:
        self._stash = []
        for _, layer in lamda_layers(state.model, self.adapter_name):
            b = layer.lamda_B[self.adapter_name]
            k = self.n_frozen(state.step, state.max_steps, b.shape[1])
            if k == 0 or not b.requires_grad:
                continue
            if k == b.shape[1]:
                b.requires_grad_(False)
                b.grad = None
                continue
            if b.grad is not None:
                b.grad[:, :k] = 0
            self._stash.append((b, k, b[:, :k].clone()))

    @torch.no_grad()
    def after_optimizer_step(self, state) -> None:
        for b, k, cols in self._stash:
            b[:, :k] = cols
        self._stash = []
