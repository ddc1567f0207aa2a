"""WeLore: weight low-rank projection, with one global threshold solved from the compression target.

Jaiswal et al., "From GaLore to WeLore: How Low-Rank Weights Non-Uniformly Emerge from Low-Rank
Gradients" (arXiv 2407.11239), Sec. 3-4. For each target matrix W (o, i) with singular values σ,
the min-max normalised spectrum is σ̂ = (σ − min σ) / (max σ − min σ); one global threshold t prunes
k′ = #{σ̂ < t} ranks and keeps k = min(o, i) − k′. A matrix is a Low-Rank Component (LRC) when
k′ / min(o, i) > ``min_ratio``; an LRC is replaced by ``LowRankLinear`` with second = U_k·diag(√S_k)
(o, k) and first = diag(√S_k)·V_kᵀ (k, i), both trainable; an N-LRC keeps a dense weight, the rank-k
reconstruction U_k S_k V_kᵀ (unchanged when k′ = 0), frozen.

Where we differ from the reference code (VITA-Group/welore): the reference looks t up in a table
made for LLaMA-2 7B/13B; here t is SOLVED from ``keep_fraction`` by bisection over the sorted
normalised singular values of all target matrices: the smallest t whose stored parameter count
(k·(o+i) for an LRC, o·i for an N-LRC) is at most ``keep_fraction`` × the dense count, so one more
rank anywhere would exceed the budget. An LRC is only factored when k·(o+i) < o·i (otherwise the
factors would be larger than the matrix), so such a matrix counts as an N-LRC. Fine-tuning trains
the LRC factors only (``mark_trainable``); biases, N-LRCs, embeddings and heads stay frozen.

Not covered: the reference's bf16 factors (we keep the model's dtype), its cosine schedule with a
0.1 minimum ratio (``fit`` offers linear / cosine to 0), and layer-wise thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

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
class WeLoreConfig:
    """Args:
        keep_fraction: parameters kept over the target matrices, in (0, 1] (0.5 = 50 % compression);
            the global threshold is solved from it. Ignored when ``threshold`` is set.
        threshold: use this global threshold t in [0, 1] instead of solving one (0 prunes nothing).
        min_ratio: a matrix is an LRC when its pruned fraction k′/min(o, i) exceeds this (the
            reference's continual-finetuning value 0.4999).
    """

    keep_fraction: float = 0.5
    threshold: float | None = None
    min_ratio: float = 0.4999


def normalised_spectrum(s: torch.Tensor) -> torch.Tensor:
    """σ̂ = (σ − min) / (max − min) in float64 (so thresholds between neighbouring values are exact);
    a flat spectrum maps to all ones (nothing below any t ≤ 1)."""
    s = s.double()
    lo, hi = s.min(), s.max()
    if float(hi - lo) <= 0:
        return torch.ones_like(s)
    return (s - lo) / (hi - lo)


def kept_rank(s_hat: torch.Tensor, t: float) -> int:
    return int(s_hat.numel() - int((s_hat.double() < t).sum()))


def stored_params(k: int, o: int, i: int, min_ratio: float) -> tuple[int, bool]:
    """(stored parameter count, is LRC) for kept rank k of an (o, i) matrix."""
    m = min(o, i)
    lrc = (m - k) / m > min_ratio and k * (o + i) < o * i
    return (k * (o + i) if lrc else o * i), lrc


def total_params(spectra: list[torch.Tensor], shapes: list[tuple[int, int]], t: float, min_ratio: float) -> int:
    return sum(stored_params(kept_rank(s, t), o, i, min_ratio)[0] for s, (o, i) in zip(spectra, shapes))


def solve_threshold(spectra: list[torch.Tensor], shapes: list[tuple[int, int]], keep_fraction: float,
                    min_ratio: float) -> float:
    """The smallest global t with total stored parameters <= keep_fraction × dense (bisection)."""
    if not 0 < keep_fraction <= 1:
        raise CompressError(f"--budget (keep_fraction) must be in (0, 1], got {keep_fraction}")
    target = keep_fraction * sum(o * i for o, i in shapes)
    # t just above each normalised singular value prunes every value <= it; t = 0 prunes nothing
    values = torch.unique(torch.cat([s.double() for s in spectra]))
    cands = [0.0] + [float(torch.nextafter(v, torch.tensor(2.0, dtype=v.dtype))) for v in values if v < 1]
    if total_params(spectra, shapes, cands[-1], min_ratio) > target:
        best = total_params(spectra, shapes, cands[-1], min_ratio) / sum(o * i for o, i in shapes)
        raise CompressError(f"--budget (keep_fraction) {keep_fraction} cannot be met: even rank 1 everywhere "
                            f"keeps {best:.3f} of the parameters")
    lo, hi = 0, len(cands) - 1  # total(cands[hi]) <= target always holds
    while lo < hi:
        mid = (lo + hi) // 2
        if total_params(spectra, shapes, cands[mid], min_ratio) <= target:
            hi = mid
        else:
            lo = mid + 1
    return cands[lo]


@COMPRESSORS.register("welore")
class WeLore:
    """Registry entry: config, budget field, compression and the LRC-only trainable set."""

    Config = WeLoreConfig
    budget_field = "keep_fraction"
    budget_help = "fraction of the target matrices' parameters kept, e.g. 0.5"
    #: options that replace the budget when set (``--budget`` beside them is refused, not ignored)
    overrides_budget: tuple[str, ...] = ("threshold",)

    @staticmethod
    def compress(model: nn.Module, targets: list[str], cfg: WeLoreConfig, calib=None) -> list[dict]:
        svds, shapes = [], []
        for path in targets:
            w, _ = linear_weight(model, path)
            u, s, vh = torch.linalg.svd(w, full_matrices=False)  # (o, m), (m,), (m, i)
            svds.append((u, s, vh))
            shapes.append(tuple(w.shape))
        spectra = [normalised_spectrum(s) for _, s, _ in svds]
        if cfg.threshold is not None:
            if not 0 <= cfg.threshold <= 1:
                raise CompressError(f"threshold must be in [0, 1], got {cfg.threshold}")
            t = cfg.threshold
        else:
            t = solve_threshold(spectra, shapes, cfg.keep_fraction, cfg.min_ratio)
        rows = []
        for path, (u, s, vh), s_hat, (o, i) in zip(targets, svds, spectra, shapes):
            k = kept_rank(s_hat, t)
            stored, lrc = stored_params(k, o, i, cfg.min_ratio)
            mod = model.get_submodule(path)
            if lrc:
                root = s[:k].sqrt()
                second = u[:, :k] * root  # (o, k) · diag(√S_k)
                first = root[:, None] * vh[:k]  # diag(√S_k) · (k, i)
                bias = mod.bias.detach().float() if mod.bias is not None else None
                new = LowRankLinear.from_factors(second, first, bias).to(mod.weight.dtype)
                replace_module(model, path, new)
            elif k < min(o, i):
                with torch.no_grad():
                    mod.weight.copy_((u[:, :k] * s[:k]) @ vh[:k])  # (o, k) @ (k, i) -> (o, i)
            rel = float(s[k:].square().sum().sqrt() / s.square().sum().sqrt().clamp_min(1e-30))
            rows.append({"path": path, "shape": [o, i], "rank": k, "full_rank": min(o, i), "lrc": lrc,
                         "rel_error": rel, "params_before": o * i, "params_after": stored})
        for r in rows:
            r["threshold"] = t
        return rows

    @staticmethod
    def mark_trainable(model: nn.Module) -> list[nn.Parameter]:
        """The LRC factors (first and second weights), nothing else."""
        return [p for _, layer in compressed_layers(model) if isinstance(layer, LowRankLinear)
                for p in (layer.first.weight, layer.second.weight)]
