"""LaMDA: a frozen projection A, a trainable r x r core S and a progressively frozen B (Azizi et
al., EMNLP 2024 Findings, arXiv 2406.12832, Sec. 3), and LaMDA++'s per-layer ranks.

    h = W0 x + s B S A x,    s = lora_alpha / r

``init="svd"`` (the paper): from W0 ≈ U S0 V^T, A = V_r^T (frozen, "PMA"), B = U_r (trainable, then
frozen column by column in the order of the singular values, "PMB"), S = 0, so the model equals the
base at init and S gets the first gradients. ``init="code"`` (the official code): A kaiming and
frozen, B = 0, S with nn.Linear's default kaiming init. The progressive freezing of B is a step hook,
``core.optim.lamda_freeze.LamdaFreezeB`` (declared by ``training_hooks``, attached by ``fit``), that
really keeps frozen columns fixed (the official
trainer only zeroes their gradients, so AdamW momentum and weight decay still move them).

LaMDA++ (missing from the official code): ``lamda_pp_ranks`` gives each targeted layer a rank from
the normalized singular-value energy e_k = sigma_k^2 / sum_j sigma_j^2 of its W0 under a total rank
budget: every layer gets ``min_rank``, and the remaining budget goes to the largest e_k over all
layers (greedy water-filling over the normalized spectra; our reading of "normalized spectrum
energy"). Pass the result as ``rank_pattern`` (path -> rank); ``after_inject`` resizes those layers.

Dimension letters: N batch*tokens, I in_features, O out_features, R rank.
Not covered: LaMDA's bf16 core; ranks per layer type other than through ``rank_pattern``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from adaptome.core.adapters import ADAPTERS
from adaptome.core.adapters.base import AdapterConfig, AdapterLayer, AdapterOptionError


@ADAPTERS.register("lamda")
@dataclass
class LamdaConfig(AdapterConfig):
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    init: Literal["svd", "code"] = "svd"
    #: per-layer ranks (LaMDA++): module path (or path suffix) -> rank
    rank_pattern: dict[str, int] = field(default_factory=dict)
    #: tests: start S at N(0, 0.1) so the update is non-zero
    random_core: bool = False
    #: B's columns are frozen within this fraction of the training steps (the official 0.3)
    freeze_fraction: float = 0.3
    #: "paper": every column frozen by freeze_fraction * T; "code": the official count floor(t / (0.3 T))
    freeze_schedule: Literal["paper", "code"] = "paper"

    trains: ClassVar[str] = "core S (r x r) and B (out x r, frozen progressively by a step hook); A frozen"
    param_formula: ClassVar[str] = "r*r + out*r (until B is frozen)"
    paper: ClassVar[str] = "Azizi et al. 2024, LaMDA, arXiv 2406.12832, Sec. 3"

    def __post_init__(self) -> None:
        if self.r <= 0 or any(k <= 0 for k in self.rank_pattern.values()):
            raise ValueError("r and every rank_pattern rank must be positive")
        if not 0 < self.freeze_fraction <= 1:
            raise ValueError(f"freeze_fraction must be in (0, 1], got {self.freeze_fraction}")
        if self.freeze_schedule not in ("paper", "code"):
            raise ValueError(f"freeze_schedule must be 'paper' or 'code', got {self.freeze_schedule!r}")

    def training_hooks(self, model: nn.Module, adapter_name: str) -> list:
        from adaptome.core.optim.lamda_freeze import LamdaFreezeB

        return [LamdaFreezeB(self.freeze_fraction, self.freeze_schedule, adapter_name)]

    def rank_for(self, path: str) -> int:
        for key, k in self.rank_pattern.items():
            if path == key or path.endswith("." + key):
                return int(k)
        return self.r

    def identity_at_init(self) -> bool:
        return not self.random_core

    def expected_params(self, in_features: int, out_features: int, bias: bool) -> int:
        return self.r * self.r + out_features * self.r

    @classmethod
    def examples(cls) -> list[AdapterConfig]:
        return [cls(r=4, random_core=True, target_modules="attention"),
                cls(r=2, lora_alpha=4, init="code", random_core=True)]

    def after_inject(self, model: nn.Module, adapter_name: str) -> None:
        if not self.rank_pattern:
            return
        paths = [p for p, m in model.named_modules()
                 if isinstance(m, LamdaLinear) and m.configs.get(adapter_name) is self]
        unmatched = [k for k in self.rank_pattern if not any(p == k or p.endswith("." + k) for p in paths)]
        if unmatched:  # a misspelt key would otherwise leave that layer at rank r silently
            raise AdapterOptionError(f"adapter.options.rank_pattern: {unmatched[0]!r} names no targeted layer "
                                     f"(targeted layers are named like {paths[0] if paths else 'none'})")
        for path, layer in model.named_modules():
            if isinstance(layer, LamdaLinear) and layer.configs.get(adapter_name) is self:
                k = self.rank_for(path)
                if k != layer.rank[adapter_name]:
                    try:
                        layer.resize(adapter_name, k)
                    except AdapterOptionError as e:
                        raise AdapterOptionError(f"{path}: {e}") from None


class LamdaLinear(AdapterLayer):
    adapter_layer_names = ("lamda_S", "lamda_B")
    other_param_names = ("lamda_A",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.lamda_A = nn.ParameterDict()
        self.lamda_S = nn.ParameterDict()
        self.lamda_B = nn.ParameterDict()
        self.lamda_dropout = nn.ModuleDict()
        self.rank: dict[str, int] = {}

    def update_layer(self, adapter_name: str, cfg: LamdaConfig, rank: int | None = None) -> None:
        r = rank or cfg.r
        if rank is None and cfg.rank_pattern:  # a placeholder until after_inject sets the layer's rank
            r = min(r, self.in_features, self.out_features)
        if cfg.init == "svd":
            u, _, vh = torch.linalg.svd(self.base_layer.weight.detach().float(), full_matrices=False)
            if r > vh.shape[0]:
                raise AdapterOptionError(f"rank {r} exceeds min(out, in) = {vh.shape[0]} of its "
                                         f"{tuple(self.base_layer.weight.shape)} weight (init 'svd'); lower "
                                         "adapter.options.r or its rank_pattern entry")
            a, b, core = vh[:r].clone(), u[:, :r].clone(), torch.zeros(r, r)  # (R, I), (O, R), (R, R)
        else:
            a, b, core = torch.empty(r, self.in_features), torch.zeros(self.out_features, r), torch.empty(r, r)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            nn.init.kaiming_uniform_(core, a=math.sqrt(5))
        if cfg.random_core:
            core = torch.randn(r, r) * 0.1
            if cfg.init == "code":
                b = torch.randn(self.out_features, r) * 0.1
        dtype = self.base_layer.weight.dtype
        dtype = dtype if dtype.is_floating_point else torch.float32
        self.lamda_A[adapter_name] = nn.Parameter(a.to(dtype), requires_grad=False)
        self.lamda_S[adapter_name] = nn.Parameter(core.to(dtype))
        self.lamda_B[adapter_name] = nn.Parameter(b.to(dtype))
        self.lamda_dropout[adapter_name] = nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout > 0 else nn.Identity()
        self.rank[adapter_name] = r

    def resize(self, adapter_name: str, rank: int) -> None:
        self.update_layer(adapter_name, self.configs[adapter_name], rank)
        self._match_device(adapter_name)

    def scaling(self, adapter_name: str) -> float:
        return self.configs[adapter_name].lora_alpha / self.rank[adapter_name]

    def adapter_forward(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        a, core, b = self.lamda_A[adapter_name], self.lamda_S[adapter_name], self.lamda_B[adapter_name]
        x = self.lamda_dropout[adapter_name](x.to(a.dtype))
        # (N, I) @ (I, R) -> (N, R) @ (R, R)^T -> (N, R) @ (R, O) -> (N, O)
        return ((x @ a.T) @ core.T) @ b.T * self.scaling(adapter_name)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        a, core, b = self.lamda_A[adapter_name], self.lamda_S[adapter_name], self.lamda_B[adapter_name]
        return b @ core @ a * self.scaling(adapter_name)  # (O, R) @ (R, R) @ (R, I) -> (O, I)

    def lora_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """B S A as (B S) A at this layer's rank (LaMDA++ ranks differ per layer)."""
        a, core, b = (t[adapter_name].detach() for t in (self.lamda_A, self.lamda_S, self.lamda_B))
        return b @ core, a, self.scaling(adapter_name)  # (O, R) @ (R, R) -> (O, R); A (R, I)


