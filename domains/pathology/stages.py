"""The pipeline stages over a folder of slides, each writing a folder named after its parameters.

``segment`` -> ``<out>/segment_otsu_b<blur>_c<close>/`` (``masks/``, ``contours/`` GeoJSON,
``qc/``); ``tile`` -> ``<out>/tiles_20x_256px_0ov/<slide>.h5`` (coords); ``extract`` ->
``<tiles_dir>/features_<encoder>/<slide>.h5``; ``score`` -> ``<model>/scores/``. Every stage
writes its resolved config, reuses finished slides and, with ``skip_errors``, records failed
slides in ``summary.json`` / ``summary.md`` and goes on (``pipeline.run_stage``).

Not covered: running several stage processes on one folder at once (no lock files).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from adaptome.core.atomic import write_text_atomic
from adaptome.core.config import save_config
from adaptome.core.errors import AdaptomeError
from adaptome.domains.pathology.errors import PathologyError
from adaptome.domains.pathology.pipeline import StageSummary, run_stage
from adaptome.domains.pathology.slide import SlideError, list_slides, open_slide, read_mpp_csv, slide_id, target_mpp


def _items(slides: str) -> list[tuple[str, Path]]:
    paths = list_slides(slides)
    if not paths:
        raise PathologyError(f"{slides}: no slide files found")
    return [(slide_id(p), p) for p in paths]


def segment(cfg, progress: bool = True) -> StageSummary:
    """Tissue masks, GeoJSON contours and QC thumbnails (``cfg``: ``config.SegmentConfig``)."""
    import json

    from PIL import Image

    from adaptome.domains.pathology.segment import mask_to_geojson, qc_image, tissue_mask
    from adaptome.domains.pathology.slide import thumbnail

    out = Path(cfg.out_dir) / f"segment_otsu_b{cfg.blur}_c{cfg.close}"
    save_config(cfg, out)
    for sub in ("masks", "contours", "qc"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    def work(sid: str, path: Path, target: Path) -> None:
        s = open_slide(path)
        try:
            thumb, scale = thumbnail(s, cfg.thumb_size)
        finally:
            s.close()
        rgb = np.asarray(thumb)
        mask = tissue_mask(rgb, blur=cfg.blur, close=cfg.close, min_area_frac=cfg.min_area_frac,
                           fill_holes=cfg.fill_holes, artefacts=cfg.artefacts)
        Image.fromarray((mask * 255).astype(np.uint8)).save(out / "masks" / f"{sid}.png")
        Image.fromarray(qc_image(rgb, mask)).save(out / "qc" / f"{sid}.png")
        write_text_atomic(target, json.dumps(mask_to_geojson(mask, scale)))  # the contour file marks the slide done

    return run_stage("segment", _items(cfg.slides), out, lambda sid: out / "contours" / f"{sid}.geojson", work,
                     cfg.skip_errors, progress)


def tile(cfg, progress: bool = True) -> StageSummary:
    """Tile coordinates at the target magnification / MPP (``cfg``: ``config.TileConfig``)."""
    from adaptome.domains.pathology.tiling import stage_tag, tile_slide, write_coords

    out = Path(cfg.out_dir) / stage_tag(cfg.magnification, cfg.mpp, cfg.tile_size, cfg.overlap)
    overrides = read_mpp_csv(cfg.mpp_csv)
    tmpp = target_mpp(cfg.magnification, cfg.mpp)
    save_config(cfg, out)

    def work(sid: str, path: Path, target: Path) -> None:
        roi = None
        if cfg.roi_dir:
            roi = Path(cfg.roi_dir) / f"{sid}.geojson"
            if not roi.is_file():
                raise PathologyError(f"{roi}: ROI GeoJSON for slide {sid} not found")
        res = tile_slide(path, tmpp, cfg.tile_size, cfg.overlap, cfg.min_tissue, overrides, cfg.thumb_size, roi,
                         {"blur": cfg.blur, "close": cfg.close, "min_area_frac": cfg.min_area_frac,
                          "artefacts": cfg.artefacts}, cfg.stain_norm)
        write_coords(target, res["coords"], res["tissue"], {**res["attrs"], "slide_path": str(Path(path).resolve())})

    return run_stage("tile", _items(cfg.slides), out, lambda sid: out / f"{sid}.h5", work, cfg.skip_errors, progress)


def extract(cfg, encoder=None, progress: bool = True) -> StageSummary:
    """Tile features with an encoder from the registry (``cfg``: ``config.ExtractConfig``)."""
    from adaptome.domains.pathology.encoders import build_encoder, encoder_tag
    from adaptome.domains.pathology.extract import extract_slide

    tiles_dir = Path(cfg.tiles_dir)
    if not (tiles_dir / "config.yaml").is_file():
        raise PathologyError(f"{tiles_dir}: not a tiling stage folder (no config.yaml); run 'tile' first")
    encoder = encoder or build_encoder(cfg.encoder, cfg.weights, cfg.encoder_options)
    out = tiles_dir / f"features_{encoder_tag(cfg.encoder)}"
    save_config(cfg, out)
    items = [(sid, p) for sid, p in _items(cfg.slides) if (tiles_dir / f"{sid}.h5").is_file()]
    if cfg.shared_loader:
        return _extract_shared(cfg, encoder, items, tiles_dir, out, progress)

    def work(sid: str, path: Path, target: Path) -> None:
        extract_slide(path, tiles_dir / f"{sid}.h5", encoder, target, cfg.batch_size, cfg.num_workers, cfg.device)

    return run_stage("extract", items, out, lambda sid: out / f"{sid}.h5", work, cfg.skip_errors, progress)


def _extract_shared(cfg, encoder, items, tiles_dir: Path, out: Path, progress: bool) -> StageSummary:
    """Extraction with one reader-worker pool for all slides: first check each slide (open, coords;
    failures recorded as usual), then encode every valid slide's tiles through one loader, writing
    each slide's file as soon as its last tile is encoded. If the shared pass fails midway, the
    remaining slides are redone one by one so that the bad one is named and the others finish."""
    from adaptome.domains.pathology.extract import FEATURE_ATTRS, encode_many, extract_slide, write_features
    from adaptome.domains.pathology.tiling import geometry_from_attrs, read_coords

    jobs, meta = [], []

    def check(sid: str, path: Path, target: Path) -> None:
        coords, attrs = read_coords(tiles_dir / f"{sid}.h5")
        s = open_slide(path)
        geom = geometry_from_attrs(attrs, s.level_downsamples)
        s.close()
        jobs.append((str(path), geom, coords))
        meta.append((sid, path, target, coords, attrs))

    summary = run_stage("extract", items, out, lambda sid: out / f"{sid}.h5", check, cfg.skip_errors, False)
    done = set()

    def on_slide(i: int, feats: np.ndarray) -> None:
        sid, _, target, coords, attrs = meta[i]
        keep = {k: attrs[k] for k in FEATURE_ATTRS
                if k in attrs}
        write_features(target, feats, coords, {**keep, "encoder": encoder.name, "dim": int(feats.shape[1])})
        done.add(i)

    try:
        encode_many(encoder, jobs, on_slide, cfg.batch_size, cfg.num_workers, cfg.device)
    except Exception:  # a slide broke mid-read: finish the rest one by one, naming the bad one
        for i, (sid, path, target, _, _) in enumerate(meta):
            if i in done:
                continue
            try:
                extract_slide(path, tiles_dir / f"{sid}.h5", encoder, target, cfg.batch_size, 0, cfg.device)
            except (AdaptomeError, OSError) as e:
                summary.done.remove(sid)
                summary.failed[sid] = str(e).splitlines()[0]
                if not cfg.skip_errors:
                    summary.write()
                    raise SlideError(summary.failed[sid]) from None
    summary.write()
    return summary


def score(cfg, progress: bool = True) -> tuple[StageSummary, Path]:
    """Score slides with stored features and trained fold models (``cfg``: ``config.ScoreConfig``);
    returns the summary and the ``slides.csv`` path."""
    import json

    from adaptome.domains.pathology.score import (
        features_on_the_fly,
        load_models,
        score_features,
        score_slide,
        write_slide_csv,
    )

    models = load_models(cfg.model)
    out = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.model) / "scores"
    save_config(cfg, out)
    fdir = Path(cfg.features_dir) if cfg.features_dir else None
    rows = []
    encoder = recipe = None
    if fdir is None:  # compute features on the fly with the recipe the models were trained on
        from adaptome.domains.pathology.encoders import build_encoder

        mj = Path(cfg.model) / "model.json"
        mj = mj if mj.is_file() else sorted(Path(cfg.model).glob("fold_*/model.json"))[0]
        recipe = json.loads(mj.read_text()).get("features")
        if not recipe:
            raise PathologyError(f"{mj}: no feature recipe recorded; give --features-dir")
        encoder = build_encoder(recipe["encoder"], cfg.encoder_weights)
        overrides = read_mpp_csv(cfg.mpp_csv)

    def work(sid: str, path: Path, target: Path) -> None:
        if fdir is None:
            feats, coords, attrs = features_on_the_fly(path, recipe, encoder, overrides, cfg.batch_size,
                                                       cfg.num_workers, cfg.device)
            rows.append(score_features(path, feats, coords, attrs, models, out, cfg.heatmaps, cfg.thumb_size))
            return
        feat = fdir / f"{sid}.h5"
        if not feat.is_file():
            raise PathologyError(f"{feat}: no features for slide {sid}; run 'tile' and 'extract' first")
        rows.append(score_slide(path, feat, models, out, cfg.heatmaps, cfg.thumb_size))

    summary = run_stage("score", _items(cfg.slides), out, lambda sid: out / "tiles" / f"{sid}.csv", work,
                        cfg.skip_errors, progress)
    write_slide_csv(rows, out / "slides.csv")
    return summary, out / "slides.csv"


def train_dir(cfg) -> Path:
    """``mil_<aggregation>_<group_by>_k<k>[_shuffled]`` under ``out_dir`` (default: the features folder)."""
    tag = f"mil_{cfg.aggregation}_{cfg.group_by}_k{cfg.k}" + ("_shuffled" if cfg.shuffle_labels else "")
    return Path(cfg.out_dir or cfg.features_dir) / tag


def train(cfg, progress: bool = True) -> dict:
    """k-fold CV of the MIL regressor (``cfg``: ``config.MILTrainConfig``)."""
    from adaptome.domains.pathology.train import train_cv

    out = train_dir(cfg)
    save_config(cfg, out)
    kw = {k: v for k, v in asdict(cfg).items() if k not in ("features_dir", "labels", "out_dir")}
    res = train_cv(cfg.features_dir, cfg.labels, out, progress=progress, **kw)
    res["out_dir"] = str(out)
    return res


def pretrain_encoder(cfg, progress: bool = True) -> dict:
    """SimCLR pretraining of a tile encoder (``cfg``: ``config.PretrainConfig``); an existing
    ``encoder.safetensors`` in ``cfg.out_dir`` is never replaced."""
    from adaptome.domains.pathology.encoders import build_encoder
    from adaptome.domains.pathology.ssl import collect_tiles, pretrain

    if (Path(cfg.out_dir) / "encoder.safetensors").exists():
        raise PathologyError(f"{cfg.out_dir}: already holds encoder.safetensors; choose another --out")
    tiles_dir = Path(cfg.tiles_dir)
    pairs = [(str(p), str(tiles_dir / f"{p.stem}.h5")) for p in list_slides(cfg.slides)
             if (tiles_dir / f"{p.stem}.h5").is_file()]
    enc = build_encoder(cfg.encoder, None, cfg.encoder_options)
    save_config(cfg, cfg.out_dir)
    return pretrain(enc, collect_tiles(pairs, max_tiles=cfg.max_tiles, seed=cfg.seed), cfg.out_dir,
                    max_steps=cfg.max_steps, batch_size=cfg.batch_size, lr=cfg.lr, tau=cfg.tau,
                    proj_dim=cfg.proj_dim, seed=cfg.seed, progress=progress,
                    encoder_meta={"options": cfg.encoder_options})


def synth(cfg) -> Path:
    """A synthetic cohort (``cfg``: ``config.SynthConfig``); returns ``labels.csv``. A folder that
    already holds a cohort is never overwritten."""
    from adaptome.domains.pathology.synth import cohort_from_config

    if (Path(cfg.out_dir) / "labels.csv").exists():
        raise PathologyError(f"{cfg.out_dir}: already holds a cohort (labels.csv); choose another --out")
    save_config(cfg, cfg.out_dir)
    return cohort_from_config(cfg)
