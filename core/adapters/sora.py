"""SoRA: sparse low-rank adaptation with a gate between A and B (Ding et al., EMNLP 2023,
arXiv 2311.11696, eq. 4-6).

    h = W0 x + s * B (g ⊙ (A x)),    s = alpha / r

A (r, in) kaiming, B (out, r) zero, gate g (r,) drawn N(0, 1) as in the official code
(``gate_init="normal"``) or ones (``"ones"``). B = 0 keeps the model equal to the base at init.
Sparsity comes from the optimizer, not from the layer: ``core.optim.sora_prox`` soft-thresholds g
after each step (the proximal step of eq. 6; or the official code's rule, ``prox_rule="code"``),
with the official sparsifying schedules; the config declares that hook and the gates' optimizer
group (no weight decay), and ``fit`` attaches both.
``prune(model)`` then drops the zero-gate ranks, folds g into A and returns a plain peft LoRA
(per-layer rank via ``rank_pattern``) with the same outputs, which ``PeftModel.from_pretrained``
loads.

Dimension letters: N batch*tokens, I in_features, O out_features, R rank, K kept rank.
Not covered: unfreezing LayerNorms as the official scripts do (use ``modules_to_save``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from adaptome.core.adapters import ADAPTERS
from adaptome.core.adapters.base import AdapterConfig, AdapterLayer, lora_factors


@ADAPTERS.register("sora")
@dataclass
class SoraConfig(AdapterConfig):
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    #: gate init: "normal" draws N(0, 1) as the official code does; "ones" starts every gate at 1. Under a total
    #: soft threshold S over a run, a gate that training hardly moves survives exactly when |g0| > S, so with
    #: "normal" the init can decide which ranks survive: on benchmarks/adapters' Pfam task (480 steps) it alone
    #: predicted 88-96 % of the gates' fates (results_quality_sora_init.md). "ones" leaves survival to training.
    gate_init: Literal["normal", "ones"] = "normal"
    init_lora_weights: Literal["default", "random_b"] = "default"
    #: "paper": proximal step g <- T_{eta*lambda}(g) (eq. 6); "code": the official code's L1 loss term
    #: lambda * sum|g| / (number of gates) plus a threshold xi = sparse_lambda_2 not scaled by the rate
    prox_rule: Literal["paper", "code"] = "paper"
    #: lambda: the L1 weight (the proximal threshold is eta * lambda under "paper")
    sparse_lambda: float = 1.0
    #: xi: the official SparseAdamW threshold (used by prox_rule "code" only)
    sparse_lambda_2: float = 3e-4
    #: sparsifying scheduler of lambda ("paper") or xi ("code"): none | linear | log_linear | exp_linear
    lambda_schedule: Literal["none", "linear", "log_linear", "exp_linear"] = "none"
    #: the scheduled value's last stage (None: no schedule)
    max_lambda: float | None = None
    #: number of stages, splitting the training steps evenly
    lambda_num: int = 1
    #: learning rate of the gates' optimizer group (None: the run's lr); the group has no weight decay
    gate_lr: float | None = None

    trains: ClassVar[str] = "A (r x in), B (out x r), gate g (r) per targeted linear; g sparsified by a proximal step"
    param_formula: ClassVar[str] = "r*(in+out) + r"
    paper: ClassVar[str] = "Ding et al. 2023, SoRA, arXiv 2311.11696, eq. 4-6"

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"r must be positive, got {self.r}")
        if self.prox_rule not in ("paper", "code"):
            raise ValueError(f"prox_rule must be 'paper' or 'code', got {self.prox_rule!r}")
        self.schedule()  # validates the schedule

    def schedule(self) -> list[float]:
        """The stage values of the scheduled quantity (lambda under "paper", xi under "code")."""
        from adaptome.core.optim.sora_prox import schedule_values

        start = self.sparse_lambda if self.prox_rule == "paper" else self.sparse_lambda_2
        return schedule_values(start, self.max_lambda, self.lambda_num, self.lambda_schedule)

    def training_hooks(self, model: nn.Module, adapter_name: str) -> list:
        from adaptome.core.optim.sora_prox import SoraProximalStep

        l1 = self.sparse_lambda if self.prox_rule == "code" else 0.0
        return [SoraProximalStep(self.schedule(), self.prox_rule, l1, adapter_name)]

    def param_groups(self, model: nn.Module, adapter_name: str) -> list[dict]:
        from adaptome.core.optim.sora_prox import sora_param_groups

        return sora_param_groups(model, self.gate_lr, adapter_name)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    def identity_at_init(self) -> bool:
        return self.init_lora_weights == "default"

    def expected_params(self, in_features: int, out_features: int, bias: bool) -> int:
        return self.r * (in_features + out_features) + self.r

    @classmethod
    def examples(cls) -> list[AdapterConfig]:
        return [cls(r=4, lora_alpha=8, init_lora_weights="random_b", target_modules="attention"),
                cls(r=3, lora_alpha=6, gate_init="ones", init_lora_weights="random_b")]


class SoraLinear(AdapterLayer):
    adapter_layer_names = ("sora_A", "sora_B", "sora_gate")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.sora_A = nn.ParameterDict()
        self.sora_B = nn.ParameterDict()
        self.sora_gate = nn.ParameterDict()
        self.sora_dropout = nn.ModuleDict()

    def update_layer(self, adapter_name: str, cfg: SoraConfig) -> None:
        a, b = lora_factors(cfg.r, self.in_features, self.out_features, cfg.init_lora_weights,
                            self.base_layer.weight.dtype)
        g = torch.randn(cfg.r) if cfg.gate_init == "normal" else torch.ones(cfg.r)  # (R,)
        self.sora_A[adapter_name], self.sora_B[adapter_name] = a, b
        self.sora_gate[adapter_name] = nn.Parameter(g.to(a.dtype))
        self.sora_dropout[adapter_name] = nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout > 0 else nn.Identity()

    def adapter_forward(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        a, b, g = self.sora_A[adapter_name], self.sora_B[adapter_name], self.sora_gate[adapter_name]
        x = self.sora_dropout[adapter_name](x.to(a.dtype))
        s = self.configs[adapter_name].scaling
        return ((x @ a.T) * g) @ b.T * s  # (N, I) @ (I, R) -> (N, R) * (R,) -> @ (R, O) -> (N, O)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        a, b, g = self.sora_A[adapter_name], self.sora_B[adapter_name], self.sora_gate[adapter_name]
        return (b * g) @ a * self.configs[adapter_name].scaling  # (O, R) * (R,) @ (R, I) -> (O, I)

    def lora_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Zero-gate ranks dropped, the kept gates folded into A: B_keep (g_keep ⊙ A_keep), K may be 0."""
        g = self.sora_gate[adapter_name].detach()  # (R,)
        keep = g != 0
        a = self.sora_A[adapter_name].detach()[keep] * g[keep, None]  # (K, I) * (K, 1) -> (K, I)
        b = self.sora_B[adapter_name].detach()[:, keep]  # (O, K)
        return b, a, self.configs[adapter_name].scaling


