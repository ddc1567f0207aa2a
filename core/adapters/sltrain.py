"""SLTrain: sparse plus low-rank layers for pretraining (Han et al., NeurIPS 2024, arXiv 2406.02214).

Dimension letters: T tokens, I in_features, O out_features, R rank, Z the support size (nnz).

A targeted ``nn.Linear`` is replaced outright by ``SLTrainLinear`` with weight (paper Eq. 3)::

    W = s · B A + S,    A (R, I), B (O, R), S sparse (O, I) on a fixed random support of Z flat indices

There is no dense W0: the layer holds A, B, the Z values of S, their flat row-major indices (a buffer)
and the bias, all trainable except the indices. Init as the reference ``SpLoRaLinear``: A kaiming-uniform
(a=√5), B = 0 (so W = S at step 0), S values U(-1/√I, 1/√I), bias U(-1/√O, 1/√O), the support the
first ``floor(delta·O·I)`` entries of a random permutation, sorted. s = lora_alpha / R, or tanh(p)
with a learned scalar p initialised at 1 (``trainable_scaling``).

Memory: ``_SparseLowRankLinear`` rebuilds W inside forward and again inside backward, and keeps only
the inputs (x) and the factors: no dense W or dense dW outlives one layer's matmul. dS is dW gathered
at the support, computed by blocks of rows (dW[rows] = dYᵀ[rows] X, then gathered), so at most
``block_rows`` × I of dW exists at a time; dA and dB come from the factors without forming dW.

Not an adapter (why it is not in ``ADAPTERS``): the adapter contract (``base.py``) adapts a frozen base
weight W0, can unload back to it and trains only its own tensors; SLTrain deletes W0 and trains the
whole model from scratch (embeddings, norms and head stay dense and trainable), so "unload restores
the base" and "the base stays bit-identical" do not apply. It is registered in ``PRETRAIN_METHODS``
(``from_scratch.py``) instead; ``apply_method`` there lets ``adaptome train`` / ``adaptome protein
pretrain`` accept its name in ``adapter.method``, and ``adaptome adapters list`` shows it in a second table.

Seeding differs from the reference (which draws supports from the global RNG): each layer's support
and init come from a private generator seeded with ``seed + layer number``, so a support is reproducible
without touching the global RNG. ``lora_dropout`` (accepted but unused by the reference) is absent.
A rank (with the support) that gives a layer no fewer parameters than its dense weight is warned about,
naming the layer and both counts (the method then saves nothing).
Not covered: the reference's C++ extension, quantized factors, per-layer optimizer updates for SLTrain
(use the ``galore`` optimizer's layerwise mode for that pattern), fine-tuning on top of a W0.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from adaptome.core.adapters.from_scratch import ATTR, PRETRAIN_METHODS


def dense_weight(a: torch.Tensor, b: torch.Tensor, values: torch.Tensor, index: torch.Tensor,
                 scale: torch.Tensor) -> torch.Tensor:
    """W = scale · B A + S as a dense (O, I) tensor."""
    w = (b * scale) @ a  # (O, R) @ (R, I) -> (O, I)
    w.view(-1).index_add_(0, index, values.to(w.dtype))  # S: add the Z values at their flat indices
    return w


class _SparseLowRankLinear(torch.autograd.Function):
    """y = x Wᵀ + bias with W = s·B A + S rebuilt on the fly (forward and backward)."""

    @staticmethod
    def forward(ctx, x, a, b, values, index, scale, bias, block_rows):
        w = dense_weight(a, b, values, index, scale)  # (O, I), freed when forward returns
        ctx.save_for_backward(x, a, b, values, index, scale)
        ctx.block_rows, ctx.has_bias = block_rows, bias is not None
        return F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_out):
        x, a, b, values, index, scale = ctx.saved_tensors
        dt = a.dtype
        x2 = x.reshape(-1, x.shape[-1]).to(dt)  # (T, I)
        g2 = grad_out.reshape(-1, grad_out.shape[-1]).to(dt)  # (T, O)
        grad_x = None
        if ctx.needs_input_grad[0]:
            w = dense_weight(a, b, values, index, scale)  # (O, I), freed at return
            grad_x = (g2 @ w).reshape(x.shape).to(x.dtype)  # (T, O) @ (O, I) -> (T, I)
            del w
        xa = x2 @ a.t()  # (T, I) @ (I, R) -> (T, R)
        gb = g2 @ b  # (T, O) @ (O, R) -> (T, R)
        grad_a = scale * (gb.t() @ x2)  # dA = s Bᵀ dW = s (dY B)ᵀ X: (R, T) @ (T, I) -> (R, I)
        grad_b = scale * (g2.t() @ xa)  # dB = s dW Aᵀ = s dYᵀ (X Aᵀ): (O, T) @ (T, R) -> (O, R)
        grad_scale = (gb * xa).sum().reshape(scale.shape) if ctx.needs_input_grad[5] else None  # <dW, B A>
        grad_values = _support_grad(g2, x2, index, ctx.block_rows) if ctx.needs_input_grad[3] else None
        grad_bias = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[6] else None
        return grad_x, grad_a, grad_b, grad_values, None, grad_scale, grad_bias, None


def _support_grad(g2: torch.Tensor, x2: torch.Tensor, index: torch.Tensor, block_rows: int) -> torch.Tensor:
    """dW = dYᵀ X gathered at the (sorted) flat ``index``, one block of ``block_rows`` rows of dW at a time."""
    n_in, n_out = x2.shape[1], g2.shape[1]
    out = torch.empty(index.numel(), dtype=g2.dtype, device=g2.device)
    bounds = torch.searchsorted(index, torch.arange(0, n_out + block_rows, block_rows, device=index.device)
                                .clamp_(max=n_out) * n_in).tolist()
    for k, r0 in enumerate(range(0, n_out, block_rows)):
        lo, hi = bounds[k], bounds[k + 1]
        if lo == hi:
            continue
        block = g2[:, r0:r0 + block_rows].t() @ x2  # (rows, T) @ (T, I) -> (rows, I)
        out[lo:hi] = block.view(-1)[index[lo:hi] - r0 * n_in]
    return out


class SLTrainLinear(nn.Module):
    """A linear layer with weight s·B A + S (no dense weight); see the module docstring."""

    def __init__(self, in_features: int, out_features: int, rank: int, lora_alpha: float, delta: float,
                 bias: bool = True, trainable_scaling: bool = False, seed: int = 0, block_rows: int = 256,
                 device=None, dtype=None):
        super().__init__()
        if not 0.0 <= delta <= 1.0:
            raise ValueError(f"sltrain delta must be in [0, 1], got {delta}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.lora_alpha, self.delta, self.block_rows = lora_alpha, delta, block_rows
        g = torch.Generator().manual_seed(seed)
        fk = dict(dtype=dtype or torch.float32)
        a = torch.empty(rank, in_features, **fk)
        bound_a = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=√5) on fan_in = I gives U(-1/√I, 1/√I)
        a.uniform_(-bound_a, bound_a, generator=g)
        self.lora_A = nn.Parameter(a.to(device))  # (R, I)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, **fk))  # (O, R)
        nnz = int(math.floor(delta * out_features * in_features))
        index = torch.randperm(out_features * in_features, generator=g)[:nnz].sort().values
        self.register_buffer("sparse_index", index.to(device))  # (Z,) flat row-major indices into (O, I)
        vals = torch.empty(nnz, **fk).uniform_(-1 / math.sqrt(in_features), 1 / math.sqrt(in_features), generator=g)
        self.sparse_value = nn.Parameter(vals.to(device))  # (Z,)
        if bias:
            bb = 1 / math.sqrt(out_features)
            self.bias = nn.Parameter(torch.empty(out_features, **fk).uniform_(-bb, bb, generator=g).to(device))
        else:
            self.register_parameter("bias", None)
        if trainable_scaling:
            self.scaling_p = nn.Parameter(torch.ones((), device=device, **fk))
        else:
            self.register_parameter("scaling_p", None)

    def scale(self) -> torch.Tensor:
        if self.scaling_p is not None:
            return torch.tanh(self.scaling_p)
        return torch.tensor(self.lora_alpha / self.rank, dtype=self.lora_A.dtype, device=self.lora_A.device)

    @property
    def nnz(self) -> int:
        return self.sparse_index.numel()

    def dense_weight(self) -> torch.Tensor:
        """W (O, I) materialized (for export or checks; training never keeps it)."""
        return dense_weight(self.lora_A, self.lora_B, self.sparse_value, self.sparse_index, self.scale())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SparseLowRankLinear.apply(x, self.lora_A, self.lora_B, self.sparse_value, self.sparse_index,
                                          self.scale(), self.bias, self.block_rows)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, nnz={self.nnz}, "
                f"trainable_scaling={self.scaling_p is not None}")


@PRETRAIN_METHODS.register("sltrain")
@dataclass
class SLTrainConfig:
    """Options of SLTrain (defaults: the reference scripts for LLaMA-60M; the argparse default delta is 0.01).

    Args:
      rank: R of B A.
      lora_alpha: s = lora_alpha / rank (unless trainable_scaling).
      delta: support density; each layer keeps floor(delta · out · in) entries of S.
      trainable_scaling: s = tanh(p), p a learned scalar initialised at 1.
      target_modules: the linears to replace (as adapters' targets; default: LLaMA attention + MLP).
      exclude_modules: names or a regex removed from the targets.
      seed: base seed of the supports and inits (layer k uses seed + k).
      block_rows: rows of dW formed at a time when gathering dS.
    """

    rank: int = 128
    lora_alpha: float = 32.0
    delta: float = 0.03
    trainable_scaling: bool = False
    target_modules: list[str] | str = "attention+mlp"
    exclude_modules: list[str] | str | None = None
    seed: int = 0
    block_rows: int = 256

    method: ClassVar[str] = "sltrain"
    trains: ClassVar[str] = "the whole model; targeted linears as A, B, the S values and bias (no dense W)"
    param_formula: ClassVar[str] = "r*(in+out) + floor(delta*in*out) + out"
    paper: ClassVar[str] = "arXiv 2406.02214"

    def expected_params(self, in_features: int, out_features: int, bias: bool) -> int:
        """Trainable parameters of one replaced linear."""
        return (self.rank * (in_features + out_features) + int(math.floor(self.delta * in_features * out_features))
                + (out_features if bias else 0) + (1 if self.trainable_scaling else 0))

    def materialize(self, model: nn.Module) -> nn.Module:
        """``materialize(model)``: the dense equivalent, for ``from_scratch.save_materialized``."""
        return materialize(model)

    def _warn_if_not_smaller(self, model: nn.Module, paths: list[str]) -> None:
        """Warn when a replaced layer's factors and support (r·(in+out) + floor(delta·in·out)) are no fewer than its
        dense in·out weights: at a rank at or above min(out, in) B A alone is full rank, and the layer then trains
        and stores more than the dense layer it replaces (its memory saving needs fewer)."""
        big = []
        for path in paths:
            lin = model.get_submodule(path)
            i, o = lin.in_features, lin.out_features
            ours = self.rank * (i + o) + int(math.floor(self.delta * i * o))
            if ours >= i * o:
                big.append((path, o, i, ours))
        if big:
            path, o, i, ours = big[0]
            nnz = ours - self.rank * (i + o)
            r_max = -(-(i * o - nnz) // (i + o)) - 1  # the largest r with r·(i+o) + nnz < i·o
            fix = (f"lower adapter.options.rank (to at most {r_max} there) or delta" if r_max >= 1 else
                   f"delta {self.delta} alone gives the layer {nnz} of its {i * o} parameters; lower delta")
            warnings.warn(f"sltrain rank {self.rank}, delta {self.delta}: {len(big)} of the {len(paths)} replaced "
                          f"layers get no fewer parameters than their dense weight (e.g. {path} ({o}x{i}): "
                          f"{self.rank}*({i}+{o}) + {nnz} sparse = {ours} vs {o * i} dense), so they train and store "
                          f"more than full-rank training would; {fix}", UserWarning, stacklevel=3)

    def apply(self, model: nn.Module) -> nn.Module:
        """Replace the targeted ``nn.Linear`` modules of ``model`` in place; every parameter trains."""
        from adaptome.core.adapters.targets import resolve_targets

        paths = resolve_targets(model, self.target_modules, self.exclude_modules)
        self._warn_if_not_smaller(model, paths)
        for k, path in enumerate(paths):
            lin = model.get_submodule(path)
            new = SLTrainLinear(lin.in_features, lin.out_features, self.rank,
                                self.lora_alpha, self.delta, bias=lin.bias is not None,
                                trainable_scaling=self.trainable_scaling, seed=self.seed + k,
                                block_rows=self.block_rows, device=lin.weight.device, dtype=lin.weight.dtype)
            parent_path, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, child, new)
        for p in model.parameters():
            p.requires_grad_(True)
        setattr(model, ATTR, {"sltrain": self})
        return model


def materialize(model: nn.Module) -> nn.Module:
    """``model`` with every ``SLTrainLinear`` replaced in place by a plain ``nn.Linear`` holding its dense weight
    W = s · B A + S (``dense_weight``) and its bias, and the from-scratch marker removed: the same function (up to
    float rounding of the sum), saved and loaded as an ordinary transformers checkpoint (``save_pretrained``,
    ``from_pretrained``). The dense layers no longer hold the sparse + low-rank structure."""
    paths = [name for name, m in model.named_modules() if isinstance(m, SLTrainLinear)]
    for path in paths:
        old = model.get_submodule(path)
        with torch.no_grad():
            weight = old.dense_weight()  # (O, I)
            lin = nn.Linear(old.in_features, old.out_features, bias=old.bias is not None,
                            device=weight.device, dtype=weight.dtype)
            lin.weight.copy_(weight)
            if old.bias is not None:
                lin.bias.copy_(old.bias)
        parent_path, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, child, lin)
    if hasattr(model, ATTR):
        delattr(model, ATTR)
    return model
