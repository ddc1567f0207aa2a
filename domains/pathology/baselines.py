"""The simple slide-level baselines every MIL result is reported beside, on the same folds.

- ``dark_pixels``: one feature per slide, the mean over its tiles of the fraction of pixels with grey
  value (ITU-R 601 luma, 0..255) below 105, fitted to the target by ordinary least squares (a line).
- ``mean_features``: the mean over tiles of the ``baseline`` encoder's features, standardised on the
  training slides and fitted by ridge regression (closed form, ``alpha`` in standardised units).
- ``majority`` (the constant): the mean target of the training slides.

Each is fitted on the other folds' slides and predicts the held-out fold, with the fold of every
slide taken from the MIL run's ``predictions.csv`` (so the splits are the MIL's own). Tiles are the
MIL run's tiles (read again from the slides with the tiling geometry).

Dimension letters: S slides, D feature dim, N tiles.

Not covered: baselines tuned by nested CV (alpha is fixed), baselines on other encoders' features.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from adaptome.domains.pathology.errors import PathologyError

DARK_GREY = 105.0


def dark_fraction(tiles: np.ndarray) -> np.ndarray:
    """Per-tile share of pixels with luma < 105; tiles N x T x T x 3 uint8 -> N values."""
    x = tiles.astype(np.float32)
    grey = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]  # (N, T, T)
    return (grey < DARK_GREY).reshape(len(tiles), -1).mean(1)  # (N, T, T) -> (N, T*T) -> (N,)


#: per-process memo of slide summaries, keyed by the tiles file and the slide file (path, size, mtime)
_MEMO: dict[tuple, dict] = {}


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def slide_summaries(tiles_dir: str | os.PathLike, slide_ids: list[str], batch: int = 256) -> dict[str, dict]:
    """For each slide: ``dark`` (mean tile dark fraction) and ``feat`` (mean baseline-encoder features),
    from the tiles listed in ``<tiles_dir>/<slide>.h5`` read from the slide recorded there. A slide
    summarised before in this process is reused only when both files are unchanged (size, mtime)."""
    from adaptome.domains.pathology.tiling import read_coords

    out = {}
    for sid in slide_ids:
        h5 = Path(tiles_dir) / f"{sid}.h5"
        if not h5.is_file():
            raise PathologyError(f"{h5}: tiles file of slide {sid} not found (baselines need the MIL run's tiles)")
        coords, attrs = read_coords(h5)
        path = str(attrs.get("slide_path", ""))
        if not Path(path).is_file():
            raise PathologyError(f"{h5}: its slide {path!r} is not found")
        if len(coords) == 0:
            raise PathologyError(f"{h5}: slide {sid} has no tiles")
        key = (_stamp(h5), _stamp(Path(path)))
        if key not in _MEMO:
            _MEMO[key] = _summarise(path, coords, attrs, batch, h5)
        out[sid] = _MEMO[key]
    return out


def _summarise(path: str, coords: np.ndarray, attrs: dict, batch: int, source: Path) -> dict:
    """Read a slide's tiles once: mean dark fraction and mean baseline-encoder features."""
    import torch

    from adaptome.domains.pathology.encoders import build_encoder
    from adaptome.domains.pathology.extract import finish_slide
    from adaptome.domains.pathology.slide import open_slide
    from adaptome.domains.pathology.tiling import TileReader, slide_geometry

    enc = build_encoder("baseline", options={"centre": False}).eval()  # slide means are what this baseline uses
    s = open_slide(path)
    try:
        reader = TileReader(path, slide_geometry(attrs, s, path, source))
    finally:
        s.close()
    darks, feats = [], []
    try:
        for i in range(0, len(coords), batch):
            tiles = np.stack([reader.read(x, y) for x, y in coords[i:i + batch]])  # (n, T, T, 3)
            darks.append(dark_fraction(tiles))
            with torch.no_grad():
                feats.append(enc(torch.from_numpy(tiles)).numpy())
    finally:
        reader.close()
    # the encoder's per-slide step (its per-slide stroma cut) needs all the slide's tiles
    return {"dark": float(np.concatenate(darks).mean()), "feat": finish_slide(enc, np.concatenate(feats)).mean(0)}


def _ridge(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge on standardised columns with an unpenalised intercept; x S x D."""
    mu, sd = x_fit.mean(0), x_fit.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    a, b = (x_fit - mu) / sd, (x_test - mu) / sd
    w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (y_fit - y_fit.mean()))  # (D, D) @ (D,)
    return b @ w + y_fit.mean()  # (S', D) @ (D,) -> (S',)


def grouped_baselines(rows: list[dict], summaries: dict[str, dict], alpha: float = 1.0) -> dict[str, list[dict]]:
    """Out-of-fold predictions of every baseline on the folds of ``rows`` (``slide_id, fold, target``);
    returns name -> rows ``slide_id, fold, pred, target`` (pred clipped to 0..100)."""
    folds = sorted({r["fold"] for r in rows})
    y = np.array([r["target"] for r in rows], float)
    fold = np.array([r["fold"] for r in rows])
    dark = np.array([[summaries[r["slide_id"]]["dark"]] for r in rows])  # (S, 1)
    feat = np.stack([summaries[r["slide_id"]]["feat"] for r in rows])  # (S, D)
    preds = {k: np.zeros(len(rows)) for k in ("majority", "dark_pixels", "mean_features")}
    for f in folds:
        te, tr = fold == f, fold != f
        if not tr.any():
            raise PathologyError("baselines need at least two folds in predictions.csv")
        preds["majority"][te] = y[tr].mean()
        preds["dark_pixels"][te] = _ridge(dark[tr], y[tr], dark[te], 0.0 if tr.sum() > 2 else 1.0)
        preds["mean_features"][te] = _ridge(feat[tr], y[tr], feat[te], alpha)
    return {k: [{"slide_id": r["slide_id"], "fold": r["fold"], "pred": float(np.clip(p[i], 0, 100)),
                 "target": r["target"]} for i, r in enumerate(rows)] for k, p in preds.items()}