SoraConfig.layer_cls = SoraLinear


def sora_layers(model: nn.Module, adapter_name: str = "default") -> list[tuple[str, SoraLinear]]:
    return [(p, m) for p, m in model.named_modules() if isinstance(m, SoraLinear) and adapter_name in m.configs]


def gate_parameters(model: nn.Module, adapter_name: str = "default") -> list[nn.Parameter]:
    return [m.sora_gate[adapter_name] for _, m in sora_layers(model, adapter_name)]


def sparsity_report(model: nn.Module, adapter_name: str = "default") -> dict[str, int]:
    """Kept ranks (non-zero gates) of all layers, and of all ranks."""
    gates = gate_parameters(model, adapter_name)
    return {"kept": int(sum((g != 0).sum() for g in gates)), "total": int(sum(g.numel() for g in gates))}


@torch.no_grad()
def prune(model: nn.Module, adapter_name: str = "default"):
    """Drop zero-gate ranks and return a ``peft.PeftModel`` holding an equivalent plain LoRA.

    Per layer with K kept ranks: A' = g_keep ⊙ A_keep (K, I), B' = B_keep (O, K), and the peft
    scale alpha'/K is set to SoRA's s through ``alpha_pattern`` (alpha' = s K), so
    s' B' A' = s B diag(g) A exactly. Layers with no kept rank are left without an adapter. The
    SoRA layers are removed from ``model`` (it is consumed). Save with ``save_pretrained``.
    """
    import peft

    from adaptome.core.adapters.inject import unload

    layers = sora_layers(model, adapter_name)
    if not layers:
        raise ValueError(f"the model has no SoRA adapter named {adapter_name!r}")
    if any(m.merged for _, m in layers):
        raise ValueError("unmerge the SoRA adapter before pruning it")
    kept: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for path, m in layers:
        g = m.sora_gate[adapter_name]
        keep = g != 0
        if keep.any():
            a = m.sora_A[adapter_name][keep] * g[keep, None]  # (K, I) * (K, 1) -> (K, I)
            b = m.sora_B[adapter_name][:, keep]  # (O, K)
            kept[path] = (a.detach().clone(), b.detach().clone(), m.configs[adapter_name].scaling)
    if not kept:
        raise ValueError("every SoRA gate is zero: the pruned adapter would be empty")
    base = unload(model, merge=False)
    for p in base.parameters():
        p.requires_grad_(False)
    ranks = {re.escape(p): a.shape[0] for p, (a, _, _) in kept.items()}
    alphas = {re.escape(p): s * a.shape[0] for p, (a, _, s) in kept.items()}
    r0 = max(ranks.values())
    pcfg = peft.LoraConfig(r=r0, lora_alpha=float(r0),  # every layer is in alpha_pattern
                           target_modules=list(kept), rank_pattern=ranks, alpha_pattern=alphas,
                           init_lora_weights=False)
    pmodel = peft.get_peft_model(base, pcfg, adapter_name=adapter_name)
    for path, (a, b, _) in kept.items():
        layer = pmodel.base_model.model.get_submodule(path)
        layer.lora_A[adapter_name].weight.copy_(a)
        layer.lora_B[adapter_name].weight.copy_(b)
    return pmodel
