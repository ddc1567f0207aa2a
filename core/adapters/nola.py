"""NOLA: LoRA whose A and B are linear combinations of seeded random bases (Koohpayegani et al.,
ICLR 2024, arXiv 2310.02556, eq. 3-4).

    A = A0 + sum_i alpha_i A_i,   B = sum_j beta_j B_j,   h = W0 x + s B A x,   s = lora_alpha / r

Only the coefficients alpha (k_a,) and beta (k_b,) train; both start at 0, so B = 0 and the model
equals the base at init (the first gradients reach beta only, as in the paper). A0 is a frozen
kaiming-uniform matrix and the bases are U(-1, 1) / sqrt(k), all drawn from a per-layer int64 seed
with a local CPU ``torch.Generator``: the same seed gives the same bases on every device, and the
global RNG is never touched (the official code reseeds the global RNG and draws on the
coefficients' device, so its bases differ between CPU and CUDA). The checkpoint holds the seed
and the coefficients only.

The bases are generated once per (seed, device, dtype) and cached on the layer (not in the state
dict); ``cache_basis=False`` regenerates them in every forward, which the benchmark measures.
Memory of the cache: (k_a r in + k_b out r + r in) floats per layer.

Dimension letters: N batch*tokens, I in_features, O out_features, R rank, K number of bases.
Not covered: the official chunked generation with a custom backward (the cache makes it
unnecessary at our sizes), QLoRA-quantized bases.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from adaptome.core.adapters import ADAPTERS
from adaptome.core.adapters.base import AdapterConfig, AdapterLayer


@ADAPTERS.register("nola")
@dataclass
class NolaConfig(AdapterConfig):
    r: int = 8
    lora_alpha: float = 8.0
    num_basis_a: int = 64
    num_basis_b: int = 64
    seed: int = 0
    cache_basis: bool = True
    #: "zeros" (the paper: identity at init) or "random" (tests: a non-zero update)
    init_coefficients: Literal["zeros", "random"] = "zeros"

    trains: ClassVar[str] = "coefficients alpha (k_a), beta (k_b) of seeded random bases per targeted linear"
    param_formula: ClassVar[str] = "num_basis_a + num_basis_b"
    paper: ClassVar[str] = "Koohpayegani et al. 2024, NOLA, arXiv 2310.02556, eq. 3-4"
    atol: ClassVar[float] = 5e-5  # the merged weight sums k bases in float32

    def __post_init__(self) -> None:
        if self.r <= 0 or self.num_basis_a <= 0 or self.num_basis_b <= 0:
            raise ValueError("r, num_basis_a and num_basis_b must be positive")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    def identity_at_init(self) -> bool:
        return self.init_coefficients == "zeros"

    def after_inject(self, model: nn.Module, adapter_name: str) -> None:
        """Give every layer its own seed, mixed from the config's seed and the layer's module path,
        so no two layers share their random bases (each official NOLALinear has its own seed)."""
        for path, mod in model.named_modules():
            if isinstance(mod, NolaLinear) and adapter_name in mod.nola_seed:
                mod.nola_seed[adapter_name].data.fill_(layer_seed(self.seed, adapter_name, path))

    def expected_params(self, in_features: int, out_features: int, bias: bool) -> int:
        return self.num_basis_a + self.num_basis_b

    @classmethod
    def examples(cls) -> list[AdapterConfig]:
        return [cls(r=4, num_basis_a=16, num_basis_b=8, init_coefficients="random", target_modules="attention"),
                cls(r=2, num_basis_a=4, num_basis_b=4, seed=7, init_coefficients="random", cache_basis=False)]


def layer_seed(seed: int, adapter_name: str, path: str) -> int:
    """A deterministic int64 seed for one layer of one adapter (no RNG involved)."""
    return (seed * 1_000_003 + zlib.crc32(f"{adapter_name}:{path}".encode())) % (2**62)


def generate_basis(seed: int, r: int, in_features: int, out_features: int, ka: int, kb: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A0 (R, I), basis_A (Ka, R, I), basis_B (Kb, O, R)) on CPU in float32 from ``seed``."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_(a=sqrt(5)) bound
    a0 = (torch.rand(r, in_features, generator=gen) * 2 - 1) * bound
    basis_a = (torch.rand(ka, r, in_features, generator=gen) * 2 - 1) / math.sqrt(ka)
    basis_b = (torch.rand(kb, out_features, r, generator=gen) * 2 - 1) / math.sqrt(kb)
    return a0, basis_a, basis_b


class NolaLinear(AdapterLayer):
    adapter_layer_names = ("nola_alpha", "nola_beta")
    other_param_names = ("nola_seed",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.nola_alpha = nn.ParameterDict()
        self.nola_beta = nn.ParameterDict()
        self.nola_seed = nn.ParameterDict()
        self._basis: dict[str, tuple] = {}
        #: how often the bases were generated (the cache test and the benchmark read it)
        self.generations = 0

    def update_layer(self, adapter_name: str, cfg: NolaConfig) -> None:
        # a provisional seed; ``NolaConfig.after_inject`` replaces it with one mixed from the layer's path
        seed = layer_seed(cfg.seed, adapter_name, f"{self.in_features}x{self.out_features}")
        alpha, beta = torch.zeros(cfg.num_basis_a), torch.zeros(cfg.num_basis_b)
        if cfg.init_coefficients == "random":
            gen = torch.Generator().manual_seed(seed + 1)
            alpha, beta = torch.randn(cfg.num_basis_a, generator=gen), torch.randn(cfg.num_basis_b, generator=gen)
        dtype = self.base_layer.weight.dtype
        dtype = dtype if dtype.is_floating_point else torch.float32
        self.nola_alpha[adapter_name] = nn.Parameter(alpha.to(dtype))
        self.nola_beta[adapter_name] = nn.Parameter(beta.to(dtype))
        self.nola_seed[adapter_name] = nn.Parameter(torch.tensor(seed, dtype=torch.int64), requires_grad=False)

    def bases(self, adapter_name: str, device: torch.device, dtype: torch.dtype):
        cfg: NolaConfig = self.configs[adapter_name]
        seed = int(self.nola_seed[adapter_name])
        key = (seed, device, dtype)
        hit = self._basis.get(adapter_name)
        if hit is not None and hit[0] == key:
            return hit[1]
        self.generations += 1
        made = tuple(t.to(device=device, dtype=dtype) for t in generate_basis(
            seed, cfg.r, self.in_features, self.out_features, cfg.num_basis_a, cfg.num_basis_b))
        if cfg.cache_basis:
            self._basis[adapter_name] = (key, made)
        return made

    def factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, beta = self.nola_alpha[adapter_name], self.nola_beta[adapter_name]
        a0, basis_a, basis_b = self.bases(adapter_name, alpha.device, alpha.dtype)
        a = a0 + torch.einsum("k,kri->ri", alpha, basis_a)  # (Ka,) x (Ka, R, I) -> (R, I)
        b = torch.einsum("k,kor->or", beta, basis_b)  # (Kb,) x (Kb, O, R) -> (O, R)
        return a, b

    def adapter_forward(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self.factors(adapter_name)
        s = self.configs[adapter_name].scaling
        return (x.to(a.dtype) @ a.T) @ b.T * s  # (N, I) @ (I, R) -> (N, R) @ (R, O) -> (N, O)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        a, b = self.factors(adapter_name)
        return (b @ a) * self.configs[adapter_name].scaling  # (O, R) @ (R, I) -> (O, I)

    def lora_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The materialised A = A0 + sum alpha_i A_i and B = sum beta_j B_j (r (in + out) numbers per
        layer instead of the seed and k_a + k_b coefficients)."""
        with torch.no_grad():
            a, b = self.factors(adapter_name)  # (R, I), (O, R)
        return b, a, self.configs[adapter_name].scaling

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._basis.pop(adapter_name, None)

    def __deepcopy__(self, memo):  # the cache is derived state: drop it from copies
        import copy

        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            setattr(new, k, {} if k == "_basis" else copy.deepcopy(v, memo))
        return new


NolaConfig.layer_cls = NolaLinear
