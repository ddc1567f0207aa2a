"""DSFormer: W ≈ D·S with a dense dictionary D and a semi-structured sparse S, straight-through trained.

Chand, Prabhu, Kumar, "DSFormer: Effective Compression of Text-Transformers by Dense-Sparse Weight
Factorization" (arXiv 2312.13211). Dimension letters: o out, i in, r dictionary size, k non-zeros.
W (o, i) ≈ D (o, r) · S (r, i), with EXACTLY k non-zeros in every column of S.

Axis and block choices (the paper's exact block pattern is not public code; these are ours):
columns of S, i.e. every input feature's weight column W[:, j] is a k-sparse combination of the r
dictionary atoms (columns of D) — the sparse-coding view of dictionary learning, where the signals
are the columns of W. A fixed k per column gives a regular pattern (every column costs k values and
k indices, no per-row imbalance) and the stored size o·r + k·i values (+ k·i indices of 8, 16 or 32 bits, the
narrowest integer type that holds r − 1) does not depend on which atoms are chosen. No blocks: the whole matrix
shares one dictionary.

Straight-Through Factoriser (STF): S is kept as a dense latent copy S̃; the forward pass uses
P_k(S̃), the top-k entries by magnitude of each column, written S = S̃ + (P_k(S̃) − S̃).detach(), so the
gradient of the loss w.r.t. S reaches S̃ unchanged (all entries, also those outside the current
support) and the support can move during training. ``mark_trainable`` trains D and S̃ on the task loss
(through ``fit``); the rest of the model stays frozen.

Initialisation (task-unaware, before STF; our choice, the paper's initialiser is not public): D from
the top-r SVD (D = U√Σ, random extra atoms when r > min(o, i)); S by orthogonal matching pursuit
(k atoms per column, values refit by least squares on the support); then ``init_iters`` rounds of
D = W Sᵀ(SSᵀ + εI)⁻¹ and matching pursuit again. S̃ starts equal to S (zero off the support).
Budget: ``keep_fraction`` of the dense parameters is met per matrix by r = ⌊(f·o·i − k·i)/o⌋. It counts stored
values; a budget whose values plus indices (at the width the file stores them) take no fewer bits than the dense
matrix (1.0, or just below) is refused, naming the matrix and both sizes: the lossy D·S would then be larger than
W too. The loaded model also keeps the dense latent S̃ (r × i) for straight-through training, so it holds r·(o + i)
parameters per matrix in memory.

Not covered: the paper's joint factorisation of all layers at once with a distillation loss, and
packed sparse storage kernels (the saved file holds values and uint8 / int16 / int32 indices, not ⌈log2 r⌉-bit
packed ones; ``report.json`` counts the stored width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from adaptome.core.compress import COMPRESSORS
from adaptome.core.compress.layers import (
    LAYER_KINDS,
    CompressedLayer,
    CompressError,
    compressed_layers,
    linear_weight,
    replace_module,
)


@dataclass
class DSFormerConfig:
    """Args:
        keep_fraction: stored values (D plus the non-zeros of S) over the dense count, per matrix.
        nnz_per_column: k, non-zeros in every column of S.
        init_iters: alternating least-squares rounds of the initialisation (0 = SVD only).
        seed: seed for the extra random atoms when r > min(o, i).
    """

    keep_fraction: float = 0.5
    nnz_per_column: int = 4
    init_iters: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.nnz_per_column < 1:
            raise CompressError(f"nnz_per_column must be >= 1 (non-zeros in every column of S), got "
                                f"{self.nnz_per_column}")
        if self.init_iters < 0:
            raise CompressError(f"init_iters must be >= 0, got {self.init_iters}")


def topk_mask(s: torch.Tensor, k: int) -> torch.Tensor:
    """A 0/1 mask of the k largest-|.| entries of every column of s (r, i)."""
    idx = s.abs().topk(k, dim=0).indices  # (k, i)
    return torch.zeros_like(s).scatter_(0, idx, 1.0)


def _refit_values(w: torch.Tensor, d: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Least-squares values of each column on its support: (k, i) for W (o, i), D (o, r), idx (k, i)."""
    sub = d[:, idx].permute(2, 0, 1)  # (o, k, i) -> (i, o, k)
    return torch.linalg.lstsq(sub, w.t().unsqueeze(-1)).solution.squeeze(-1).t()  # (i, k, 1) -> (k, i)


