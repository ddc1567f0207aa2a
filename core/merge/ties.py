"""TIES merging of LoRA updates (Yadav et al., NeurIPS 2023, arXiv 2306.01708, Sec. 3: trim to the
top-``density`` magnitudes, elect the sign per entry, disjoint mean), with peft's implementation
(``peft.utils.merge_utils.ties``) on the dense updates Delta_i = s_i B_i A_i, then re-factorised to
rank k by a truncated SVD, as peft's ``add_weighted_adapter(combination_type="ties_svd")`` does. peft's
plain ``combination_type="ties"`` is another method: for inputs of equal rank it applies TIES to the A's
and to the B's separately (each scaled by sqrt(weight * scale)), so its update is not a TIES merge of
the updates; benchmarks/merge reports it as a reference beside this one.

Not covered: ``ties_svd``'s clamping of the SVD factors (``svd_clamp``); TIES on the factors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from adaptome.core.merge import MERGERS
from adaptome.core.merge.factors import Factors, LoraFolder, MergeError, modules, refactor


@MERGERS.register("ties")
@dataclass
class TiesConfig:
    """Args:
        weights: one weight per input (default 1.0 each).
        density: fraction of each update's entries kept (largest magnitudes), in (0, 1].
        majority_sign_method: peft's sign election, "total" (sum) or "frequency" (count).
    """

    weights: list[float] | None = None
    density: float = 0.5
    majority_sign_method: Literal["total", "frequency"] = "total"

    def __post_init__(self) -> None:
        check_density(self.density, "ties")
        if self.majority_sign_method not in ("total", "frequency"):
            raise MergeError("ties majority_sign_method must be 'total' or 'frequency', got "
                             f"{self.majority_sign_method!r}")

    def merge(self, loras: list[LoraFolder], rank: int | None) -> Factors:
        return merge(loras, rank, self)


def check_density(density: float, method: str) -> None:
    """Refuse a density outside (0, 1]: 0 keeps nothing (an all-zero merge), above 1 is no density at all."""
    if not 0.0 < density <= 1.0:
        raise MergeError(f"{method} density must be in (0, 1] (the share of each update's entries kept), got {density}")


def updates(loras: list[LoraFolder], module: str) -> list[torch.Tensor]:
    """Each input's update of ``module`` (O, I), zero where an input does not adapt it."""
    shape = next(lora.delta(module).shape for lora in loras if module in lora.factors)
    return [lora.delta(module) if module in lora.factors else torch.zeros(shape, dtype=torch.float64)
            for lora in loras]


def merge(loras: list[LoraFolder], rank: int, cfg: TiesConfig | None = None) -> Factors:
    from peft.utils.merge_utils import ties

    cfg = cfg or TiesConfig()
    w = torch.tensor(cfg.weights or [1.0] * len(loras), dtype=torch.float64)
    return {m: refactor(ties(updates(loras, m), w, cfg.density, cfg.majority_sign_method), rank)
            for m in modules(loras)}
