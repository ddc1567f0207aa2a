"""LoRA-SB: LoRA-XS's B R A with all three factors from an approximate first full-fine-tuning step
(Ponkshe, Singhal et al. 2024, arXiv 2411.19557, Sec. 4 and Alg. 1).

    G_hat = -eta * sign(sum_batches dL/dW0)     (the first Adam step, as the official code does;
                                                 ``use_sign=False`` gives the SGD step -eta * mean grad)
    G_hat ≈ U_r S_r V_r^T,  B = U_r,  R = S_r / s,  A = V_r^T   so   s B R A = rank-r truncation of G_hat

Only R trains (r^2 per layer). Until ``init_lorasb`` runs, the layer is LoRA-XS's (SVD of W0 with
R = 0: the base model). After it, the model is W0 + the truncated approximate update, NOT the base
model (as in the paper). ``fit`` runs it (``data_init``, declared on the config) before the first step
of a fresh run, on the first ``init_samples`` training examples with the run's loss, and with eta the
first step's learning rate (the official lr / (warmup_ratio * total_steps) is the first warmup step's
rate) unless ``step_size`` is given; a resumed run skips it (the checkpoint holds the factors), and so
does a run on an adapter whose factors are no longer LoRA-XS's (a loaded, trained LoRA-SB adapter).

Dimension letters: O out_features, I in_features, R rank.
Not covered: bf16 randomized SVD (we use exact float32 SVD), distributed gradient accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import nn

from adaptome.core.adapters import ADAPTERS
from adaptome.core.adapters.base import AdapterConfig
from adaptome.core.adapters.loraxs import LoraXSConfig, LoraXSLinear, truncated_svd


@ADAPTERS.register("lorasb")
@dataclass
class LoraSBConfig(LoraXSConfig):
    #: examples read from the start of the training set for the gradient (the official 50)
    init_samples: int = 50
    #: batch size of those examples (the official ``eg_bs`` 3)
    init_batch_size: int = 3
    #: eta of G_hat = -eta sign(sum grad); None: the run's first-step learning rate (the official
    #: lr / (warmup_ratio * total_steps) is the first warmup step's rate)
    step_size: float | None = None
    #: True: the sign (first Adam step, as the official code); False: the mean gradient (an SGD step)
    use_sign: bool = True

    needs_data_init: ClassVar[bool] = True
    trains: ClassVar[str] = "R (r x r) between frozen B, A from the SVD of an approximate first full-FT update"
    paper: ClassVar[str] = "Ponkshe et al. 2024, LoRA-SB, arXiv 2411.19557, Alg. 1"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init_samples < 1 or self.init_batch_size < 1:
            raise ValueError("init_samples and init_batch_size must be >= 1")

    @classmethod
    def examples(cls) -> list[AdapterConfig]:
        return [cls(r=3, init_r="normal", r_init_std=0.1, target_modules="mlp")]

    def init_batches(self) -> tuple[int, int]:
        return self.init_samples, self.init_batch_size

    def data_init(self, model: nn.Module, adapter_name: str, batches: Iterable[Any],
                  loss_fn: Callable[[nn.Module, Any], torch.Tensor], lr: float) -> None:
        """The gradient init, unless the adapter already holds other factors than LoRA-XS's SVD of W0 (a
        loaded or already initialised adapter, whose training must not be thrown away)."""
        fresh = [at_loraxs_init(m, adapter_name) for m in _lorasb_layers(model, adapter_name).values()]
        if fresh and not any(fresh):
            return
        if not all(fresh):
            raise ValueError(f"LoRA-SB adapter {adapter_name!r}: some layers hold initialised factors and some "
                             "do not; load the whole adapter or inject a fresh one")
        init_lorasb(model, batches, loss_fn, self.step_size if self.step_size is not None else lr,
                    self.use_sign, adapter_name)


LoraSBConfig.layer_cls = LoraXSLinear


def _lorasb_layers(model: nn.Module, adapter_name: str) -> dict[str, LoraXSLinear]:
    return {p: m for p, m in model.named_modules()
            if isinstance(m, LoraXSLinear) and isinstance(m.configs.get(adapter_name), LoraSBConfig)}


@torch.no_grad()
def at_loraxs_init(layer: LoraXSLinear, adapter_name: str) -> bool:
    """Whether the layer's frozen A is still LoRA-XS's S_r V_r^T of W0 (the state before the gradient init)."""
    _, s, vh = truncated_svd(layer.base_layer.weight, layer.configs[adapter_name].r)
    a = layer.loraxs_A[adapter_name].float()
    return bool(torch.allclose(a.abs(), (s[:, None] * vh).to(a.device).abs(), rtol=1e-3, atol=1e-5 * float(s[0])))


def approximate_update(model: nn.Module, paths: list[str], batches: Iterable[Any],
                       loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
                       step_size: float = 1e-3, use_sign: bool = True) -> dict[str, torch.Tensor]:
    """G_hat (O, I) for each ``path`` (a plain ``nn.Linear``) of ``model`` from ``batches``.

    The weights' ``requires_grad`` and gradients are restored afterwards.
    """
    loss_fn = loss_fn or (lambda m, b: m(**b).loss)
    weights = {p: model.get_submodule(p).weight for p in paths}
    saved = {p: (w.requires_grad, w.grad) for p, w in weights.items()}
    acc = {p: torch.zeros_like(w, dtype=torch.float32) for p, w in weights.items()}
    n = 0
    try:
        for w in weights.values():
            w.requires_grad_(True)
            w.grad = None
        for batch in batches:
            loss_fn(model, batch).backward()
            n += 1
            for p, w in weights.items():
                acc[p] += w.grad.float()
                w.grad = None
    finally:
        for p, w in weights.items():
            w.requires_grad_(saved[p][0])
            w.grad = saved[p][1]
    if n == 0:
        raise ValueError("LoRA-SB init needs at least one batch")
    return {p: -step_size * (torch.sign(g) if use_sign else g / n) for p, g in acc.items()}


def init_lorasb(model: nn.Module, batches: Iterable[Any],
                loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None, step_size: float = 1e-3,
                use_sign: bool = True, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Set B, R, A of every LoRA-SB layer of ``adapter_name`` from the approximate first update of the
    base model on ``batches``; returns that update per layer path (O, I)."""
    from adaptome.core.adapters.inject import disable_adapters

    layers = _lorasb_layers(model, adapter_name)
    if not layers:
        raise ValueError(f"the model has no LoRA-SB adapter named {adapter_name!r}")
    if any(m.merged for m in layers.values()):
        raise ValueError("unmerge the adapter before re-initialising it")
    was_training = model.training
    with disable_adapters(model):  # gradients at W0
        updates = approximate_update(model, [f"{p}.base_layer" for p in layers], batches, loss_fn,
                                     step_size, use_sign)
    model.train(was_training)
    out = {}
    for p, layer in layers.items():
        g = updates[f"{p}.base_layer"]
        cfg = layer.configs[adapter_name]
        u, s, vh = truncated_svd(g, cfg.r)  # (O, R), (R,), (R, I)
        layer.set_factors(adapter_name, u, torch.diag(s) / cfg.scaling, vh)
        out[p] = g
    return out
