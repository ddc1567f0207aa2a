"""Native LoRA (Hu et al., 2021, arXiv 2106.09685, eq. 3): h = W0 x + (alpha / r) B A x.

This is the base the LoRA-family variants build on. Weights and computation follow peft's LoRA
exactly (same names ``lora_A`` / ``lora_B``, same order of operations: ``B(A(dropout(x))) * s``),
so the same A, B give the same outputs and gradients as peft; ``tests/core`` checks this. Use the
registered ``lora`` (peft backend) when the checkpoint must load in plain peft; use ``lora_native``
as the base of native variants or to stack with other native methods.

Init: A ~ kaiming-uniform(a=sqrt(5)), B = 0 (so the model equals the base at init);
``init_lora_weights="gaussian"`` draws A ~ N(0, 1/r) as peft does. ``use_rslora`` uses
s = alpha / sqrt(r) (Kalajdzievski, 2023).

Dimension letters: N batch*tokens, I in_features, O out_features, R rank.
Not covered: DoRA, PiSSA and other inits (use the peft backend), conv and embedding layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from adaptome.core.adapters import ADAPTERS
from adaptome.core.adapters.base import AdapterConfig, AdapterLayer, lora_factors


@ADAPTERS.register("lora_native")
@dataclass
class LoraNativeConfig(AdapterConfig):
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    use_rslora: bool = False
    init_lora_weights: Literal["default", "gaussian", "random_b"] = "default"

    backend: ClassVar[str] = "native"
    trains: ClassVar[str] = "A (r x in), B (out x r) per targeted linear"
    param_formula: ClassVar[str] = "r*(in+out)"
    paper: ClassVar[str] = "Hu et al. 2021, LoRA, arXiv 2106.09685, eq. 3"

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"r must be positive, got {self.r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def identity_at_init(self) -> bool:
        return self.init_lora_weights != "random_b"

    def expected_params(self, in_features: int, out_features: int, bias: bool) -> int:
        return self.r * (in_features + out_features)

    @classmethod
    def examples(cls) -> list[AdapterConfig]:
        # random_b: B != 0 so merge / save tests see a non-trivial update
        return [cls(r=4, lora_alpha=8, init_lora_weights="random_b", target_modules="attention"),
                cls(r=2, lora_alpha=2, use_rslora=True, init_lora_weights="random_b")]


class LoraNativeLinear(AdapterLayer):
    adapter_layer_names = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}

    def update_layer(self, adapter_name: str, cfg: LoraNativeConfig) -> None:
        self.lora_A[adapter_name] = nn.Linear(self.in_features, cfg.r, bias=False)
        self.lora_B[adapter_name] = nn.Linear(cfg.r, self.out_features, bias=False)
        self.lora_dropout[adapter_name] = nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout > 0 else nn.Identity()
        self.scaling[adapter_name] = cfg.scaling
        a, b = lora_factors(cfg.r, self.in_features, self.out_features, cfg.init_lora_weights, torch.float32)
        self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight = a, b
        dtype = self.base_layer.weight.dtype
        if dtype.is_floating_point and dtype != torch.float32:
            self.lora_A[adapter_name].to(dtype)
            self.lora_B[adapter_name].to(dtype)

    def adapter_forward(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        lora_A = self.lora_A[adapter_name]
        lora_B = self.lora_B[adapter_name]
        x = x.to(lora_A.weight.dtype)
        # (N, I) @ A^T -> (N, R) @ B^T -> (N, O)
        return lora_B(lora_A(self.lora_dropout[adapter_name](x))) * self.scaling[adapter_name]

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        a = self.lora_A[adapter_name].weight  # (R, I)
        b = self.lora_B[adapter_name].weight  # (O, R)
        return (b @ a) * self.scaling[adapter_name]  # (O, R) @ (R, I) -> (O, I)

    def lora_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        b = self.lora_B[adapter_name].weight.detach()  # (O, R)
        a = self.lora_A[adapter_name].weight.detach()  # (R, I)
        return b, a, self.scaling[adapter_name]


LoraNativeConfig.layer_cls = LoraNativeLinear
