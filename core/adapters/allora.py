"""ALLoRA: LoRA with no dropout, no alpha/r scale, and a norm-adaptive learning rate (Huang &
Balestriero 2024, arXiv 2410.09692).

    h = W0 x + B A x            (no dropout, no scaling factor)

The adaptive rate is optimizer behaviour (``core.optim.allora``), not part of the layer. Init as
LoRA: A kaiming-uniform, B = 0 (identity at init); ``init_lora_weights="random_b"`` for tests.

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

    method: ClassVar[str] = "allora"
    trains: ClassVar[str] = "A (r x in), B (out x r); no dropout, no scale; norm-adaptive rate in the optimizer"
    param_formula: ClassVar[str] = "r*(in+out)"
    paper: ClassVar[str] = "Huang & Balestriero 2024, ALLoRA, arXiv 2410.09692"

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"r must be positive, got {self.r}")

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


def allora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, ALLoraLinear)
            for holder in (m.allora_A, m.allora_B) for p in holder.values() if p.requires_grad]
