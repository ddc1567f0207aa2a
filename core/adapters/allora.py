"""ALLoRA: LoRA with no dropout, no alpha/r scale, and a norm-adaptive learning rate (Huang &
Balestriero 2024, arXiv 2410.09692).

    h = W0 x + B A x            (no dropout, no scaling factor)

The adaptive rate is optimizer behaviour (``core.optim.allora``), not part of the layer; the config
declares it as a step hook (``training_hooks``) and ``fit`` attaches it. Init as LoRA:
A kaiming-uniform, B = 0 (identity at init); ``init_lora_weights="random_b"`` for tests.

An interpretation, labelled so in ``adaptome adapters list``: no official code exists and the exact
coefficient is not in any source we could reach (see ``core/optim/allora.py``). The defaults follow
the abstract's stated purpose, that B leaves zero faster: ``mode="update"`` (a per-row factor on the
gradient is normalised away by Adam) and ``eta=4`` (c = eta at a zero row; eta = 1 would only damp).

Dimension letters: N batch*tokens, I in_features, O out_features, R rank.
Not covered: the paper's per-sample gradient scaling (we scale the batch gradient, see optim/allora).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from adaptome.core.adapters import ADAPTERS
from adaptome.core.adapters.base import AdapterConfig, AdapterLayer, lora_factors


@ADAPTERS.register("allora")
@dataclass
class ALLoraConfig(AdapterConfig):
    r: int = 8
    init_lora_weights: Literal["default", "random_b"] = "default"
    #: the coefficient's bound: c = 1 / sqrt(1/eta^2 + ||row||^2) is eta at a zero row (B at init), so a
    #: row leaving zero moves eta times faster than plain LoRA's; eta = 1 gives no boost, only damping
    eta: float = 4.0
    #: the norm the coefficient reads: "row" (one per rank component of A, per output unit of B) or "tensor"
    norm: Literal["row", "tensor"] = "row"
    #: "update": scale each row's optimizer update by c (survives Adam's normalisation); "grad": scale the
    #: gradient, the abstract's wording, which Adam largely normalises away
    mode: Literal["update", "grad"] = "update"

    trains: ClassVar[str] = "A (r x in), B (out x r); no dropout, no scale; norm-adaptive rate in the optimizer"
    param_formula: ClassVar[str] = "r*(in+out)"
    paper: ClassVar[str] = "Huang & Balestriero 2024, ALLoRA, arXiv 2410.09692"
    note: ClassVar[str] = ("interpretation: the exact coefficient is in no reachable source; we use "
                           "c = 1/sqrt(1/eta^2 + ||row||^2) on the update")

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"r must be positive, got {self.r}")
        if self.eta <= 0:
            raise ValueError(f"eta must be positive, got {self.eta}")

    def training_hooks(self, model: nn.Module, adapter_name: str) -> list:
        from adaptome.core.optim.allora import ALLoRARate

        return [ALLoRARate(allora_parameters(model, adapter_name), self.eta, self.norm, self.mode)]

    def identity_at_init(self) -> bool:
        return self.init_lora_weights == "default"

    def expected_params(self, in_features: int, out_features: int, bias: bool) -> int:
        return self.r * (in_features + out_features)

    @classmethod
    def examples(cls) -> list[AdapterConfig]:
        return [cls(r=4, init_lora_weights="random_b", target_modules="attention"),
                cls(r=2, init_lora_weights="random_b")]


class ALLoraLinear(AdapterLayer):
    adapter_layer_names = ("allora_A", "allora_B")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.allora_A = nn.ParameterDict()
        self.allora_B = nn.ParameterDict()

    def update_layer(self, adapter_name: str, cfg: ALLoraConfig) -> None:
        a, b = lora_factors(cfg.r, self.in_features, self.out_features, cfg.init_lora_weights,
                            self.base_layer.weight.dtype)
        self.allora_A[adapter_name], self.allora_B[adapter_name] = a, b

    def adapter_forward(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self.allora_A[adapter_name], self.allora_B[adapter_name]
        return (x.to(a.dtype) @ a.T) @ b.T  # (N, I) @ (I, R) -> (N, R) @ (R, O) -> (N, O)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        return self.allora_B[adapter_name] @ self.allora_A[adapter_name]  # (O, R) @ (R, I) -> (O, I)

    def lora_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """B, A with scale 1 (ALLoRA has no alpha / r)."""
        return self.allora_B[adapter_name].detach(), self.allora_A[adapter_name].detach(), 1.0  # (O, R), (R, I)


ALLoraConfig.layer_cls = ALLoraLinear


def allora_parameters(model: nn.Module, adapter_name: str | None = None) -> list[nn.Parameter]:
    """The trainable ALLoRA matrices of ``adapter_name`` (every adapter when None)."""
    return [p for m in model.modules() if isinstance(m, ALLoraLinear)
            for holder in (m.allora_A, m.allora_B) for name, p in holder.items()
            if p.requires_grad and (adapter_name is None or name == adapter_name)]
