"""A seeded Rademacher random projection, generated in chunks so memory stays bounded (LESS, Xia et
al. 2024, arXiv 2402.04333, Sec. 4.1, after TRAK's projector, Park et al. 2023, arXiv 2303.14186).

x (N, D) -> x R (N, d) with R (D, d) of independent +-1 / sqrt(d) entries, so E ||x R||^2 = ||x||^2
(Johnson-Lindenstrauss). R is never held whole: rows [c * chunk, (c + 1) * chunk) are drawn from a CPU
generator seeded by (seed, c) when needed. R depends on (seed, chunk) only: the same pair gives the
same R on every device (the chunk size is part of the projection's identity, like the seed).

Dimension letters: N rows, D input dimension, d output dimension.

Not covered: TRAK's fast_jl CUDA kernel, fp16 projection (we project in float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class RademacherProjector:
    """Args:
        dim_in: D, the gradient dimension.
        dim_out: d, the feature dimension (LESS: 8192).
        seed: the projection's seed.
        chunk: rows of R generated at a time (memory: chunk * d floats).
    """

    dim_in: int
    dim_out: int = 8192
    seed: int = 0
    chunk: int = 4096

    def block(self, c: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Rows [c * chunk, min(D, (c + 1) * chunk)) of R: (rows, d)."""
        rows = min(self.chunk, self.dim_in - c * self.chunk)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + c)
        signs = torch.randint(0, 2, (rows, self.dim_out), generator=gen, dtype=torch.int8)
        return (signs.float() * 2 - 1).to(device) / math.sqrt(self.dim_out)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, d)."""
        if x.shape[1] != self.dim_in:
            raise ValueError(f"expected {self.dim_in} columns, got {x.shape[1]}")
        out = torch.zeros(x.shape[0], self.dim_out, device=x.device, dtype=torch.float32)
        for c in range(math.ceil(self.dim_in / self.chunk)):
            lo = c * self.chunk
            part = x[:, lo:lo + self.chunk].float()  # (N, rows)
            out += part @ self.block(c, x.device)  # (N, rows) @ (rows, d) -> (N, d)
        return out
