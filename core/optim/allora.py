"""ALLoRA's norm-adaptive learning rate (Huang & Balestriero 2024, arXiv 2410.09692, Sec. 4).
An interpretation: see below.

The paper scales "the per sample and per parameter gradients with a coefficient inversely
proportional to parameters' l2 norm". No official code exists; the exact coefficient is not in the
abstract, so we use the form noted in the project's method reference (marked unverified there):

    g_i <- c_i * g_i,    c_i = 1 / sqrt(1 / eta^2 + ||theta_i||^2)

for each row theta_i of every ALLoRA matrix (A: one row per rank component, B: one row per output
unit; ``norm="tensor"`` uses the whole matrix's norm). c is finite at theta = 0 (c = eta, the
largest rate, which is what lets B leave 0 quickly), decreases monotonically with the norm, and
with all norms equal it is a uniform rescale of the learning rate.

``mode="grad"`` scales gradients before the optimizer (the paper's wording); with Adam a per-row
constant factor is largely normalised away, so ``mode="update"`` instead scales the optimizer's
update of each row by c_i (a per-row adaptive learning rate that survives Adam); it is the default
of ``ALLoraConfig``, with eta = 4, so that a zero row (B at init) moves 4x faster than under plain
LoRA (the abstract's purpose; eta = 1 would only damp). ``ALLoraConfig.training_hooks`` declares
``ALLoRARate`` as a training-loop hook and ``fit`` attaches it; ``attach_allora(optimizer, params,
eta)`` is the same as optimizer pre/post step hooks for code that does not train through ``fit``.

Not covered: per-sample gradients (we scale the mini-batch gradient).
"""

from __future__ import annotations

import torch
from torch import nn


def allora_coefficient(p: torch.Tensor, eta: float, norm: str = "row") -> torch.Tensor:
    """c (rows, 1) for ``norm="row"`` or a scalar tensor for ``"tensor"``."""
    sq = p.detach().float().pow(2)
    sq = sq.sum(dim=-1, keepdim=True) if norm == "row" else sq.sum()  # (rows, 1) or ()
    return torch.rsqrt(1.0 / eta ** 2 + sq)


class ALLoRARate:
    """Applies the coefficient around an optimizer step; usable as a loop hook or an optimizer hook."""

    def __init__(self, params: list[nn.Parameter], eta: float = 1.0, norm: str = "row", mode: str = "grad"):
        if norm not in ("row", "tensor") or mode not in ("grad", "update"):
            raise ValueError(f"norm must be row|tensor and mode grad|update, got {norm!r}, {mode!r}")
        self.params, self.eta, self.norm, self.mode = list(params), eta, norm, mode
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def before_optimizer_step(self, state=None) -> None:
        self._saved = []
        for p in self.params:
            if p.grad is None:
                continue
            c = allora_coefficient(p, self.eta, self.norm).to(p.dtype)
            if self.mode == "grad":
                p.grad.mul_(c)
            else:
                self._saved.append((p, p.detach().clone(), c))

    @torch.no_grad()
    def after_optimizer_step(self, state=None) -> None:
        for p, old, c in self._saved:
            p.copy_(old + c * (p - old))
        self._saved = []


def attach_allora(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], eta: float = 1.0,
                  norm: str = "row", mode: str = "grad") -> ALLoRARate:
    """Register ALLoRA on ``optimizer`` (step pre/post hooks); returns the rate object."""
    rate = ALLoRARate(params, eta, norm, mode)
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: rate.before_optimizer_step())
    optimizer.register_step_post_hook(lambda opt, args, kwargs: rate.after_optimizer_step())
    return rate


def make_allora_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0, eta: float = 1.0,
                          norm: str = "row", mode: str = "grad") -> torch.optim.Optimizer:
    """AdamW over the trainable parameters with ALLoRA attached to the ALLoRA matrices (outside ``fit``:
    ``fit`` attaches the config's hook itself, so do not pass this optimizer to ``fit`` too)."""
    from adaptome.core.adapters.allora import allora_parameters

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    attach_allora(opt, allora_parameters(model), eta, norm, mode)
    return opt
