"""Layers that replace an ``nn.Linear`` after compression, and the helpers every method shares.

Dimension letters: ``i`` in_features, ``o`` out_features, ``r`` rank (inner dimension), ``N`` the
flattened batch.

* ``CompressedLayer``: the small contract every compressed layer keeps so that ``io.py`` can save
  and load it without knowing the method: ``kind`` (its name in ``LAYER_KINDS``), ``meta()`` (JSON
  shapes and options), ``to_tensors()`` (what is stored; may be smaller than the module's state, e.g.
  only the projected non-zeros of DSFormer's S) and ``from_tensors(meta, tensors)``;
  ``stored_params()`` counts the stored values (index overhead is reported separately by the method).
* ``LowRankLinear``: ``y = second(first(x))`` with ``first`` (r, i) and ``second`` (o, r) + bias: the
  factor pair of WeLore (U_k√S_k, √S_k V_kᵀ) and of the low-rank transformer (Winata et al. 2020).
* ``replace_module``, ``linear_weight``: in-place surgery on a model by dotted path.

Not covered: convolutions, embeddings and HF ``Conv1D`` (GPT-2) layers; only ``nn.Linear`` is replaced.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adaptome.core.errors import AdaptomeError
from adaptome.core.registry import Registry

#: layer kind name -> CompressedLayer subclass (filled by the method modules; used when loading)
LAYER_KINDS: Registry = Registry("compressed layer kind")


class CompressError(AdaptomeError, ValueError):
    """A budget or option that cannot be met; the message names the option."""


class CompressedLayer(nn.Module):
    """Contract of a layer written by a compression method (see the module docstring)."""

    kind = "?"

    def meta(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def from_tensors(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "CompressedLayer":
        raise NotImplementedError

    def stored_params(self) -> int:
        return sum(int(t.numel()) for t in self.to_tensors().values())


@LAYER_KINDS.register("low_rank")
class LowRankLinear(CompressedLayer):
    """``x -> second(first(x))``: first (r, i) without bias, second (o, r) keeping the Linear's bias."""

    kind = "low_rank"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)  # weight (r, i)
        self.second = nn.Linear(rank, out_features, bias=bias)  # weight (o, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))  # (..., i) -> (..., r) -> (..., o)

    def weight_product(self) -> torch.Tensor:
        return self.second.weight @ self.first.weight  # (o, r) @ (r, i) -> (o, i)

    @classmethod
    def from_factors(cls, second_w: torch.Tensor, first_w: torch.Tensor, bias: torch.Tensor | None) -> "LowRankLinear":
        rank, in_f = first_w.shape
        layer = cls(in_f, second_w.shape[0], rank, bias=bias is not None)
        with torch.no_grad():
            layer.first.weight.copy_(first_w)
            layer.second.weight.copy_(second_w)
            if bias is not None:
                layer.second.bias.copy_(bias)
        return layer

    def meta(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bias": self.second.bias is not None}

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {"first": self.first.weight.data, "second": self.second.weight.data}
        if self.second.bias is not None:
            out["bias"] = self.second.bias.data
        return out

    @classmethod
    def from_tensors(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "LowRankLinear":
        return cls.from_factors(tensors["second"], tensors["first"], tensors.get("bias"))


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at dotted ``path`` (same device and dtype as the module it replaces)."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, name)
    ref = next(old.parameters(), None)
    if ref is not None:
        new = new.to(device=ref.device)
    setattr(parent, name, new)


def linear_weight(model: nn.Module, path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (o, i) as float32, bias or None) of the ``nn.Linear`` at ``path``."""
    mod = model.get_submodule(path)
    if not isinstance(mod, nn.Linear):
        raise CompressError(f"{path}: is a {type(mod).__name__}, not an nn.Linear (already compressed?)")
    w = mod.weight.detach().float()
    b = mod.bias.detach().float() if mod.bias is not None else None
    return w, b


def compressed_layers(model: nn.Module):
    """(path, layer) of every CompressedLayer in the model, outermost only."""
    for path, mod in model.named_modules():
        if isinstance(mod, CompressedLayer):
            yield path, mod


def freeze_all_but(model: nn.Module, keep: list[nn.Parameter]) -> int:
    """Set ``requires_grad`` on exactly the parameters in ``keep``; returns their element count."""
    ids = {id(p) for p in keep}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return sum(p.numel() for p in keep)
