"""Low-rank transformer (LRT / Greenformer): every target Linear becomes two factors.

Winata et al., "Lightweight and Efficient End-to-End Speech Recognition Using Low-Rank Transformer"
(ICASSP 2020, arXiv 1910.13923), Eq. 1: W (o, i) ≈ V·U with U: i → r (no bias) and V: r → o (the
Linear's bias), no nonlinearity between; both factors train. Init ``svd``: the top-r SVD of W with
the singular values in the first factor (as greenformer's ``svd`` solver: U = diag(S_r)·V_rᵀ (r, i),
V = U_r (o, r)); init ``random``: the default ``nn.Linear`` init (greenformer's default solver).
The rank comes from ``keep_fraction``: r = ⌊keep_fraction · o·i/(o+i)⌋, i.e. the factors hold that
fraction of the layer's parameters. Break-even rule: a layer where r ≥ r* = ⌊o·i/(o+i)⌋ would not
get smaller; it is SKIPPED (kept dense) and its report row says why, unless
``skip_at_break_even=False`` (used to check that full-rank SVD reproduces the layer).

Not covered: greenformer's NMF / semi-NMF solvers and convolution factorisation (CED).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from adaptome.core.compress import COMPRESSORS
from adaptome.core.compress.layers import (
    CompressError,
    LowRankLinear,
    compressed_layers,
    linear_weight,
    replace_module,
)


@dataclass
class LRTConfig:
    """Args:
        keep_fraction: parameters kept per layer in (0, 1]; sets r = ⌊keep_fraction·o·i/(o+i)⌋.
        rank: a fixed rank for every layer instead (overrides keep_fraction when set).
        init: ``svd`` (top-r SVD of W) or ``random`` (default Linear init; needs fine-tuning).
        skip_at_break_even: keep a layer dense when r ≥ ⌊o·i/(o+i)⌋ (saying so in its report row).
        seed: seed of the random init.
    """

    keep_fraction: float = 0.5
    rank: int | None = None
    init: Literal["svd", "random"] = "svd"
    skip_at_break_even: bool = True
    seed: int = 0


def factorize(weight: torch.Tensor, bias: torch.Tensor | None, rank: int, init: str,
              generator: torch.Generator | None = None) -> LowRankLinear:
    """One LowRankLinear of ``rank`` for an (o, i) weight."""
    o, i = weight.shape
    if init == "svd":
        u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)  # (o, m), (m,), (m, i)
        return LowRankLinear.from_factors(u[:, :rank], s[:rank, None] * vh[:rank], bias)  # (o, r), (r, i)
    if init != "random":
        raise CompressError(f"init must be 'svd' or 'random', got {init!r}")
    first = torch.empty(rank, i)
    second = torch.empty(o, rank)
    for t, fan_in in ((first, i), (second, rank)):  # nn.Linear's default: U(−1/√fan_in, 1/√fan_in)
        bound = 1.0 / fan_in ** 0.5
        t.uniform_(-bound, bound, generator=generator)
    return LowRankLinear.from_factors(second, first, bias)


@COMPRESSORS.register("lrt")
class LowRankTransformer:
    """Registry entry: config, budget field, compression and trainable set (every factor)."""

    Config = LRTConfig
    budget_field = "keep_fraction"
    budget_help = "fraction of each layer's parameters kept, e.g. 0.5"
    #: options that replace the budget when set (``--budget`` beside them is refused, not ignored)
    overrides_budget: tuple[str, ...] = ("rank",)

    @staticmethod
    def compress(model: nn.Module, targets: list[str], cfg: LRTConfig, calib=None) -> list[dict]:
        if cfg.rank is None and not 0 < cfg.keep_fraction <= 1:
            raise CompressError(f"--budget (keep_fraction) must be in (0, 1], got {cfg.keep_fraction}")
        gen = torch.Generator().manual_seed(cfg.seed)
        rows = []
        for path in targets:
            w, b = linear_weight(model, path)
            o, i = w.shape
            r_star = (o * i) // (o + i)
            r = cfg.rank if cfg.rank is not None else int(cfg.keep_fraction * o * i / (o + i))
            if cfg.rank is not None and r < 1:
                raise CompressError(f"rank must be >= 1, got {cfg.rank}")
            if r < 1:
                raise CompressError(f"--budget (keep_fraction) {cfg.keep_fraction} gives rank 0 for {path} "
                                    f"({o}x{i}); raise it")
            row = {"path": path, "shape": [o, i], "rank": r, "break_even_rank": r_star, "params_before": o * i}
            if r >= r_star and cfg.skip_at_break_even:
                row.update(rank=min(o, i), skipped=f"rank {r} >= break-even {r_star}: factors would not be smaller",
                           params_after=o * i, rel_error=0.0)
            else:
                dtype = model.get_submodule(path).weight.dtype
                layer = factorize(w, b, r, cfg.init, gen)
                with torch.no_grad():
                    row["rel_error"] = float((w - layer.weight_product()).norm() / w.norm().clamp_min(1e-30))
                replace_module(model, path, layer.to(dtype))
                row["params_after"] = r * (o + i)
            rows.append(row)
        return rows

    @staticmethod
    def mark_trainable(model: nn.Module) -> list[nn.Parameter]:
        """Both factors of every factorised layer (and its bias), as in the paper."""
        return [p for _, layer in compressed_layers(model) if isinstance(layer, LowRankLinear)
                for p in layer.parameters()]
