"""Slide scoring: sTIL % per slide, per-tile scores (CSV + GeoJSON for QuPath), heatmaps.

Given trained MIL fold models (a CV folder ``mil_*/`` holding ``fold_<k>/``, or one fold folder)
and a slide's tile features (stored ``features_<encoder>/<slide>.h5``, or computed on the fly by
tiling + encoding in memory with the recipe recorded in ``model.json``: encoder, resolution, tile
size, overlap, tissue threshold), each fold model gives a slide score,
tile scores and attention; the ensemble is their mean. Outputs under the scoring folder:
``slides.csv`` (``slide_id,stil_pct,n_tiles,n_models``), ``cases.csv`` (one row per case / patient, the mean
of its slides' scores, when slide ids are TCGA barcodes or a label sheet gives their cases: ``write_case_csv``),
``tiles/<slide>.csv``
(``x,y,size,score_pct,attention``, level-0 pixels), ``tiles/<slide>.geojson`` (one Polygon per
tile with its measurements: QuPath imports it as detections), and ``heatmaps/<slide>_score.png`` /
``<slide>_attention.png``: the thumbnail with each tile painted by value (no full-resolution
canvas: memory is the thumbnail's, the CLAM complaint #143 / #226), above a colour bar that says
the scale ("sTIL tile score, 0-100 %"; attention: min-max of the slide, its range printed).

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
from adaptome.domains.pathology.tiling import MASK_KEYS


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


#: what the tile-score heatmap shows, written under its colour bar and into the PNG's ``scale`` text
SCORE_SCALE = "sTIL tile score, 0-100 %"


def scale_label(column: str, vmin: float, vmax: float) -> str:
    """The words under a heatmap's colour bar for a ``tiles/<slide>.csv`` column."""
    if column == "score_pct":
        return SCORE_SCALE
    if column == "attention":
        return f"attention weight, min-max of this slide ({vmin:.3g} to {vmax:.3g})"
    return f"{column}, {vmin:.3g} to {vmax:.3g}"


def heatmap_image(thumb: np.ndarray, scale: float, coords: np.ndarray, size0: float, values: np.ndarray,
                  vmin: float | None = None, vmax: float | None = None, cmap: str = "jet",
                  alpha: float = 0.45, label: str | None = None, colour_bar: bool = True) -> np.ndarray:
    """Paint each tile's value (colour map, ``vmin``..``vmax``) over the thumbnail (H x W x 3 uint8);
    with ``colour_bar`` a strip below it shows the colour map, its end values and ``label`` (the
    scale's meaning; default: the value range)."""
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
    out = out.astype(np.uint8)
    if not colour_bar:
        return out
    return with_colour_bar(out, vmin, vmax, cmap, label if label is not None else f"{vmin:.3g} to {vmax:.3g}")


#: layout of the colour-bar strip, in pixels: margin, label line, bar height, tick labels
_BAR = {"margin": 8, "label_h": 16, "bar_h": 12, "ticks_h": 16, "min_width": 240}


def colour_bar_box(width: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the bar inside a strip of ``width`` pixels (x1, y1 exclusive)."""
    b = _BAR
    return b["margin"], b["label_h"], max(width, b["min_width"]) - b["margin"], b["label_h"] + b["bar_h"]


def with_colour_bar(img: np.ndarray, vmin: float, vmax: float, cmap: str, label: str) -> np.ndarray:
    """``img`` (H x W x 3) above a white strip holding ``label``, a horizontal colour bar (``vmin`` at
    the left end, ``vmax`` at the right, linear) and tick values at both ends and the middle; the
    result is at least ``_BAR['min_width']`` pixels wide (a narrow image is padded white)."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    h, w = img.shape[:2]
    b = _BAR
    width = max(w, b["min_width"])
    strip_h = b["label_h"] + b["bar_h"] + b["ticks_h"]
    out = np.full((h + strip_h, width, 3), 255, np.uint8)
    out[:h, :w] = img
    x0, y0, x1, y1 = colour_bar_box(width)
    ramp = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, x1 - x0))[:, :3] * 255.0  # (L,) -> (L, 4) -> RGB
    out[h + y0:h + y1, x0:x1] = np.round(ramp).astype(np.uint8)[None]
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    font = ImageFont.load_default()
    draw.text((x0, h + 2), label, fill=(0, 0, 0), font=font)
    for frac in (0.0, 0.5, 1.0):
        x = int(round(x0 + frac * (x1 - x0 - 1)))
        draw.line([(x, h + y1), (x, h + y1 + 3)], fill=(0, 0, 0))
        text = f"{vmin + frac * (vmax - vmin):.3g}"
        tw = draw.textlength(text, font=font)
        tx = min(max(x - tw / 2, 0), width - tw)
        draw.text((tx, h + y1 + 4), text, fill=(0, 0, 0), font=font)
    return np.asarray(pil)


