"""Linear merge: the weighted sum of the inputs' updates, sum_i w_i s_i B_i A_i (task arithmetic,
Ilharco et al. 2023, arXiv 2212.04089, eq. 1, applied to LoRA updates), re-factorised to rank k by a
truncated SVD (the best rank-k approximation, Eckart-Young); exact when k >= the sum of the ranks.

Unlike peft's ``combination_type="linear"`` (which mixes the A's and the B's separately and so adds
cross terms B_i A_j), this merges the updates themselves.

Not covered: per-module weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from adaptome.core.merge import MERGERS
from adaptome.core.merge.factors import Factors, LoraFolder, modules, refactor


@MERGERS.register("linear")
@dataclass
class LinearConfig:
    """Args:
        weights: one weight per input (default 1.0 each: the plain sum).
    """

    weights: list[float] | None = None

    def merge(self, loras: list[LoraFolder], rank: int | None) -> Factors:
        return merge(loras, rank, self)


def weighted_delta(loras: list[LoraFolder], module: str, weights: list[float]):
    """sum_i w_i Delta_i (O, I) over the inputs that hold ``module``."""
    return sum(w * lora.delta(module) for lora, w in zip(loras, weights) if module in lora.factors)


def merge(loras: list[LoraFolder], rank: int, cfg: LinearConfig | None = None) -> Factors:
    cfg = cfg or LinearConfig()
    weights = cfg.weights or [1.0] * len(loras)
    return {m: refactor(weighted_delta(loras, m, weights), rank) for m in modules(loras)}
