"""DARE merging of LoRA updates (Yu et al., ICML 2024, arXiv 2311.03099, eq. 1-2: drop each entry
with probability 1 - density and rescale the rest by 1 / density), with peft's implementations
(``peft.utils.merge_utils.dare_linear`` / ``dare_ties``) on the dense updates Delta_i = s_i B_i A_i,
then re-factorised to rank k by a truncated SVD, as peft's ``add_weighted_adapter`` does with
``combination_type="dare_linear_svd"`` / ``"dare_ties_svd"`` (its ``"dare_linear"`` / ``"dare_ties"``
without ``_svd`` drop entries of the A's and the B's separately instead). The random
drop is seeded (``seed``) inside a forked RNG, so the global RNG is untouched.

Not covered: DARE on the factors themselves (the paper works on full weight deltas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from adaptome.core.merge import MERGERS
from adaptome.core.merge.factors import Factors, LoraFolder, MergeError, modules, refactor
from adaptome.core.merge.ties import check_density, updates


@MERGERS.register("dare")
@dataclass
class DareConfig:
    """Args:
        weights: one weight per input (default 1.0 each).
        density: probability of keeping an entry, in (0, 1].
        variant: "linear" (rescaled sum) or "ties" (rescaled, then TIES sign election).
        seed: seed of the random drop.
    """

    weights: list[float] | None = None
    density: float = 0.5
    variant: Literal["linear", "ties"] = "linear"
    seed: int = 0

    def __post_init__(self) -> None:
        check_density(self.density, "dare")
        if self.variant not in ("linear", "ties"):
            raise MergeError(f"dare variant must be 'linear' or 'ties', got {self.variant!r}")

    def merge(self, loras: list[LoraFolder], rank: int | None) -> Factors:
        return merge(loras, rank, self)


def merge(loras: list[LoraFolder], rank: int, cfg: DareConfig | None = None) -> Factors:
    from peft.utils.merge_utils import dare_linear, dare_ties

    cfg = cfg or DareConfig()
    w = torch.tensor(cfg.weights or [1.0] * len(loras), dtype=torch.float64)
    fn = dare_linear if cfg.variant == "linear" else dare_ties
    out: Factors = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        for m in modules(loras):
            out[m] = refactor(fn(updates(loras, m), w, cfg.density), rank)
    return out