def save_heatmap_png(img: np.ndarray, path: str | os.PathLike, label: str, vmin: float, vmax: float,
                     cmap: str) -> None:
    """Write a heatmap PNG atomically, its scale also as PNG text (``scale``, ``vmin``, ``vmax``, ``cmap``)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in (("scale", label), ("vmin", f"{vmin:.6g}"), ("vmax", f"{vmax:.6g}"), ("cmap", cmap)):
        info.add_text(k, v)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG", pnginfo=info)


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
    """Tile-score heatmap (0-100 % scale) and attention heatmap (min-max) over the thumbnail, each
    with a colour bar saying its scale."""
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
    for name, column, vals in (("score", "score_pct", res["tiles"]), ("attention", "attention", res["attention"])):
        vals = np.asarray(vals)
        lo, hi = (0.0, 100.0) if column == "score_pct" else (float(vals.min()), float(vals.max()))
        label = scale_label(column, lo, hi)
        img = heatmap_image(t, scale, coords, size0, vals, lo, hi, cmap, alpha, label)
        p = hdir / f"{sid}_{name}.png"
        save_heatmap_png(img, p, label, lo, hi, cmap)
        paths.append(p)
    return paths


#: what a feature file and a model's feature recipe (``model.json`` ``features``) must agree on: how each tile
#: was made and encoded, and which tiles were chosen (overlap, tissue threshold and mask settings: a model
#: trained on tiles >= 50 % tissue would otherwise score edge and background tiles it never saw)
RECIPE_KEYS = ("encoder", "target_mpp", "tile_size", "stain_norm", "encoder_options", "encoder_weights", "overlap",
               "min_tissue", *MASK_KEYS)


def check_recipe(recipe: dict | None, attrs: dict, source: str) -> None:
    """``PathologyError`` naming ``source`` when its feature attributes differ from the recipe the model was
    trained on in one of ``RECIPE_KEYS`` (each compared where both record it: older files lack some)."""
    import json

    def norm(key, v):
        v = v.item() if hasattr(v, "item") else v
        if key == "encoder_options" and isinstance(v, str):
            v = json.loads(v)
        return round(v, 6) if isinstance(v, float) else v

    for key in RECIPE_KEYS:
        if recipe and key in recipe and key in attrs:
            mine, model = norm(key, attrs[key]), norm(key, recipe[key])
            if mine != model:
                raise PathologyError(f"{source}: features made with {key} {mine!r}, but the model was trained on "
                                     f"features with {model!r}; extract them as the model's were, or score "
                                     "without --features-dir (on the fly, with the model's recipe)")
    if recipe and recipe.get("roi") and "roi" in attrs and not bool(attrs["roi"]):  # the other way round is a choice
        raise PathologyError(f"{source}: features of every tissue tile, but the model was trained on tiles inside "
                             "regions of interest (tiled with roi_dir); tile these slides with their ROIs too, or "
                             "score on the fly with --set roi_dir=<folder>")


def score_slide(slide_path, feature_file, models: list, out_dir: str | os.PathLike, heatmaps: bool = True,
                thumb_size: int = 1024, recipe: dict | None = None) -> dict:
    """Score one slide from its feature file; writes tile CSV / GeoJSON and heatmaps, returns the row
    for ``slides.csv``. ``recipe``: the model's feature recipe, checked against the file (``check_recipe``);
    features of another slide, or of an earlier version of this one, are refused (``tiling.check_same_slide``,
    ``tiling.check_slide_version``)."""
    from adaptome.domains.pathology.extract import read_features
    from adaptome.domains.pathology.slide import open_slide
    from adaptome.domains.pathology.tiling import check_same_slide, check_slide_version

    feats, coords, attrs = read_features(feature_file)
    check_recipe(recipe, attrs, str(feature_file))
    slide = open_slide(slide_path)
    try:
        check_same_slide(attrs, slide, slide_path, feature_file)
    finally:
        slide.close()
    check_slide_version(slide_path, feature_file)  # the same sizes, but rewritten since the features were made
    return score_features(slide_path, feats, coords, attrs, models, out_dir, heatmaps, thumb_size, str(feature_file))


def score_features(slide_path, feats: np.ndarray, coords: np.ndarray, attrs: dict, models: list, out_dir,
                   heatmaps: bool = True, thumb_size: int = 1024, source: str = "") -> dict:
    """Score one slide from its features (N x D) and coordinates (N x 2); ``source`` names the input
    in errors."""
    source = source or str(slide_path)
    if len(feats) == 0:
        from adaptome.domains.pathology.tiling import why_no_tiles

        why = why_no_tiles(attrs) if {"width", "tile_size_level0", "min_tissue"} <= set(attrs) else "empty feature file"
        raise PathologyError(f"{source}: no tiles to score: {why}")
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


def recipe_seg_params(recipe: dict) -> dict:
    """The tissue-mask settings a model's tiles were chosen with (its recipe; ``tiling.SEG_DEFAULTS`` for
    those a recipe of an older version does not hold)."""
    from adaptome.domains.pathology.tiling import SEG_DEFAULTS

    return {k: type(v)(recipe[k]) if recipe.get(k) is not None else v for k, v in SEG_DEFAULTS.items()}


def features_on_the_fly(slide_path, recipe: dict, encoder, mpp_overrides: dict | None = None,
                        batch_size: int = 64, num_workers: int = 0, device: str = "cpu", roi=None,
                        roi_classes=(), allow_upsample: bool = False) -> tuple:
    """Tile and encode one slide in memory with the recipe a model was trained on (``model.json``
    ``features``: encoder, target_mpp, tile_size, overlap, min_tissue, the tissue-mask settings), inside
    ``roi`` (a GeoJSON file, bounded by ``roi_classes``) when given; returns (feats, coords, attrs). A slide
    scanned coarser than the recipe's resolution is refused before any tile is encoded, as ``tile`` refuses it,
    unless ``allow_upsample``."""
    from adaptome.domains.pathology.extract import encode_tiles, tile_loader
    from adaptome.domains.pathology.tiling import TileReader, tile_slide

    res = tile_slide(slide_path, float(recipe["target_mpp"]), int(recipe["tile_size"]), int(recipe.get("overlap", 0)),
                     float(recipe.get("min_tissue", 0.5)), mpp_overrides, int(recipe.get("thumb_size", 1024)),
                     roi_geojson=roi, seg_params=recipe_seg_params(recipe),
                     stain_norm=str(recipe.get("stain_norm", "none")), roi_classes=list(roi_classes or ()))
    if not allow_upsample:
        from adaptome.domains.pathology.tiling import check_upsample

        check_upsample(slide_path, float(res["attrs"]["mpp"]), float(recipe["target_mpp"]),
                       "the model was trained on tiles at that resolution; score slides scanned at least that "
                       "fine, or pass --set allow_upsample=true")
    loader = tile_loader(TileReader(slide_path, res["geometry"]), res["coords"], batch_size, num_workers)
    return encode_tiles(encoder, loader, device), res["coords"], {**res["attrs"], "encoder": encoder.name}


def check_scored_slide(tiles_csv: str | os.PathLike, slide_path: str | os.PathLike) -> None:
    """Refuse to draw a ``score`` run's tiles CSV over another slide than the one it was scored on, when the
    run's record (``made_by/<slide_id>.json`` beside ``tiles/``) names that slide: another scan of the same
    tissue (another magnification) fits inside the slide and would be painted at the wrong scale. A tiles
    CSV without its record is checked only against the slide's bounds (by the caller)."""
    import json

    tiles_csv, slide_path = Path(tiles_csv), Path(slide_path)
    rec = tiles_csv.parent.parent / "made_by" / f"{tiles_csv.stem}.json"
    if tiles_csv.parent.name != "tiles" or not rec.is_file():
        return
    try:
        scored = json.loads(rec.read_text(encoding="utf-8"))["inputs"]["slide"]
        size = int(scored["size"])
    except (ValueError, KeyError, TypeError):
        return  # not a record this version wrote: nothing to compare
    if size != slide_path.stat().st_size:
        raise PathologyError(f"{tiles_csv}: scores of {scored.get('name')} ({size} bytes, per {rec}), not of "
                             f"{slide_path} ({slide_path.stat().st_size} bytes)")


