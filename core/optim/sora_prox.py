"""SoRA's optimizer side (Ding et al. 2023, arXiv 2311.11696, eq. 6 and Sec. 3.3): a step hook.

Two rules, chosen by ``SoraConfig.prox_rule``:

* ``"paper"`` (the default): proximal gradient descent on the L1-regularised loss, eq. 6. After the
  ordinary optimizer step the gates are soft-thresholded,

      g <- T_xi(g),   T_xi(v) = sign(v) * max(|v| - xi, 0),   xi = eta_g * lambda

  with eta_g the gates' learning rate of the step just taken (read before the step: ``fit`` steps the
  LR scheduler between the optimizer step and this hook, so the rate read afterwards is the next
  step's, which is 0 at the end of a decay-to-0 schedule and would leave Adam's last step unthresholded)
  and lambda = ``sparse_lambda``. No L1 term is added
  to the loss (the proximal step is the L1 term's update).
* ``"code"``: the official code's effective rule. The trainer adds the L1 term
  lambda * sum|g| / (total number of gates) to the loss (here: its gradient, lambda * sign(g) / N, is
  added to the gates' gradients before clipping, which is the same update; the logged loss is the
  task loss), and ``SparseAdamW`` soft-thresholds with xi = ``sparse_lambda_2`` after the AdamW step,
  not multiplied by the learning rate.

The sparsifying scheduler (``lambda_schedule``) raises the scheduled value (lambda under "paper",
xi under "code", as the official code schedules ``sparse_lambda_2``) in ``lambda_num`` stages from
its start value to ``max_lambda``, on the official grids: ``linear`` linspace(l0, lmax, n),
``log_linear`` log(linspace(e^l0, e^lmax, n)), ``exp_linear`` exp(linspace(log l0, log lmax, n))
(geometric; needs l0 > 0). The official code retrains every stage for a fixed number of epochs;
here the stages split ``max_steps`` evenly.

``SoraConfig.training_hooks`` and ``SoraConfig.param_groups`` (gates without weight decay) declare
these; ``fit`` attaches them. Not covered: the official second optimizer for the gates with its own
warmup (the gate group has its own ``gate_lr`` but shares the run's schedule).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adaptome.core.adapters.sora import gate_parameters

SCHEDULES = ("none", "linear", "log_linear", "exp_linear")


def soft_threshold(v: torch.Tensor, xi: float) -> torch.Tensor:
    return torch.sign(v) * torch.clamp(v.abs() - xi, min=0.0)


def schedule_values(start: float, end: float | None, num: int, kind: str) -> list[float]:
    """The official grid of ``num`` stage values from ``start`` to ``end``."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown lambda schedule {kind!r}; known: {', '.join(SCHEDULES)}")
    if kind == "none" or end is None or num <= 1:
        return [start]
    ts = [i / (num - 1) for i in range(num)]
    if kind == "linear":
        return [start + (end - start) * t for t in ts]
    if kind == "log_linear":  # log(linspace(e^l0, e^lmax))
        return [math.log(math.exp(start) + (math.exp(end) - math.exp(start)) * t) for t in ts]
    if start <= 0 or end <= 0:
        raise ValueError(f"exp_linear (geometric) needs positive start and end, got {start}, {end}")
    return [math.exp(math.log(start) + (math.log(end) - math.log(start)) * t) for t in ts]


def value_at(step: int, max_steps: int, values: list[float]) -> float:
    """The stage value for ``step`` (0-based): the stages split ``max_steps`` evenly."""
    stage = min(len(values) - 1, step * len(values) // max(max_steps, 1))
    return values[stage]


def l1_penalty(model: nn.Module, weight: float, adapter_name: str = "default") -> torch.Tensor:
    """``weight * sum|g| / (number of gates)`` over every SoRA layer: the official trainer's term."""
    gates = gate_parameters(model, adapter_name)
    return weight * sum(g.abs().sum() for g in gates) / sum(g.numel() for g in gates)


def sora_param_groups(model: nn.Module, gate_lr: float | None = None, adapter_name: str = "default") -> list[dict]:
    """The gates' optimizer group: no weight decay (and ``gate_lr`` when given)."""
    group: dict = {"params": gate_parameters(model, adapter_name), "weight_decay": 0.0}
    if gate_lr is not None:
        group["lr"] = gate_lr
    return [group]


class SoraProximalStep:
    """Step hook: the L1 gradient (rule "code") before, the soft threshold after the optimizer step."""

    def __init__(self, values: list[float], rule: str = "paper", l1_weight: float = 0.0,
                 adapter_name: str = "default"):
        if rule not in ("paper", "code"):
            raise ValueError(f"prox_rule must be 'paper' or 'code', got {rule!r}")
        self.values, self.rule, self.l1_weight, self.adapter_name = list(values), rule, l1_weight, adapter_name
        self.last_xi = 0.0
        self._rates: dict[int, float] = {}  # id(gate) -> the gate's rate for the step being taken

    def _lr_of(self, optimizer, p: nn.Parameter) -> float:
        for group in optimizer.param_groups:
            if any(q is p for q in group["params"]):
                return float(group["lr"])
        raise ValueError("a SoRA gate is not in the optimizer; build it from the gates' param group")

    @torch.no_grad()
    def before_optimizer_step(self, state) -> None:
        gates = gate_parameters(state.model, self.adapter_name)
        if self.rule == "paper":  # the rates this optimizer step uses (the scheduler moves them right after it)
            self._rates = {id(g): self._lr_of(state.optimizer, g) for g in gates}
        if self.rule != "code" or self.l1_weight == 0:
            return
        n = sum(g.numel() for g in gates)
        for g in gates:  # d/dg of l1_weight * sum|g| / n
            if g.grad is not None:
                g.grad.add_(torch.sign(g) * (self.l1_weight / n))

    @torch.no_grad()
    def after_optimizer_step(self, state) -> None:
        v = value_at(state.step - 1, state.max_steps, self.values)
        for g in gate_parameters(state.model, self.adapter_name):
            if self.rule == "paper":
                rate = self._rates.get(id(g))
                xi = v * (rate if rate is not None else self._lr_of(state.optimizer, g))
            else:
                xi = v
            g.copy_(soft_threshold(g, xi))
        self.last_xi = v