LamdaConfig.layer_cls = LamdaLinear


def lamda_layers(model: nn.Module, adapter_name: str = "default") -> list[tuple[str, LamdaLinear]]:
    return [(p, m) for p, m in model.named_modules() if isinstance(m, LamdaLinear) and adapter_name in m.configs]


@torch.no_grad()
def lamda_pp_ranks(model: nn.Module, target_modules: list[str] | str, total_rank: int, min_rank: int = 1,
                   exclude_modules: list[str] | str | None = None) -> dict[str, int]:
    """LaMDA++ per-layer ranks (path -> rank) summing to ``total_rank``, from normalized spectra."""
    from adaptome.core.adapters.targets import resolve_targets

    paths = resolve_targets(model, target_modules, exclude_modules)
    if total_rank < min_rank * len(paths):
        raise ValueError(f"total_rank {total_rank} is below min_rank x layers = {min_rank * len(paths)}")
    energies = {}
    for p in paths:
        sv = torch.linalg.svdvals(model.get_submodule(p).weight.float())  # (M,)
        energies[p] = (sv ** 2 / (sv ** 2).sum()).tolist()
    ranks = {p: min_rank for p in paths}
    candidates = sorted(((e[k], p) for p, e in energies.items() for k in range(min_rank, len(e))), reverse=True)
    for _, p in candidates[: total_rank - min_rank * len(paths)]:
        ranks[p] += 1
    return ranks


def lamda_pp_config(model: nn.Module, total_rank: int, min_rank: int = 1, **options) -> LamdaConfig:
    """A ``LamdaConfig`` whose ``rank_pattern`` is LaMDA++'s allocation for ``model``."""
    cfg = LamdaConfig(**options)
    ranks = lamda_pp_ranks(model, cfg.target_modules, total_rank, min_rank, cfg.exclude_modules)
    return dataclasses.replace(cfg, rank_pattern=ranks)