def write_slide_csv(rows: list[dict], path: str | os.PathLike, drop=()) -> None:
    """Merge ``rows`` into ``slides.csv`` (rows of slides scored earlier are kept, except ``drop`` and
    those whose ``tiles/<slide>.csv`` beside it is gone: a slide being redone, stopped by a failure).
    Nothing is written when there is nothing to change."""
    path = Path(path)
    old, kept = {}, {}
    if path.is_file():
        with path.open(newline="") as f:
            old = {r["slide_id"]: r for r in csv.DictReader(f)}
        kept = {k: r for k, r in old.items() if k not in set(drop) and (path.parent / "tiles" / f"{k}.csv").is_file()}
    if not rows and path.is_file() and len(kept) == len(old):
        return
    old = kept
    for r in rows:
        old[r["slide_id"]] = r
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["slide_id", "stil_pct", "n_tiles", "n_models"])
        w.writeheader()
        w.writerows(old[k] for k in sorted(old))


#: how ``cases.csv`` found a slide's case (its ``case_from`` column)
CASE_FROM = {"labels": "its case_id in the label sheet", "TCGA barcode": "the first three fields of its TCGA "
             "barcode (TCGA-<site>-<patient>)", "slide": "none: the slide is a case of its own"}


def write_case_csv(slides_csv: str | os.PathLike, labels: str | os.PathLike | None = None) -> Path | None:
    """``cases.csv`` beside ``slides.csv``: one row per case (patient) ``case_id, n_slides, stil_pct, slides,
    case_from``, ``stil_pct`` the mean of its scored slides' ``stil_pct``, ``slides`` their ids joined by ``;``.
    A slide's case: its ``case_id`` in the label sheet ``labels`` (``labels.read_case_sheet``), else the first
    three fields of its TCGA slide barcode (``labels.case_of``), else none (the slide is a case of its own,
    ``case_from`` ``slide``). Written when at least one slide has a case by the first two rules; otherwise an
    earlier ``cases.csv`` is removed (it would describe other slides). Returns its path or ``None``."""
    from adaptome.domains.pathology.labels import case_of, read_case_sheet

    slides_csv = Path(slides_csv)
    path = slides_csv.parent / "cases.csv"
    sheet = read_case_sheet(labels) if labels else {}
    rows = []
    if slides_csv.is_file():
        with slides_csv.open(newline="") as f:
            rows = list(csv.DictReader(f))
    cases: dict[str, dict] = {}
    for r in rows:
        sid = r["slide_id"]
        case, how = ((sheet[sid], "labels") if sid in sheet else (case_of(sid), "TCGA barcode") if case_of(sid)
                     else (sid, "slide"))
        c = cases.setdefault(case, {"case_id": case, "slides": [], "scores": [], "case_from": how})
        c["slides"].append(sid)
        c["scores"].append(float(r["stil_pct"]))
    if not any(c["case_from"] != "slide" for c in cases.values()):
        path.unlink(missing_ok=True)
        return None
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case_id", "n_slides", "stil_pct", "slides", "case_from"])
        w.writeheader()
        for k in sorted(cases):
            c = cases[k]
            w.writerow({"case_id": k, "n_slides": len(c["slides"]), "stil_pct": round(float(np.mean(c["scores"])), 4),
                        "slides": ";".join(c["slides"]), "case_from": c["case_from"]})
    return path


def case_table_line(cases_csv: str | os.PathLike, labels: str | os.PathLike | None = None) -> str:
    """``case scores: <path> (N cases, M with several slides; a slide's case: ...)`` for the screen."""
    with Path(cases_csv).open(newline="") as f:
        rows = list(csv.DictReader(f))
    rules = [CASE_FROM["labels"].replace("the label sheet", str(labels))] if labels else []
    rules.append(CASE_FROM["TCGA barcode"])
    alone = sum(r["case_from"] == "slide" for r in rows)
    return (f"case scores: {cases_csv} ({len(rows)} cases, {sum(int(r['n_slides']) > 1 for r in rows)} with several "
            f"slides; a case's score is the mean of its slides'; a slide's case: {', else '.join(rules)}"
            + (f"; {alone} slide(s) without a case id are a case of their own" if alone else "") + ")")
