"""DyLoRA: LoRA trained for every rank at once by nested dropout (Valipour et al., EACL 2023,
arXiv 2210.07558, eq. 5-7).

At each training step a rank k ~ U{1..r} is drawn (``core.optim.dylora_rank.DyLoRARankSampler``,
a step hook that ``fit`` attaches from the config, see ``training_hooks``) and the layer uses only
the first k components with scale alpha / k:

    h = W0 x + (alpha / k) B[:, :k] A[:k] x

The official code indexes the rank by b = k - 1 and writes the scale as alpha / (b + 1); it is the
same number. Two training modes: ``"frozen"`` (the paper's "update only the b-th" and the official
default: components < k-1 are detached, only index k-1 gets gradient) and ``"nested"`` (every
component <= k trains). Outside a training step the adapter runs at its resting rank, ``eval_rank``
(the full rank r by default): the sampler puts it back after every optimizer step, so evaluation
inside ``fit``, checkpoints, saving, merging and a reloaded adapter all use that rank, never the rank
drawn last. ``set_rank(model, k)`` runs, merges and saves the adapter
at any rank k <= r; ``truncate.truncate_adapter_dir`` writes a smaller rank-k adapter that is a
plain rank-k DyLoRA with the same alpha (so its full-rank scale alpha / k is unchanged).

Dimension letters: N batch*tokens, I in_features, O out_features, R rank, K active rank.
Not covered: the paper's non-uniform rank distributions p_B (only uniform), per-layer ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from adaptome.core.adapters import ADAPTERS
from adaptome.core.adapters.base import AdapterConfig, AdapterLayer, lora_factors


@ADAPTERS.register("dylora")
@dataclass
class DyLoraConfig(AdapterConfig):
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    #: "frozen": only component k-1 trains at a sampled rank k; "nested": all components < k train
    mode: Literal["frozen", "nested"] = "frozen"
    init_lora_weights: Literal["default", "random_b"] = "default"
    #: the rank the adapter runs at outside a training step (evaluation inside ``fit``, saving, merging,
    #: inference after loading); None: the full rank r
    eval_rank: int | None = None
    #: seed of the rank sampler's own generator (the run's data order and dropout do not depend on it)
    rank_seed: int = 0

    trains: ClassVar[str] = "A (r x in), B (out x r); a random prefix rank k per step"
    param_formula: ClassVar[str] = "r*(in+out)"
    paper: ClassVar[str] = "Valipour et al. 2023, DyLoRA, arXiv 2210.07558, eq. 5-7"

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"r must be positive, got {self.r}")
        if self.mode not in ("frozen", "nested"):
            raise ValueError(f"mode must be 'frozen' or 'nested', got {self.mode!r}")
        if self.eval_rank is not None and not 1 <= self.eval_rank <= self.r:
            raise ValueError(f"eval_rank must be in 1..r = 1..{self.r}, got {self.eval_rank}")

    @property
    def resting_rank(self) -> int:
        """The rank outside training steps: ``eval_rank`` or r."""
        return self.eval_rank or self.r

    def training_hooks(self, model: nn.Module, adapter_name: str) -> list:
        from adaptome.core.optim.dylora_rank import DyLoRARankSampler

        return [DyLoRARankSampler(adapter_name, seed=self.rank_seed)]

    def identity_at_init(self) -> bool:
        return self.init_lora_weights == "default"

    def expected_params(self, in_features: int, out_features: int, bias: bool) -> int:
        return self.r * (in_features + out_features)

    @classmethod
    def examples(cls) -> list[AdapterConfig]:
        return [cls(r=4, lora_alpha=8, init_lora_weights="random_b", target_modules="attention"),
                cls(r=3, lora_alpha=3, mode="nested", init_lora_weights="random_b")]


class DyLoraLinear(AdapterLayer):
    adapter_layer_names = ("dylora_A", "dylora_B")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.dylora_A = nn.ParameterDict()
        self.dylora_B = nn.ParameterDict()
        self.dylora_dropout = nn.ModuleDict()
        #: active rank k per adapter (1..r); r when never set
        self.rank: dict[str, int] = {}

    def update_layer(self, adapter_name: str, cfg: DyLoraConfig) -> None:
        a, b = lora_factors(cfg.r, self.in_features, self.out_features, cfg.init_lora_weights,
                            self.base_layer.weight.dtype)
        self.dylora_A[adapter_name], self.dylora_B[adapter_name] = a, b
        self.dylora_dropout[adapter_name] = nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout > 0 else nn.Identity()
        self.rank[adapter_name] = cfg.resting_rank

    def set_rank(self, adapter_name: str, k: int) -> None:
        r = self.configs[adapter_name].r
        if not 1 <= k <= r:
            raise ValueError(f"rank must be in 1..{r}, got {k}")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge before changing its rank")
        self.rank[adapter_name] = k

    def _factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        cfg: DyLoraConfig = self.configs[adapter_name]
        k = self.rank[adapter_name]
        a = self.dylora_A[adapter_name][:k]  # (K, I)
        b = self.dylora_B[adapter_name][:, :k]  # (O, K)
        if cfg.mode == "frozen" and self.training and k > 1:
            a = torch.cat([a[: k - 1].detach(), a[k - 1:]], dim=0)  # (K, I)
            b = torch.cat([b[:, : k - 1].detach(), b[:, k - 1:]], dim=1)  # (O, K)
        return a, b, cfg.lora_alpha / k

    def adapter_forward(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        a, b, s = self._factors(adapter_name)
        x = self.dylora_dropout[adapter_name](x.to(a.dtype))
        return (x @ a.T) @ b.T * s  # (N, I) @ (I, K) -> (N, K) @ (K, O) -> (N, O)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        k = self.rank[adapter_name]
        a = self.dylora_A[adapter_name][:k]  # (K, I)
        b = self.dylora_B[adapter_name][:, :k]  # (O, K)
        return (b @ a) * (self.configs[adapter_name].lora_alpha / k)  # (O, K) @ (K, I) -> (O, I)

    def lora_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The first k components at the active rank k (``set_rank``), scale alpha / k."""
        k = self.rank[adapter_name]
        a = self.dylora_A[adapter_name][:k].detach()  # (K, I)
        b = self.dylora_B[adapter_name][:, :k].detach()  # (O, K)
        return b, a, self.configs[adapter_name].lora_alpha / k


DyLoraConfig.layer_cls = DyLoraLinear


def dylora_layers(model: nn.Module, adapter_name: str = "default") -> list[DyLoraLinear]:
    return [m for m in model.modules() if isinstance(m, DyLoraLinear) and adapter_name in m.configs]


def set_rank(model: nn.Module, k: int, adapter_name: str = "default") -> None:
    """Run (and merge, and save through ``truncate``) adapter ``adapter_name`` at rank ``k``."""
    layers = dylora_layers(model, adapter_name)
    if not layers:
        raise ValueError(f"the model has no DyLoRA adapter named {adapter_name!r}")
    for layer in layers:
        layer.set_rank(adapter_name, k)
