"""Lymphocyte-object features of a tile: small round dense haematoxylin objects inside stroma.

The baseline encoder's second part (``encoders.build_baseline``). From the stain concentrations of
Ruifrok & Johnston's deconvolution (c_H, c_E; tiles are best stain-normalised first, ``stain_norm.py``):

- small round dense objects: a white top-hat of c_H (c_H minus its grey opening with a square of side
  2 ceil(r) + 3, which removes objects of radius r or less) above 0.5, where c_H > 0.9, and (round)
  within one pixel of a core that survives the grey opening with a square of side 2 ceil(r) - 1 at
  c_H > 0.9 (that square fits in a disc of radius r, not in a spindle nucleus 3-4 px wide):
  lymphocyte nuclei survive, larger tumour nuclei, thin fibroblast nuclei and smooth dark areas
  (folds, ink) do not;
- stroma: pixels whose local mean eosin (box of 15 px) exceeds a cut (stroma is eosin-rich, tumour
  nests are not). The cut is either fixed (``stroma_cut`` a number; 0.42 suits the reference stain) or
  set per slide (``stroma_cut="slide"``, the default): Otsu's threshold (Otsu, IEEE Trans. SMC 9:62,
  1979, between-class variance) on the slide's histogram of local mean eosin above ``E_FLOOR`` (glass
  and the palest tissue below it) splits eosin-rich from eosin-poor tissue, and the cut is
  ``SLIDE_CUT_FRACTION`` x the median local eosin of the eosin-rich side. That median follows the
  slide's eosin strength (stroma eosin is what the stain sets, whatever the slide's tumour share),
  so the cut moves with a pale or an eosin-heavy site instead of calling pale stroma tumour or
  eosin-heavy tumour stroma (``benchmarks/pathology/notes_hard_cohort_exploration.md``);
- features: stroma share, lymphocyte-object share, lymphocyte share inside stroma, the per-tile
  sTIL estimate |lymph & stroma| / |stroma|, lymphocytes outside stroma (intratumoral), large-nucleus
  share (c_H > 0.5 without top-hat), sharpness (mean |Laplacian| of c_H; low when out of focus), a
  fold indicator (share of local mean eosin above 0.85, tissue lying twice) and dark-pixel share.

With the per-slide cut the tile pass cannot know the cut yet: ``forward`` returns the 9 features at
the fixed reference cut followed by each tile's stroma and stromal-lymphocyte areas at the ``E_GRID``
cuts (2 K raw numbers), and ``finish_slide`` (given all of a slide's tiles) estimates the slide's cut
and returns the 9 features at it, interpolated linearly between the two nearest grid cuts.

Dimension letters: B batch, T tile side, K grid cuts, N tiles of a slide.

Not covered: touching-nucleus splitting, shape (roundness) measures beyond the top-hat size filter,
scale other than ``radius`` pixels (set it for the tile magnification: 3 at 20x on the synthetic
cohort, where a lymphocyte is 3 um across), a per-slide haematoxylin scale (the c_H cuts stay fixed).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: the fixed stroma cut (local mean eosin) that suits the reference stain
FIXED_CUT = 0.42
#: per-slide cut = this x the median local eosin of the slide's eosin-rich tissue (0.42 / 0.55: the fixed cut
#: over the stroma eosin of the reference-stained synthetic cohort)
SLIDE_CUT_FRACTION = 0.76
#: local mean eosin below this is not counted in a slide's histogram (glass, tile edges on glass)
E_FLOOR = 0.1
#: the grid of cuts a tile reports its areas at, with the per-slide cut: E_FLOOR .. 1.3 in steps of 0.025
E_GRID = (E_FLOOR, 1.3, 49)


def otsu_from_counts(counts: np.ndarray, centres: np.ndarray) -> float:
    """Otsu's threshold of a histogram (``counts`` per bin, bin ``centres``): the upper edge of the
    lower class that maximises the between-class variance w0 w1 (m0 - m1)^2."""
    w0 = np.cumsum(counts)  # (K-1,) mass at or below each bin
    w1 = w0[-1] - w0
    s0 = np.cumsum(counts * centres)
    m0 = s0 / np.maximum(w0, 1e-12)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (m0 - m1) ** 2
    k = int(np.argmax(between[:-1])) if len(between) > 1 else 0
    return float((centres[k] + centres[min(k + 1, len(centres) - 1)]) / 2)


class LymphObjectFeatures(nn.Module):
    """B x 2 x T x T concentrations (H, E) -> B x 9 features (fixed cut) or B x (9 + 2 K) raw numbers
    that ``finish_slide`` turns into N x 9 per slide (``stroma_cut="slide"``)."""

    dim = 9

    def __init__(self, radius: float = 3.0, stroma_cut: float | str = "slide"):
        super().__init__()
        self.k = 2 * int(math.ceil(radius)) + 3  # opening that removes a lymphocyte (top-hat)
        self.k_core = max(2 * int(math.ceil(radius)) - 1, 1)  # opening that a lymphocyte survives, a spindle not
        self.per_slide = stroma_cut == "slide"
        self.cut = FIXED_CUT if self.per_slide else float(stroma_cut)
        self.register_buffer("grid", torch.linspace(*E_GRID), persistent=False)  # (K,) cuts

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
        stroma = local_e > self.cut
        n = float(ch.shape[-1] * ch.shape[-2])
        area = lambda m: m.flatten(1).float().sum(1) / n  # noqa: E731  (B, 1, T, T) -> (B,)
        s, ls = area(stroma), area(lymph & stroma)
        lap = (4 * ch[..., 1:-1, 1:-1] - ch[..., :-2, 1:-1] - ch[..., 2:, 1:-1] - ch[..., 1:-1, :-2]
               - ch[..., 1:-1, 2:]).abs()  # (B, 1, T-2, T-2)
        feats = [s, area(lymph), ls, ls / (s + 1e-3), area(lymph & ~stroma), area((ch > 0.5) & (tophat < 0.3)),
                 lap.flatten(1).mean(1), area(local_e > 0.85), area(ch + ce > 1.2)]
        out = torch.stack(feats, 1)  # 9 x (B,) -> (B, 9)
        if not self.per_slide:
            return out
        s_k, ls_k = self._areas_above(local_e, lymph)  # (B, K) each
        return torch.cat([out, s_k, ls_k], 1)  # (B, 9 + 2K)

    def _areas_above(self, local_e: torch.Tensor, lymph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) shares of each tile's pixels with local eosin above each grid cut, all of them and the
        lymphocyte ones: mean_p [e_p > g_k] (and [... & lymph_p]) from a per-tile histogram over the cuts,
        without a (B, K, T, T) mask. bucketize gives b_p with g_{b-1} < e_p <= g_b, so e_p > g_k iff b_p > k."""
        b, kk = local_e.shape[0], self.grid.numel()
        idx = torch.bucketize(local_e.flatten(1), self.grid)  # (B, T*T) in 0..K
        hist = torch.zeros(b, kk + 1, device=local_e.device)
        hist.scatter_add_(1, idx, torch.ones_like(local_e.flatten(1)))  # (B, K + 1) pixels per bucket
        hist_l = torch.zeros_like(hist).scatter_add_(1, idx, lymph.flatten(1).float())  # lymphocyte pixels
        n = float(idx.shape[1])
        above = lambda h: h.flip(1).cumsum(1).flip(1)[:, 1:] / n  # noqa: E731  (B, K + 1) -> (B, K): buckets > k
        return above(hist), above(hist_l)

    def slide_cut(self, raw: np.ndarray) -> float:
        """The slide's stroma cut from its tiles' raw numbers (N x (9 + 2 K)); the fixed cut when the
        slide has no tissue above ``E_FLOOR``."""
        if len(raw) == 0:
            return FIXED_CUT
        grid = self.grid.cpu().numpy().astype(np.float64)
        kk = len(grid)
        surv = np.asarray(raw[:, 9:9 + kk], np.float64).mean(0)  # (K,) share of the slide's pixels above each cut
        counts = np.clip(surv[:-1] - surv[1:], 0, None)  # (K-1,) mass between neighbouring cuts
        if counts.sum() <= 0:
            return FIXED_CUT
        centres = (grid[:-1] + grid[1:]) / 2
        t = otsu_from_counts(counts, centres)
        s_t = np.interp(t, grid, surv)  # mass above the Otsu threshold
        # median of the eosin-rich side: where the survival falls to half of it (surv decreases along grid)
        med = float(np.interp(s_t / 2, surv[::-1], grid[::-1]))
        return float(np.clip(SLIDE_CUT_FRACTION * med, grid[0], grid[-1]))

    def finish_slide(self, raw: np.ndarray) -> np.ndarray:
        """N x (9 + 2 K) raw numbers of ALL of one slide's tiles -> N x 9 features at the slide's cut
        (identity with a fixed cut)."""
        raw = np.asarray(raw, np.float32)
        if not self.per_slide or len(raw) == 0:
            return raw[:, :self.dim] if len(raw) else np.zeros((0, self.dim), np.float32)
        grid = self.grid.cpu().numpy().astype(np.float64)
        kk = len(grid)
        cut = self.slide_cut(raw)
        i = int(np.clip(np.searchsorted(grid, cut) - 1, 0, kk - 2))
        w = (cut - grid[i]) / (grid[i + 1] - grid[i])  # linear interpolation between grid cuts i and i + 1
        s_k, ls_k = raw[:, 9:9 + kk], raw[:, 9 + kk:9 + 2 * kk]  # (N, K) each
        s = (1 - w) * s_k[:, i] + w * s_k[:, i + 1]  # (N,)
        ls = (1 - w) * ls_k[:, i] + w * ls_k[:, i + 1]
        out = raw[:, :self.dim].copy()
        out[:, 0], out[:, 2], out[:, 3], out[:, 4] = s, ls, ls / (s + 1e-3), np.clip(out[:, 1] - ls, 0, None)
        return out
