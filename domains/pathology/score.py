"""Slide scoring: sTIL % per slide, per-tile scores (CSV + GeoJSON for QuPath), heatmaps.

Given trained MIL fold models (a CV folder ``mil_*/`` holding ``fold_<k>/``, or one fold folder)
and a slide's tile features (stored ``features_<encoder>/<slide>.h5``, or computed on the fly by
tiling + encoding in memory with the recipe recorded in ``model.json``: encoder, resolution, tile
size, overlap, tissue threshold), each fold model gives a slide score,
tile scores and attention; the ensemble is their mean. Outputs under the scoring folder:
``slides.csv`` (``slide_id,stil_pct,n_tiles,n_models``), ``tiles/<slide>.csv``
(``x,y,size,score_pct,attention``, level-0 pixels), ``tiles/<slide>.geojson`` (one Polygon per
tile with its measurements: QuPath imports it as detections), and ``heatmaps/<slide>_score.png`` /
``<slide>_attention.png``: the thumbnail with each tile painted by value (no full-resolution
canvas: memory is the thumbnail's, the CLAM complaint #143 / #226).

Dimension letters: N tiles, H, W thumbnail height / width.

Not covered: overlapping-tile smoothing / blur of heatmaps, top-k tile galleries, calibration.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import torch

from adaptome.core.atomic import atomic_path, write_text_atomic
from adaptome.domains.pathology.errors import PathologyError


def load_models(model_path: str | os.PathLike) -> list:
    """Fold models from a CV folder (every ``fold_*``) or a single model folder."""
    from adaptome.domains.pathology.train import load_model

    p = Path(model_path)
    if (p / "model.safetensors").is_file():
        return [load_model(p)]
    folds = sorted(d for d in p.glob("fold_*") if (d / "model.safetensors").is_file())
    if not folds:
        raise PathologyError(f"{p}: no MIL model here (expected model.safetensors or fold_*/model.safetensors)")
    return [load_model(d) for d in folds]


@torch.no_grad()
def score_bag(models: list, feats: np.ndarray) -> dict:
    """Ensemble scores of one slide: ``slide`` (%), ``tiles`` (N, %), ``attention`` (N)."""
    x = torch.from_numpy(np.asarray(feats, np.float32))
    outs = [m(x) for m in models]
    return {"slide": float(np.mean([float(o.slide[0]) for o in outs])) * 100.0,
            "tiles": torch.stack([o.tiles[0] for o in outs]).mean(0).numpy() * 100.0,  # (M, N) -> (N,)
            "attention": torch.stack([o.attention[0] for o in outs]).mean(0).numpy()}


def tiles_geojson(coords: np.ndarray, size0: float, scores: np.ndarray, attention: np.ndarray) -> dict:
    """One square Polygon per tile (level-0 pixels) with score and attention as measurements."""
    feats = []
    for (x, y), s, a in zip(coords.tolist(), scores.tolist(), attention.tolist()):
        x1, y1 = x + size0, y + size0
        ring = [[x, y], [x1, y], [x1, y1], [x, y1], [x, y]]
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": {"objectType": "detection", "classification": {"name": "Tile"},
                                     "measurements": {"sTIL_pct": round(s, 3), "attention": round(a, 6)}}})
    return {"type": "FeatureCollection", "features": feats}


def heatmap_image(thumb: np.ndarray, scale: float, coords: np.ndarray, size0: float, values: np.ndarray,
                  vmin: float | None = None, vmax: float | None = None, cmap: str = "jet",
                  alpha: float = 0.45) -> np.ndarray:
    """Paint each tile's value (colour map) over the thumbnail (H x W x 3 uint8)."""
    import matplotlib

    h, w = thumb.shape[:2]
    canvas = np.full((h, w), np.nan, np.float32)
    vmin = float(np.min(values)) if vmin is None else vmin
    vmax = float(np.max(values)) if vmax is None else vmax
    span = max(vmax - vmin, 1e-12)
    for (x, y), v in zip(coords.tolist(), values.tolist()):
        x0, y0 = int(round(x * scale)), int(round(y * scale))
        x1, y1 = max(x0 + 1, int(round((x + size0) * scale))), max(y0 + 1, int(round((y + size0) * scale)))
        canvas[y0:y1, x0:x1] = (v - vmin) / span
    covered = ~np.isnan(canvas)
    colours = matplotlib.colormaps[cmap](np.nan_to_num(canvas))[..., :3] * 255.0  # (H, W) -> (H, W, 4) -> RGB
    out = thumb.astype(np.float32)
    out[covered] = (1 - alpha) * out[covered] + alpha * colours[covered]
    return out.astype(np.uint8)


