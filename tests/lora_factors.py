"""Hand-built LoRA factors for the merge tests (no model): a ``LoraFolder`` of one module, its update, and seeded
random factors. Importable as ``import lora_factors`` (``tests/conftest.py`` puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

import torch

from adaptome.core.merge.factors import LoraFolder


def lora(name: str, b: torch.Tensor, a: torch.Tensor, module: str = "m") -> LoraFolder:
    """A LoRA named ``name`` holding ``module``'s factors B (O, r) and A (r, I) in float64."""
    return LoraFolder(Path(name), {}, {module: (b.double(), a.double())})


def update(factors, module: str = "m") -> torch.Tensor:
    """``module``'s update B A of merged factors."""
    b, a = factors[module]
    return b @ a  # (O, k) @ (k, I) -> (O, I)


def random_factors(seed: int, o: int = 7, r: int = 3, i: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded float64 factors B (o, r) and A (r, i)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(o, r, generator=g, dtype=torch.float64), torch.randn(r, i, generator=g, dtype=torch.float64)
