"""Concatenation merge (peft's ``add_weighted_adapter(combination_type="cat")``): B = [w_1 B_1 ... w_N B_N],
A = [A_1; ...; A_N], so B A = sum_i w_i s_i B_i A_i exactly, at rank sum_i r_i (LoRA-LEGO's
concatenation-summation equivalence, arXiv 2409.16167 Sec. 3; LEGO's k = sum of ranks limit).

Not covered: a rank other than the sum of the input ranks (that is ``linear`` or ``lego``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaptome.core.merge import MERGERS
from adaptome.core.merge.factors import Factors, LoraFolder, modules


@MERGERS.register("cat")
@dataclass
class CatConfig:
    """Args:
        weights: one weight per input (default 1.0 each), folded into the B halves.
    """

    weights: list[float] | None = None

    def merge(self, loras: list[LoraFolder], rank: int | None) -> Factors:
        return merge(loras, rank, self)


def merge(loras: list[LoraFolder], rank: int | None = None, cfg: CatConfig | None = None) -> Factors:
    """``rank`` is ignored (the result's rank is the sum of the inputs' ranks, per module)."""
    cfg = cfg or CatConfig()
    weights = cfg.weights or [1.0] * len(loras)
    out: Factors = {}
    for m in modules(loras):
        pairs = [(w * lora.factors[m][0], lora.factors[m][1]) for lora, w in zip(loras, weights) if m in lora.factors]
        out[m] = (torch.cat([b for b, _ in pairs], dim=1),  # (O, sum R)
                  torch.cat([a for _, a in pairs], dim=0))  # (sum R, I)
    return out