def sparse_code(w: torch.Tensor, d: torch.Tensor, k: int) -> torch.Tensor:
    """Orthogonal matching pursuit, all columns at once: S (r, i) with k non-zeros per column, W ≈ D·S."""
    r = d.shape[1]
    dn = d / d.norm(dim=0).clamp_min(1e-12)  # unit atoms, (o, r)
    chosen = torch.zeros(r, w.shape[1], dtype=torch.bool)
    idx = torch.empty(0, w.shape[1], dtype=torch.long)
    resid = w
    for _ in range(k):
        corr = (dn.t() @ resid).abs().masked_fill(chosen, -1.0)  # (r, o) @ (o, i) -> (r, i)
        pick = corr.argmax(dim=0)  # (i,)
        chosen[pick, torch.arange(w.shape[1])] = True
        idx = torch.cat([idx, pick[None]], 0)  # (t, i)
        vals = _refit_values(w, d, idx)  # (t, i)
        resid = w - torch.einsum("otj,tj->oj", d[:, idx], vals)  # (o, t, i) · (t, i) -> (o, i)
    return torch.zeros(r, w.shape[1]).scatter_(0, idx, vals)


def init_factors(w: torch.Tensor, r: int, k: int, iters: int,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """D (o, r) and the latent S̃ (r, i) for W (o, i); see the module docstring."""
    o, i = w.shape
    u, s, vh = torch.linalg.svd(w, full_matrices=False)  # (o, m), (m,), (m, i)
    m = min(r, s.numel())
    root = s[:m].sqrt()
    d = torch.cat([u[:, :m] * root, torch.randn(o, r - m, generator=gen) * float(s[-1].sqrt()) / math.sqrt(o)], 1)
    code = sparse_code(w, d, k)  # (r, i)
    for _ in range(iters):
        gram = code @ code.t() + 1e-6 * torch.eye(r)  # (r, i) @ (i, r) -> (r, r)
        d = torch.linalg.solve(gram, code @ w.t()).t()  # (r, r)⁻¹ (r, o) -> (o, r)
        code = sparse_code(w, d, k)
    return d, code


def _index_dtype(r: int) -> torch.dtype:
    """The narrowest integer type the file stores indices 0 .. r − 1 in (safetensors has no packed bits)."""
    if r <= 256:
        return torch.uint8
    return torch.int16 if r <= 32768 else torch.int32


def _index_bits(r: int) -> int:
    """Bits of one stored index into a dictionary of r atoms: the width of ``_index_dtype(r)`` (8, 16 or 32)."""
    return torch.empty(0, dtype=_index_dtype(r)).element_size() * 8


def _dictionary_size(path: str, shape: torch.Size, cfg: DSFormerConfig, value_bits: int = 32) -> int:
    """r for one (o, i) matrix under ``cfg.keep_fraction``; refused when it leaves fewer than k atoms, or when D, the
    k·i values and their indices take no fewer bits than the dense matrix (a budget near 1.0): D·S is lossy, so the
    result would be both worse and larger than the matrix it replaces."""
    o, i = shape
    k, f = cfg.nnz_per_column, cfg.keep_fraction
    r = int((f * o * i - k * i) // o)
    if r < k:
        raise CompressError(f"--budget (keep_fraction) {f} with nnz_per_column {k} leaves a "
                            f"dictionary of {r} atoms for {path} ({o}x{i}), fewer than k; raise the budget "
                            "or lower nnz_per_column")
    bits = (o * r + k * i) * value_bits + k * i * _index_bits(r)
    if bits >= o * i * value_bits:
        most = 1 - k * _index_bits(r) / (value_bits * o)  # budget where values plus indices reach the dense size
        raise CompressError(f"--budget (keep_fraction) {f}: {path} ({o}x{i}) would store D ({o}x{r}) and {k * i} "
                            f"values of S with {_index_bits(r)}-bit ({str(_index_dtype(r)).removeprefix('torch.')}) "
                            f"indices, {bits} bits, no fewer than its dense "
                            f"{o * i * value_bits} bits, and D·S with {k} non-zeros per column is lossy (it would also "
                            f"hold {r * (o + i)} parameters in memory, D and the dense latent S, vs {o * i}); "
                            f"use a budget below about {most:.3f}")
    return r


@LAYER_KINDS.register("dsformer")
class DSLinear(CompressedLayer):
    """y = x·(D·P_k(S̃))ᵀ + b, straight-through to S̃ (see the module docstring)."""

    kind = "dsformer"

    def __init__(self, d: torch.Tensor, latent: torch.Tensor, k: int, bias: torch.Tensor | None):
        super().__init__()
        self.k = k
        self.D = nn.Parameter(d.clone())  # (o, r)
        self.S_latent = nn.Parameter(latent.clone())  # (r, i)
        self.bias = nn.Parameter(bias.clone(), requires_grad=False) if bias is not None else None

    def sparse_s(self) -> torch.Tensor:
        """P_k(S̃) in the forward pass, identity in the backward pass (straight-through)."""
        lat = self.S_latent
        return lat + (lat * topk_mask(lat.detach(), self.k) - lat).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.sparse_s())  # (..., i) -> (..., r)
        return F.linear(h, self.D, self.bias)  # (..., r) -> (..., o)

    def meta(self) -> dict[str, Any]:
        o, r = self.D.shape
        return {"out_features": o, "rank": r, "in_features": self.S_latent.shape[1], "k": self.k,
                "bias": self.bias is not None}

    def to_tensors(self) -> dict[str, torch.Tensor]:
        lat = self.S_latent.detach()
        idx = lat.abs().topk(self.k, dim=0).indices  # (k, i)
        out = {"D": self.D.data, "S_values": lat.gather(0, idx), "S_index": idx.to(_index_dtype(lat.shape[0]))}
        if self.bias is not None:
            out["bias"] = self.bias.data
        return out

    def stored_params(self) -> int:
        return self.D.numel() + self.k * self.S_latent.shape[1]

    @classmethod
    def from_tensors(cls, meta: dict[str, Any], t: dict[str, torch.Tensor]) -> "DSLinear":
        lat = torch.zeros(meta["rank"], meta["in_features"], dtype=t["S_values"].dtype)
        lat.scatter_(0, t["S_index"].long(), t["S_values"])
        return cls(t["D"], lat, meta["k"], t.get("bias"))


@COMPRESSORS.register("dsformer")
class DSFormer:
    """Registry entry: config, budget field, compression and the STF trainable set (D and S̃)."""

    Config = DSFormerConfig
    budget_field = "keep_fraction"
    budget_help = "fraction of each matrix's parameters kept (D plus non-zeros of S), e.g. 0.5"
    #: options that replace the budget when set (``--budget`` beside them is refused, not ignored)
    overrides_budget: tuple[str, ...] = ()

    @staticmethod
    def compress(model: nn.Module, targets: list[str], cfg: DSFormerConfig, calib=None) -> list[dict]:
        if not 0 < cfg.keep_fraction <= 1:
            raise CompressError(f"--budget (keep_fraction) must be in (0, 1], got {cfg.keep_fraction}")
        k = cfg.nnz_per_column
        plan = [(path, *linear_weight(model, path)) for path in targets]
        ranks = [_dictionary_size(path, w.shape, cfg, model.get_submodule(path).weight.element_size() * 8)
                 for path, w, _ in plan]  # every matrix checked before any change, at the bits its values are kept in
        gen = torch.Generator().manual_seed(cfg.seed)
        rows = []
        for (path, w, b), r in zip(plan, ranks):
            o, i = w.shape
            d, lat = init_factors(w, r, k, cfg.init_iters, gen)
            layer = DSLinear(d, lat, k, b).to(model.get_submodule(path).weight.dtype)
            replace_module(model, path, layer)
            with torch.no_grad():
                approx = layer.D @ layer.sparse_s()  # (o, r) @ (r, i) -> (o, i)
            rows.append({"path": path, "shape": [o, i], "rank": r, "k": k, "nnz": k * i,
                         "extra_bits": k * i * _index_bits(r),
                         "rel_error": float((w - approx.float()).norm() / w.norm()),
                         "params_before": o * i, "params_after": o * r + k * i})
        return rows

    @staticmethod
    def mark_trainable(model: nn.Module) -> list[nn.Parameter]:
        """D and the dense latent S̃ of every DSFormer layer (the straight-through factoriser)."""
        return [p for _, layer in compressed_layers(model) if isinstance(layer, DSLinear)
                for p in (layer.D, layer.S_latent)]
