"""SoRA's optimizer side (Ding et al. 2023, arXiv 2311.11696, eq. 6 and Sec. 3.3).

The proximal gate step after the ordinary optimizer step:

    g <- T_xi(g),   T_xi(v) = sign(v) * max(|v| - xi, 0)          (soft threshold)

with xi = lambda * eta in the paper (proximal SGD, ``scale_by_lr=True``, eta the gates' current
learning rate) or xi = ``sparse_lambda_2`` without the learning rate in the official
``SparseAdamW`` (``scale_by_lr=False``). The official trainer also adds ``lambda * mean|g|`` to the
loss: ``l1_penalty``. The sparsifying scheduler raises xi in stages from ``xi0`` to ``xi_max``
over ``num_stages`` equal slices of training, along a ``linear``, ``log_linear`` (fast then slow:
xi0 + (xi_max - xi0) log(1 + (e - 1) t)) or ``exp_linear`` (slow then fast:
xi0 + (xi_max - xi0) (e^t - 1) / (e - 1)) ramp of t = stage / (num_stages - 1). The shapes of the
two non-linear ramps are our reading of the official option names; the official code retrains
every stage for a fixed number of epochs, here the stages simply split ``max_steps``.

``sora_param_groups`` puts the gates in their own group without weight decay.
Not covered: the official second optimizer for the gates with its own warmup (use the param group).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adaptome.core.adapters.sora import gate_parameters


def soft_threshold(v: torch.Tensor, xi: float) -> torch.Tensor:
    return torch.sign(v) * torch.clamp(v.abs() - xi, min=0.0)


def threshold_at(step: int, max_steps: int, xi0: float, xi_max: float | None = None, num_stages: int = 1,
                 kind: str = "linear") -> float:
    """The scheduled threshold xi for ``step`` (0-based) of ``max_steps``."""
    if xi_max is None or num_stages <= 1:
        return xi0
    stage = min(num_stages - 1, step * num_stages // max(max_steps, 1))
    t = stage / (num_stages - 1)
    if kind == "linear":
        f = t
    elif kind == "log_linear":
        f = math.log1p((math.e - 1) * t)
    elif kind == "exp_linear":
        f = (math.exp(t) - 1) / (math.e - 1)
    else:
        raise ValueError(f"unknown schedule {kind!r}; known: linear, log_linear, exp_linear")
    return xi0 + (xi_max - xi0) * f


def l1_penalty(model: nn.Module, weight: float, adapter_name: str = "default") -> torch.Tensor:
    """``weight * sum_layers mean|g|``, the official trainer's extra loss term."""
    gates = gate_parameters(model, adapter_name)
    return weight * sum(g.abs().mean() for g in gates)


def sora_param_groups(model: nn.Module, lr: float, weight_decay: float, gate_lr: float | None = None,
                      adapter_name: str = "default") -> list[dict]:
    gates = {id(p) for p in gate_parameters(model, adapter_name)}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in gates]
    return [{"params": rest, "lr": lr, "weight_decay": weight_decay},
            {"params": [p for p in model.parameters() if id(p) in gates], "lr": gate_lr or lr, "weight_decay": 0.0}]


class SoraProximalStep:
    """Step hook: soft-threshold every gate after the optimizer step (``after_optimizer_step``)."""

    def __init__(self, xi0: float, xi_max: float | None = None, num_stages: int = 1, schedule: str = "linear",
                 scale_by_lr: bool = False, adapter_name: str = "default"):
        threshold_at(0, 1, xi0, xi_max, num_stages, schedule)  # validate the schedule name
        self.xi0, self.xi_max, self.num_stages, self.schedule = xi0, xi_max, num_stages, schedule
        self.scale_by_lr, self.adapter_name = scale_by_lr, adapter_name
        self.last_xi = 0.0

    def _lr_of(self, optimizer, p: nn.Parameter) -> float:
        for group in optimizer.param_groups:
            if any(q is p for q in group["params"]):
                return float(group["lr"])
        raise ValueError("a SoRA gate is not in the optimizer; build it with sora_param_groups")

    @torch.no_grad()
    def after_optimizer_step(self, state) -> None:
        xi = threshold_at(state.step - 1, state.max_steps, self.xi0, self.xi_max, self.num_stages, self.schedule)
        for g in gate_parameters(state.model, self.adapter_name):
            xi_g = xi * self._lr_of(state.optimizer, g) if self.scale_by_lr else xi
            g.copy_(soft_threshold(g, xi_g))
        self.last_xi = xi
