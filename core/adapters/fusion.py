"""AdapterFusion over bottleneck adapters (Pfeiffer et al. 2021, arXiv 2005.00247, Sec. 3.2, eq. 1-3).

At every FFN block that holds the fused adapters, with z the input the adapters read (LN of the
residual stream on post-LN blocks, the stream itself on pre-LN ones) and delta_n(z) the output of
adapter n (bottleneck.py):

  q = Q z,   k_n = K delta_n(z),   v_n = V delta_n(z)                  (Q, K, V: d x d, with bias)
  a_n = softmax_n(q . k_n / T)                                          (eq. 2)
  stream <- stream + sum_n a_n v_n                                      (eq. 3)

V starts as the identity and Q, K as N(0, 0.02) (as AdapterHub), so at init the fusion is close to
the plain average of the adapters' deltas (exactly that average when Q or K is zero: tested).
Adapters active above the fused ones (a task adapter) then run stacked on the fused stream.
``fuse_adapters`` freezes the fused adapters and trains the fusion weights (and the adapters
listed in ``top``); ``fusion_state_dict`` / ``load_fusion_state_dict`` save and restore them.

Dimension letters: N fused adapters, B batch, T tokens, D hidden.
Not covered: fusing LoRA or other weight-update methods (fusion mixes block outputs, so only
bottleneck adapters), AdapterHub's temperature annealing and value-matrix regularisation, fusing
the invertible embedding blocks of ``seq_bn_inv`` (they run in sequence, as stacked adapters do).
A later ``set_adapter`` / ``freeze_adapters`` on the model re-freezes the fusion weights; call
``fuse_adapters`` last.
"""

from __future__ import annotations

import torch
from torch import nn

from adaptome.core.adapters.bottleneck import BottleneckLayer

FUSION_ATTR = "adapter_fusion"  # the module BottleneckLayer._adapt looks for


class AdapterFusion(nn.Module):
    """Attention over the outputs of ``names`` at one block (module docstring)."""

    def __init__(self, d: int, names: list[str], temperature: float = 1.0):
        super().__init__()
        if len(names) < 2:
            raise ValueError(f"fusion needs at least two adapters, got {names}")
        self.names = list(names)
        self.temperature = temperature
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        for lin in (self.query, self.key):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        nn.init.eye_(self.value.weight)
        nn.init.zeros_(self.value.bias)

    def forward(self, z: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """``z`` (B, T, D), ``deltas`` (N, B, T, D) -> the fused update (B, T, D)."""
        q = self.query(z)  # (B, T, D)
        k = self.key(deltas)  # (N, B, T, D)
        v = self.value(deltas)  # (N, B, T, D)
        scores = torch.einsum("btd,nbtd->btn", q, k) / self.temperature  # (B, T, N)
        attn = torch.softmax(scores, dim=-1)  # (B, T, N)
        return torch.einsum("btn,nbtd->btd", attn, v)  # (B, T, D)


def _blocks(model: nn.Module, names: list[str]) -> list[tuple[str, BottleneckLayer]]:
    return [(p, m) for p, m in model.named_modules() if isinstance(m, BottleneckLayer)
            and m.role in ("post_ln", "pre_ln") and all(n in m.bn_down for n in names)]


def fuse_adapters(model: nn.Module, names: list[str], top: list[str] | None = None,
                  temperature: float = 1.0) -> list[str]:
    """Fuse the bottleneck adapters ``names`` at every block holding all of them, stack ``top``
    above the fusion, freeze ``names`` and train the fusion and ``top``. Returns the block paths."""
    from adaptome.core.adapters.inject import adapter_configs, freeze_adapters, set_adapter

    top = list(top or [])
    known = adapter_configs(model)
    for n in names + top:
        if n not in known:
            raise ValueError(f"unknown adapter {n!r}; the model has {sorted(known)}")
    for n in names:
        if known[n].layer_cls is not BottleneckLayer:
            raise ValueError(f"adapter {n!r} is {known[n].method}; fusion mixes bottleneck adapters "
                             "(seq_bn, seq_bn_inv) only")
    blocks = _blocks(model, names)
    if not blocks:
        raise ValueError(f"no block holds all of {names}")
    set_adapter(model, names + top)
    freeze_adapters(model, names)
    freeze_adapters(model, top, frozen=False)
    for _, layer in blocks:
        layer.composition, layer.weights = "stack", None
        if FUSION_ATTR not in layer._modules:
            ref = layer.bn_up[names[0]].weight
            fusion = AdapterFusion(layer.in_features, names, temperature).to(ref.device, ref.dtype)
            layer.add_module(FUSION_ATTR, fusion)
        getattr(layer, FUSION_ATTR).requires_grad_(True)
    return [p for p, _ in blocks]


def unfuse(model: nn.Module) -> None:
    """Remove every fusion module (the adapters then run stacked again)."""
    for _, m in model.named_modules():
        if isinstance(m, BottleneckLayer) and FUSION_ATTR in m._modules:
            del m._modules[FUSION_ATTR]


def fusion_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The fusion weights, keyed ``<block path>.adapter_fusion.<query|key|value>.<weight|bias>``."""
    out = {}
    for p, m in model.named_modules():
        if isinstance(m, BottleneckLayer) and FUSION_ATTR in m._modules:
            for k, v in m._modules[FUSION_ATTR].state_dict().items():
                out[f"{p}.{FUSION_ATTR}.{k}"] = v.detach().clone()
    return out


@torch.no_grad()
def load_fusion_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Copy ``state`` into the model's fusion modules (after ``fuse_adapters``); keys must match."""
    own = dict(model.named_parameters())
    missing = sorted(set(fusion_state_dict(model)) - set(state))
    unexpected = sorted(set(state) - set(fusion_state_dict(model)))
    if missing or unexpected:
        raise ValueError(f"{source}: does not fit this model's fusion: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
        own[k].copy_(v.to(own[k].dtype))
