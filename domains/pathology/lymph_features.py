"""Lymphocyte-object features of a tile: small round dense haematoxylin objects inside stroma.

The baseline encoder's second part (``encoders.build_baseline``). From the stain concentrations of
Ruifrok & Johnston's deconvolution (c_H, c_E; tiles are best stain-normalised first, ``stain_norm.py``):

- small round dense objects: a white top-hat of c_H (c_H minus its grey opening with a square of side
  2 ceil(r) + 3, which removes objects of radius r or less) above 0.5, where c_H > 0.9, and (round)
  within one pixel of a core that survives the grey opening with a square of side 2 ceil(r) - 1 at
  c_H > 0.9 (that square fits in a disc of radius r, not in a spindle nucleus 3-4 px wide):
  lymphocyte nuclei survive, larger tumour nuclei, thin fibroblast nuclei and smooth dark areas
  (folds, ink) do not;
- stroma: pixels whose local mean eosin (box of 15 px) exceeds 0.42 (stroma is eosin-rich, tumour
  nests are not);
- features: stroma share, lymphocyte-object share, lymphocyte share inside stroma, the per-tile
  sTIL estimate |lymph & stroma| / |stroma|, lymphocytes outside stroma (intratumoral), large-nucleus
  share (c_H > 0.5 without top-hat), sharpness (mean |Laplacian| of c_H; low when out of focus), a
  fold indicator (share of local mean eosin above 0.85, tissue lying twice) and dark-pixel share.

Dimension letters: B batch, T tile side.

Not covered: touching-nucleus splitting, shape (roundness) measures beyond the top-hat size filter,
scale other than ``radius`` pixels (set it for the tile magnification: 3 at 20x on the synthetic
cohort, where a lymphocyte is 3 um across).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LymphObjectFeatures(nn.Module):
    """B x 2 x T x T concentrations (H, E) -> B x 9 features."""

    dim = 9

    def __init__(self, radius: float = 3.0):
        super().__init__()
        self.k = 2 * int(math.ceil(radius)) + 3  # opening that removes a lymphocyte (top-hat)
        self.k_core = max(2 * int(math.ceil(radius)) - 1, 1)  # opening that a lymphocyte survives, a spindle not

    @staticmethod
    def _open(x: torch.Tensor, k: int) -> torch.Tensor:
        p = k // 2
        lo = -F.max_pool2d(-x, k, stride=1, padding=p)  # grey erosion, (B, 1, T, T)
        return F.max_pool2d(lo, k, stride=1, padding=p)  # then dilation: the opening

    def forward(self, conc: torch.Tensor) -> torch.Tensor:
        ch, ce = conc[:, :1], conc[:, 1:2]  # (B, 1, T, T) each
        tophat = ch - self._open(ch, self.k)
        core = (self._open(ch, self.k_core) > 0.9).float()  # (B, 1, T, T)
        round_ = F.max_pool2d(core, 3, stride=1, padding=1) > 0  # the core and its one-pixel rim
        lymph = (tophat > 0.5) & (ch > 0.9) & round_
        local_e = F.avg_pool2d(ce, 15, stride=1, padding=7, count_include_pad=False)
        stroma = local_e > 0.42
        n = float(ch.shape[-1] * ch.shape[-2])
        area = lambda m: m.flatten(1).float().sum(1) / n  # noqa: E731  (B, 1, T, T) -> (B,)
        s, ls = area(stroma), area(lymph & stroma)
        lap = (4 * ch[..., 1:-1, 1:-1] - ch[..., :-2, 1:-1] - ch[..., 2:, 1:-1] - ch[..., 1:-1, :-2]
               - ch[..., 1:-1, 2:]).abs()  # (B, 1, T-2, T-2)
        feats = [s, area(lymph), ls, ls / (s + 1e-3), area(lymph & ~stroma), area((ch > 0.5) & (tophat < 0.3)),
                 lap.flatten(1).mean(1), area(local_e > 0.85), area(ch + ce > 1.2)]
        return torch.stack(feats, 1)  # 9 x (B,) -> (B, 9)
