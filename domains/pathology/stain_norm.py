"""Macenko stain normalisation: estimate a slide's H&E vectors, map its tiles to a reference stain.

Macenko et al., "A method for normalizing histology slides for quantitative analysis", ISBI 2009:
optical density OD = -ln(I / I0) per channel; pixels with any OD below ``beta`` (background) are
dropped; the plane of the two largest eigenvectors of the OD covariance holds the stains; the
angle of each pixel's projection in that plane is taken at its ``alpha`` and ``100 - alpha``
percentiles, whose directions are the two stain vectors (the one with the larger red OD is
haematoxylin). Concentrations C solve OD = C S (least squares, S the 2 x 3 stain matrix), and
their ``pct``-th percentiles ``max_c`` set each stain's strength. Macenko uses the 99th; we use the
75th by default, because folds and pen ink hold a slide's darkest pixels and the 99th then tracks the
artefact, not the stain (on 8 hard synthetic slides, the pooled Spearman of the per-tile sTIL
feature with the planted density rose from 0.46 with the 99th to 0.87 with the 75th). Normalising a tile maps
C -> C * max_ref / max_c and re-composes I = I0_ref exp(-C S_ref) with the reference matrix
(Ruifrok & Johnston's vectors, ``stains.py``) and reference strengths ``REF_MAX`` (the 75th
percentiles measured on reference-stained synthetic slides).

``macenko_tiles`` (``stain_norm="macenko_tiles"``) keeps the reference vectors (no per-slide vector
estimate) and sets only the haematoxylin strength, from per-tile percentiles: the median over the sampled
tiles of each tile's 99th-percentile haematoxylin concentration (``TILE_PCT``). Within a tile the top 1 %
of haematoxylin is nuclear chromatin (a lymphocyte or tumour nucleus is in nearly every tissue tile), so
the statistic follows the stain and hardly the lymphocyte coverage, and the median over tiles ignores the
few tiles a fold or pen ink darkens; Macenko's vectors, estimated from the pooled pixels, follow pen ink
(on an unseen-site cohort a slide with blue and green ink went from 13 % to a 49 % prediction with them).
On 8 reference-stained hard synthetic slides the statistic spans 2.09-2.11 (the pooled 75th percentile
1.61-2.14). The eosin strength is left as scanned: the same per-tile statistic for eosin spread 0.66-1.54
on those slides, and the encoder's stroma cut already follows each slide's eosin (``lymph_features.py``).
The strength is stored in the pooled-75th units (``statistic x REF_MAX / REF_TILE_H``) so that
``normalise`` is shared. (The name says where the idea comes from; only the strength step remains.)

The estimate comes from pixels of a sample of a slide's tissue tiles at the tiling resolution
(``tiling.tile_slide``) and is stored with the tile coordinates; every tile read for that slide is
then normalised (``tiling.TileReader``), so every encoder sees the same normalised tiles.

Dimension letters: P pixels, C channels (3), S stains (2).

Not covered: Vahadane's sparse NMF, per-tile estimates, a third (residual) stain; pen ink or folds
inside the sampled tiles bias the estimate (the tissue mask drops them first when ``artefacts`` is on).
"""

from __future__ import annotations

import numpy as np

from adaptome.domains.pathology.errors import PathologyError
from adaptome.domains.pathology.stains import E_VEC, H_VEC

#: reference stain matrix (rows H, E; unit OD vectors) and strengths (99th-percentile concentrations)
REF_STAINS = np.stack([H_VEC, E_VEC])
REF_MAX = np.array([1.1, 0.8])
REF_I0 = 250.0
#: per-tile percentile of the ``macenko_tiles`` haematoxylin strength, and its median over the tiles of
#: reference-stained synthetic slides (mean of 8 slides, seed 7, ``stain_variation=0``; ``tile_strength``)
TILE_PCT = 99.0
REF_TILE_H = 2.10


def optical_density(rgb: np.ndarray, i0: float) -> np.ndarray:
    """OD = -ln(I / I0) of uint8 RGB (any shape ... x 3), I clipped to [1, I0]."""
    return -np.log(np.clip(rgb.astype(np.float64), 1.0, i0) / i0)


def estimate(rgb: np.ndarray, i0: float, beta: float = 0.15, alpha: float = 1.0, pct: float = 75.0) -> dict:
    """Macenko estimate from pixels ``rgb`` (P x 3 or H x W x 3 uint8): ``stains`` (2 x 3, rows H, E),
    ``max_c`` (2,), ``i0``. Too few stained pixels is an error."""
    od = optical_density(rgb, i0).reshape(-1, 3)  # (P, C)
    od = od[(od > beta).all(1)]
    if len(od) < 100:
        raise PathologyError(f"stain estimate needs >= 100 stained pixels, got {len(od)}")
    _, vecs = np.linalg.eigh(np.cov(od.T))  # (C, C), eigenvalues ascending
    plane = vecs[:, 1:3]  # (C, 2): the two largest
    plane = plane * np.sign(plane.sum(0, keepdims=True) + 1e-12)  # point into positive OD
    proj = od @ plane  # (P, C) @ (C, 2) -> (P, 2)
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])  # (C, 2) @ (2,) -> (C,)
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)
    stains = np.stack([h / np.linalg.norm(h), e / np.linalg.norm(e)])  # (S, C)
    conc = np.linalg.lstsq(stains.T, od.T, rcond=None)[0]  # (C, S) x = (C, P) -> (S, P)
    max_c = np.percentile(conc, pct, axis=1)
    if not np.all(max_c > 1e-3):
        raise PathologyError("stain estimate degenerate (a stain has no density)")
    return {"stains": stains, "max_c": max_c, "i0": float(i0)}