def write_tile_outputs(out_dir: Path, sid: str, coords: np.ndarray, size0: float, res: dict) -> None:
    """``tiles/<sid>.csv`` and ``tiles/<sid>.geojson`` (each written atomically)."""
    tdir = out_dir / "tiles"
    tdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(tdir / f"{sid}.csv") as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "size", "score_pct", "attention"])
        for (x, y), s, a in zip(coords.tolist(), res["tiles"].tolist(), res["attention"].tolist()):
            w.writerow([x, y, round(size0, 3), round(s, 4), round(a, 6)])
    write_text_atomic(tdir / f"{sid}.geojson", json.dumps(tiles_geojson(coords, size0, res["tiles"], res["attention"])))


def write_heatmaps(slide_path, out_dir: Path, sid: str, coords: np.ndarray, size0: float, res: dict,
                   thumb_size: int = 1024, cmap: str = "jet", alpha: float = 0.45) -> list[Path]:
    """Tile-score heatmap (0-100 % scale) and attention heatmap (min-max) over the thumbnail."""
    from PIL import Image

    from adaptome.domains.pathology.slide import open_slide, thumbnail

    slide = open_slide(slide_path)
    try:
        thumb, scale = thumbnail(slide, thumb_size)
    finally:
        slide.close()
    hdir = out_dir / "heatmaps"
    hdir.mkdir(parents=True, exist_ok=True)
    t = np.asarray(thumb)
    paths = []
    for name, vals, lo, hi in (("score", res["tiles"], 0.0, 100.0), ("attention", res["attention"], None, None)):
        img = heatmap_image(t, scale, coords, size0, np.asarray(vals), lo, hi, cmap, alpha)
        p = hdir / f"{sid}_{name}.png"
        with atomic_path(p) as tmp:
            Image.fromarray(img).save(tmp, format="PNG")
        paths.append(p)
    return paths


def score_slide(slide_path, feature_file, models: list, out_dir: str | os.PathLike, heatmaps: bool = True,
                thumb_size: int = 1024) -> dict:
    """Score one slide from its feature file; writes tile CSV / GeoJSON and heatmaps, returns the row
    for ``slides.csv``."""
    from adaptome.domains.pathology.extract import read_features

    feats, coords, attrs = read_features(feature_file)
    return score_features(slide_path, feats, coords, attrs, models, out_dir, heatmaps, thumb_size, str(feature_file))


def score_features(slide_path, feats: np.ndarray, coords: np.ndarray, attrs: dict, models: list, out_dir,
                   heatmaps: bool = True, thumb_size: int = 1024, source: str = "") -> dict:
    """Score one slide from its features (N x D) and coordinates (N x 2); ``source`` names the input
    in errors."""
    source = source or str(slide_path)
    if len(feats) == 0:
        raise PathologyError(f"{source}: no tiles to score")
    in_dim = int(models[0].feat_mean.numel())
    if feats.shape[1] != in_dim:
        raise PathologyError(f"{source}: features have {feats.shape[1]} dims, the model expects {in_dim} "
                         f"(encoder {attrs.get('encoder')!r})")
    sid = str(attrs.get("slide_id", Path(source).stem))
    res = score_bag(models, feats)
    out = Path(out_dir)
    size0 = float(attrs["tile_size_level0"])
    write_tile_outputs(out, sid, coords, size0, res)
    if heatmaps and slide_path is not None:
        write_heatmaps(slide_path, out, sid, coords, size0, res, thumb_size)
    return {"slide_id": sid, "stil_pct": round(res["slide"], 4), "n_tiles": len(coords), "n_models": len(models)}


def features_on_the_fly(slide_path, recipe: dict, encoder, mpp_overrides: dict | None = None,
                        batch_size: int = 64, num_workers: int = 0, device: str = "cpu") -> tuple:
    """Tile and encode one slide in memory with the recipe a model was trained on (``model.json``
    ``features``: encoder, target_mpp, tile_size, overlap, min_tissue); returns (feats, coords, attrs)."""
    from adaptome.domains.pathology.extract import encode_tiles, tile_loader
    from adaptome.domains.pathology.tiling import TileReader, tile_slide

    res = tile_slide(slide_path, float(recipe["target_mpp"]), int(recipe["tile_size"]), int(recipe.get("overlap", 0)),
                     float(recipe.get("min_tissue", 0.5)), mpp_overrides, int(recipe.get("thumb_size", 1024)),
                     seg_params={"artefacts": bool(recipe.get("artefacts", False))},
                     stain_norm=str(recipe.get("stain_norm", "none")))
    loader = tile_loader(TileReader(slide_path, res["geometry"]), res["coords"], batch_size, num_workers)
    return encode_tiles(encoder, loader, device), res["coords"], {**res["attrs"], "encoder": encoder.name}


def write_slide_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Merge ``rows`` into ``slides.csv`` (rows of slides scored earlier are kept)."""
    path = Path(path)
    old = {}
    if path.is_file():
        with path.open(newline="") as f:
            old = {r["slide_id"]: r for r in csv.DictReader(f)}
    for r in rows:
        old[r["slide_id"]] = r
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["slide_id", "stil_pct", "n_tiles", "n_models"])
        w.writeheader()
        w.writerows(old[k] for k in sorted(old))
