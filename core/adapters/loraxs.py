"""LoRA-XS: a trainable r x r core between frozen SVD factors of W0 (Bałazy et al. 2024,
arXiv 2405.17604, eq. 2-3).

    h = W0 x + s B R A x,    W0 ≈ U_r S_r V_r^T,   B = U_r (out, r),   A = S_r V_r^T (r, in)

Only R (r, r) trains: r^2 parameters per layer, independent of the layer width. The singular
values sit in A as in the official code (sklearn TruncatedSVD of W0^T); the scripts force
lora_alpha = r, so s = 1 by default. R = 0 (``init_r="zeros"``) makes the model exactly the base at
init; the official code draws R ~ N(0, 1e-5^2) (``init_r="normal"``, ``r_init_std``), which is only
approximately the base. The frozen A and B are saved with the adapter (SVD results are not
bit-identical across devices and libraries, so they are not recomputed at load).

LoRA-SB (``lorasb.py``) uses this layer with a different init.

Dimension letters: N batch*tokens, I in_features, O out_features, R rank.
Not covered: randomized SVD (we use an exact ``torch.linalg.svd`` in float32), quantized W0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from adaptome.core.adapters import ADAPTERS
from adaptome.core.adapters.base import AdapterConfig, AdapterLayer, AdapterOptionError


@ADAPTERS.register("loraxs")
@dataclass
class LoraXSConfig(AdapterConfig):
    r: int = 8
    #: None: alpha = r (s = 1, as the official scripts force)
    lora_alpha: float | None = None
    init_r: Literal["zeros", "normal"] = "zeros"
    r_init_std: float = 1e-5

    trains: ClassVar[str] = "R (r x r) between frozen SVD factors B = U_r, A = S_r V_r^T of W0"
    param_formula: ClassVar[str] = "r*r"
    paper: ClassVar[str] = "Bałazy et al. 2024, LoRA-XS, arXiv 2405.17604, eq. 2-3"

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"r must be positive, got {self.r}")

    @property
    def scaling(self) -> float:
        return 1.0 if self.lora_alpha is None else self.lora_alpha / self.r

    def identity_at_init(self) -> bool:
        return self.init_r == "zeros"

    def expected_params(self, in_features: int, out_features: int, bias: bool) -> int:
        return self.r * self.r

    @classmethod
    def examples(cls) -> list[AdapterConfig]:
        return [cls(r=4, init_r="normal", r_init_std=0.1, target_modules="attention"),
                cls(r=2, lora_alpha=4, init_r="normal", r_init_std=0.1)]


def truncated_svd(w: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U_r (O, R), S_r (R,), V_r^T (R, I)) of ``w`` (O, I), computed in float32."""
    u, s, vh = torch.linalg.svd(w.detach().float(), full_matrices=False)  # (O, M), (M,), (M, I)
    if r > s.numel():
        raise AdapterOptionError(f"rank {r} exceeds min(out, in) = {s.numel()} of its {tuple(w.shape)} weight; "
                                 "lower adapter.options.r")
    return u[:, :r], s[:r], vh[:r]


class LoraXSLinear(AdapterLayer):
    adapter_layer_names = ("loraxs_R",)
    other_param_names = ("loraxs_A", "loraxs_B")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.loraxs_A = nn.ParameterDict()
        self.loraxs_B = nn.ParameterDict()
        self.loraxs_R = nn.ParameterDict()

    def update_layer(self, adapter_name: str, cfg: LoraXSConfig) -> None:
        u, s, vh = truncated_svd(self.base_layer.weight, cfg.r)
        a = s[:, None] * vh  # (R, 1) * (R, I) -> (R, I)
        rr = torch.zeros(cfg.r, cfg.r)
        if cfg.init_r == "normal":
            rr.normal_(std=cfg.r_init_std)
        dtype = self.base_layer.weight.dtype
        dtype = dtype if dtype.is_floating_point else torch.float32
        self.loraxs_A[adapter_name] = nn.Parameter(a.to(dtype), requires_grad=False)
        self.loraxs_B[adapter_name] = nn.Parameter(u.contiguous().to(dtype), requires_grad=False)
        self.loraxs_R[adapter_name] = nn.Parameter(rr.to(dtype))

    def set_factors(self, adapter_name: str, b: torch.Tensor, r: torch.Tensor, a: torch.Tensor) -> None:
        """Overwrite B (O, R), R (R, R), A (R, I) (the LoRA-SB init)."""
        with torch.no_grad():
            for holder, value in ((self.loraxs_B, b), (self.loraxs_R, r), (self.loraxs_A, a)):
                holder[adapter_name].copy_(value.to(holder[adapter_name].dtype))

    def adapter_forward(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        a, b, rr = self.loraxs_A[adapter_name], self.loraxs_B[adapter_name], self.loraxs_R[adapter_name]
        s = self.configs[adapter_name].scaling
        # (N, I) @ (I, R) -> (N, R) @ (R, R)^T -> (N, R) @ (R, O) -> (N, O)
        return ((x.to(a.dtype) @ a.T) @ rr.T) @ b.T * s

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        a, b, rr = self.loraxs_A[adapter_name], self.loraxs_B[adapter_name], self.loraxs_R[adapter_name]
        return b @ rr @ a * self.configs[adapter_name].scaling  # (O, R) @ (R, R) @ (R, I) -> (O, I)

    def lora_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """B R A as (B R) A: the trained core folded into the frozen B."""
        a, b, rr = (t[adapter_name].detach() for t in (self.loraxs_A, self.loraxs_B, self.loraxs_R))
        return b @ rr, a, self.configs[adapter_name].scaling  # (O, R) @ (R, R) -> (O, R); A (R, I)


LoraXSConfig.layer_cls = LoraXSLinear