def tile_strength(tiles: list[np.ndarray], est: dict, beta: float = 0.15) -> float:
    """Median over ``tiles`` (each T x T x 3 uint8) of each tile's ``TILE_PCT`` percentile of the
    haematoxylin concentration under ``est``'s stain vectors; tiles with < 50 stained pixels are left out."""
    stains = np.asarray(est["stains"], np.float64).reshape(2, 3)
    per = []
    for t in tiles:
        od = optical_density(t, est["i0"]).reshape(-1, 3)  # (P, C)
        od = od[(od > beta).all(1)]
        if len(od) >= 50:
            conc = od @ np.linalg.pinv(stains)  # (P, C) @ (C, S) -> (P, S)
            per.append(np.percentile(conc[:, 0], TILE_PCT))
    if not per:
        raise PathologyError("stain estimate needs tiles with >= 50 stained pixels, found none")
    return float(np.median(per))


def normalise(rgb: np.ndarray, est: dict) -> np.ndarray:
    """Map uint8 RGB (... x 3) stained as ``est`` to the reference stain; returns uint8 of the same shape."""
    shape = rgb.shape
    od = optical_density(rgb, est["i0"]).reshape(-1, 3)  # (P, C)
    stains = np.asarray(est["stains"], np.float64).reshape(2, 3)
    conc = od @ np.linalg.pinv(stains)  # (P, C) @ (C, S) -> (P, S)
    conc *= REF_MAX / np.asarray(est["max_c"], np.float64).reshape(2)
    out = REF_I0 * np.exp(-(np.clip(conc, 0, None) @ REF_STAINS))  # (P, S) @ (S, C) -> (P, C)
    return np.clip(out, 0, 255).astype(np.uint8).reshape(shape)


def to_attrs(est: dict) -> dict:
    """The estimate as flat HDF5 attributes (``stain_matrix`` 6 floats, ``stain_max`` 2, ``stain_i0``)."""
    return {"stain_matrix": np.asarray(est["stains"], np.float64).ravel(),
            "stain_max": np.asarray(est["max_c"], np.float64), "stain_i0": float(est["i0"])}


def from_attrs(attrs: dict) -> dict | None:
    """The estimate stored by ``to_attrs``, or None when the tiles were made without normalisation."""
    if "stain_matrix" not in attrs:
        return None
    return {"stains": np.asarray(attrs["stain_matrix"], np.float64).reshape(2, 3),
            "max_c": np.asarray(attrs["stain_max"], np.float64), "i0": float(attrs["stain_i0"])}


def to_tuple(est: dict) -> tuple[float, ...]:
    """The estimate as 9 plain floats (stains row-major, max_c, i0), for a frozen tile geometry."""
    return (*map(float, np.asarray(est["stains"]).ravel()), *map(float, est["max_c"]), float(est["i0"]))


def from_tuple(t: tuple[float, ...]) -> dict:
    return {"stains": np.asarray(t[:6]).reshape(2, 3), "max_c": np.asarray(t[6:8]), "i0": float(t[8])}


def sample_estimate(reader, coords: np.ndarray, source, n_tiles: int = 32, per_tile: bool = False) -> dict:
    """Estimate from up to ``n_tiles`` tiles (evenly spread over ``coords``, N x 2) read by ``reader``
    (a ``tiling.TileReader`` without a stain of its own); I0 is the reference 250 unless the tiles show
    brighter glass (tissue tiles rarely show glass, so I0 is not estimated from them). ``per_tile``: the
    reference vectors, the haematoxylin strength from ``tile_strength`` and the eosin one left as scanned
    (``macenko_tiles``), instead of Macenko's vectors and pooled 75th percentiles."""
    idx = np.unique(np.linspace(0, len(coords) - 1, min(n_tiles, len(coords))).round().astype(int))
    try:
        tiles = [reader.read(*coords[i]) for i in idx]
    finally:
        reader.close()
    pix = np.concatenate([t.reshape(-1, 3) for t in tiles])  # (P, C)
    i0 = max(REF_I0, float(np.percentile(pix.astype(np.float64).mean(1), 99.9)))
    try:
        if per_tile:
            est = {"stains": REF_STAINS.copy(), "max_c": REF_MAX.copy(), "i0": i0}
            est["max_c"][0] = tile_strength(tiles, est) * REF_MAX[0] / REF_TILE_H
            return est
        return estimate(pix, i0)
    except PathologyError as e:
        raise PathologyError(f"{source}: {e}") from None
