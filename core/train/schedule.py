"""Learning-rate schedules with linear warmup, as multipliers of the base rate.

``lr_lambda(step)``: warmup rises linearly from 1/(warmup+1) to 1 over ``warmup_steps``; then
``constant`` stays at 1, ``linear`` decays to 0 at ``max_steps``, ``cosine`` follows
0.5 * (1 + cos(pi * progress)) down to ``min_ratio``.

Not covered: restarts, inverse-square-root and WSD schedules.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from adaptome.core.train.config import SCHEDULES


def _multiplier(step: int, *, kind: str, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "linear":
        return max(min_ratio, 1.0 - progress)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, max_steps: int,
                   min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; known: {', '.join(SCHEDULES)}")
    fn = partial(_multiplier, kind=kind, warmup_steps=warmup_steps, max_steps=max_steps, min_ratio=min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
