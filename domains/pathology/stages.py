"""The pipeline stages over a folder of slides, each writing a folder named after its parameters.

``segment`` -> ``<out>/segment_otsu_b<blur>_c<close>/`` (``masks/``, ``contours/`` GeoJSON,
``qc/``); ``tile`` -> ``<out>/tiles_20x_256px_0ov/<slide>.h5`` (coords); ``extract`` ->
``<tiles_dir>/features_<encoder>/<slide>.h5``; ``score`` -> ``<model>/scores/``. Every stage
writes its resolved config and reuses a slide's result only when the same parameters and input
files made it (``made_by.py``; otherwise it redoes it saying why, or refuses naming ``--overwrite``);
a failed slide is one line naming it, recorded in ``summary.json`` / ``summary.md``, and with
``skip_errors`` the run goes on (``pipeline.py``).

Not covered: running several stage processes on one folder at once (no lock files).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from adaptome.core.atomic import write_text_atomic
from adaptome.core.config import save_config
from adaptome.core.progress import progress_bar
from adaptome.domains.pathology.errors import PathologyError
from adaptome.domains.pathology.made_by import file_stamp, identity
from adaptome.domains.pathology.pipeline import (
    Job,
    StageSummary,
    begin_stage,
    do_job,
    fail,
    finishing,
    job_done,
    run_stage,
    start_job,
    user_failure,
)
from adaptome.domains.pathology.slide import SlideError, list_slides, open_slide, read_mpp_csv, slide_id, target_mpp
from adaptome.domains.pathology.tiling import MASK_KEYS, SEG_DEFAULTS, check_upsample


def _roi_file(roi_dir: str | None, sid: str) -> Path | None:
    """``<roi_dir>/<slide_id>.geojson``, or None without ``roi_dir`` (``tile_slide`` refuses a missing one)."""
    return Path(roi_dir) / f"{sid}.geojson" if roi_dir else None


def _items(slides: str) -> list[tuple[str, Path]]:
    from adaptome.domains.pathology.slide import SLIDE_EXTENSIONS

    paths = list_slides(slides)
    if not paths:
        others = sorted(p.name for p in Path(slides).iterdir() if p.is_file())
        seen = f"; it holds {len(others)} other file(s), e.g. {', '.join(others[:3])}" if others else ""
        images = [n for n in others if Path(n).suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")]
        why = ("; a plain image records no microns per pixel, so tiles could not be cut at a magnification: "
               "write it as a tiled TIFF with its resolution") if images else ""
        raise PathologyError(f"{slides}: no slide files found (slide files end in {', '.join(SLIDE_EXTENSIONS)})"
                             f"{seen}{why}")
    return [(slide_id(p), p) for p in paths]


def _override(overrides: dict[str, float], path: Path) -> float | None:
    """The MPP override of one slide (keyed by file name or stem, as ``slide.slide_mpp`` reads it)."""
    return overrides.get(path.name, overrides.get(path.stem))


def segment(cfg, progress: bool = True) -> StageSummary:
    """Tissue masks, GeoJSON contours and QC thumbnails (``cfg``: ``config.SegmentConfig``)."""
    import json

    from PIL import Image

    from adaptome.domains.pathology.segment import mask_to_geojson, qc_image, tissue_mask
    from adaptome.domains.pathology.slide import thumbnail

    out = Path(cfg.out_dir) / f"segment_otsu_b{cfg.blur}_c{cfg.close}"
    params = {k: getattr(cfg, k) for k in (*MASK_KEYS, "fill_holes")}

    def made_by(sid: str, path: Path) -> dict:
        return identity(params, {"slide": file_stamp(path)})

    def start() -> None:
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
        mask = tissue_mask(rgb, fill_holes=cfg.fill_holes, **{k: getattr(cfg, k) for k in SEG_DEFAULTS})
        Image.fromarray((mask * 255).astype(np.uint8)).save(out / "masks" / f"{sid}.png")
        Image.fromarray(qc_image(rgb, mask)).save(out / "qc" / f"{sid}.png")
        write_text_atomic(target, json.dumps(mask_to_geojson(mask, scale)))  # the contour file marks the slide done

    return run_stage("segment", _items(cfg.slides), out, lambda sid: out / "contours" / f"{sid}.geojson", work,
                     cfg.skip_errors, progress, made_by, cfg.overwrite, on_start=start)


def tile(cfg, progress: bool = True) -> StageSummary:
    """Tile coordinates at the target magnification / MPP (``cfg``: ``config.TileConfig``)."""
    from adaptome.domains.pathology.tiling import stage_tag, tile_slide, why_no_tiles, write_coords

    out = Path(cfg.out_dir) / stage_tag(cfg.magnification, cfg.mpp, cfg.tile_size, cfg.overlap)
    overrides = read_mpp_csv(cfg.mpp_csv)
    tmpp = target_mpp(cfg.magnification, cfg.mpp)
    params = {k: getattr(cfg, k) for k in ("magnification", "mpp", "tile_size", "overlap", "min_tissue", *MASK_KEYS,
                                            "stain_norm")}
    params["roi"] = bool(cfg.roi_dir)
    if cfg.roi_classes:  # recorded only when set: results made before the option stay valid
        params["roi_classes"] = sorted(cfg.roi_classes)
    if cfg.allow_upsample:
        params["allow_upsample"] = True

    def made_by(sid: str, path: Path) -> dict:
        roi = _roi_file(cfg.roi_dir, sid)
        return identity(params, {"slide": file_stamp(path), "roi": file_stamp(roi) if roi and roi.is_file() else None},
                        slide={"mpp_override": _override(overrides, path)})

    def work(sid: str, path: Path, target: Path) -> None:
        roi = _roi_file(cfg.roi_dir, sid)
        res = tile_slide(path, tmpp, cfg.tile_size, cfg.overlap, cfg.min_tissue, overrides, cfg.thumb_size, roi,
                         {k: getattr(cfg, k) for k in SEG_DEFAULTS}, cfg.stain_norm, cfg.roi_classes)
        mpp0 = float(res["attrs"]["mpp"])
        if not cfg.allow_upsample:
            check_upsample(path, mpp0, tmpp, f"tile at --mpp {mpp0:.4g} or coarser, or pass --set allow_upsample=true")
        if len(res["coords"]) == 0:  # an empty bag fails later in train / score; say why here
            raise PathologyError(f"{path}: no tiles: {why_no_tiles(res['attrs'])}")
        write_coords(target, res["coords"], res["tissue"], {**res["attrs"], "slide_path": str(Path(path).resolve())})

    return run_stage("tile", _items(cfg.slides), out, lambda sid: out / f"{sid}.h5", work, cfg.skip_errors, progress,
                     made_by, cfg.overwrite, on_start=lambda: save_config(cfg, out))


def segment_mismatch(cfg) -> str | None:
    """A note when the job folder holds ``segment`` runs and none used the tissue-mask settings this ``tile``
    run uses: ``tile`` builds its own mask, so the segment run's QC images (the ones a user checks) would not
    show the mask that chooses the tiles. ``None`` when there is no segment run or one matches."""
    from adaptome.core.config import read_yaml

    mine = {**{k: getattr(cfg, k) for k in MASK_KEYS}, "fill_holes": True}
    differ = []
    for path in sorted(Path(cfg.out_dir).glob("segment_otsu_*/config.yaml")):
        try:
            theirs = read_yaml(path)
        except Exception:  # noqa: BLE001 - an unreadable old config is no reason to stop tiling
            continue
        diff = {k: theirs.get(k) for k in mine if theirs.get(k, mine[k]) != mine[k]}
        if not diff:
            return None
        differ.append((path.parent.name, diff))
    if not differ:
        return None
    name, diff = differ[0]
    return (f"note: tile makes its own tissue mask ({', '.join(f'{k} {v}' for k, v in mine.items())}), but the segment "
            f"run {name} of this job used {', '.join(f'{k} {v}' for k, v in diff.items())}: its QC images do not show "
            "the mask that chooses these tiles; give tile the same settings (--set key=value) to tile what you "
            "checked")


def _weights_stamp(weights: str | None) -> dict | None:
    """A local weights file's stamp (its content may change under the same name); hub ids and none: ``None``."""
    if weights and not weights.startswith("hf-hub:") and Path(weights).is_file():
        return file_stamp(weights)
    return None


def extract(cfg, encoder=None, progress: bool = True) -> StageSummary:
    """Tile features with an encoder from the registry (``cfg``: ``config.ExtractConfig``). A slide
    without a tiles file is listed as skipped with the reason. Launched as several processes
    (``torchrun`` / ``accelerate launch``), each rank extracts its shard of the slides
    (``extract.shard_items``) with the same reuse rules, and the main rank writes the merged summary."""
    from adaptome.domains.pathology.encoders import build_encoder, encoder_tag
    from adaptome.domains.pathology.extract import (
        extract_slide,
        gather_summary,
        join_shards,
        shard_items,
        shard_summary_dir,
    )

    tiles_dir = Path(cfg.tiles_dir)
    if not (tiles_dir / "config.yaml").is_file():
        raise PathologyError(f"{tiles_dir}: not a tiling stage folder (no config.yaml); run 'tile' first")
    rank, world = join_shards(cfg.device, cfg.dist_timeout_s)  # several launched processes: a shard of slides each
    encoder = encoder or build_encoder(cfg.encoder, cfg.weights, cfg.encoder_options)
    out = tiles_dir / f"features_{encoder_tag(cfg.encoder)}"
    params = {"encoder": cfg.encoder, "weights": cfg.weights, "encoder_options": cfg.encoder_options,
              "random_weights": bool(getattr(encoder, "random_weights", False)), "reader": cfg.reader,
              # the encoder's options with their defaults in force (a changed default redoes the features)
              "encoder_recipe": getattr(encoder, "recipe", None)}
    if cfg.reader == "tiff-jpeg" and cfg.decode_threads and cfg.device != "cpu":  # which decoder made which tile
        params["decode_cpu_share"] = cfg.decode_cpu_share
    all_items = _items(cfg.slides)
    order = [sid for sid, _ in all_items]
    skipped = {sid: f"no tiles file {tiles_dir / f'{sid}.h5'} (the tile stage did not finish this slide; see "
                    f"{tiles_dir / 'summary.md'})" for sid, _ in all_items if not (tiles_dir / f"{sid}.h5").is_file()}
    ready = [(sid, p) for sid, p in all_items if sid not in skipped]
    items = shard_items(ready, tiles_dir, rank, world)
    mine = {sid for sid, _ in items}
    # with several ranks each records its failures and goes on; gather_summary then applies skip_errors
    run_cfg, progress = replace(cfg, skip_errors=cfg.skip_errors or world > 1), progress and rank == 0

    def made_by(sid: str, path: Path) -> dict:
        return identity(params, {"slide": file_stamp(path), "tiles": file_stamp(tiles_dir / f"{sid}.h5"),
                                 "weights": _weights_stamp(cfg.weights)})

    summary, jobs = begin_stage("extract", items, out, lambda sid: out / f"{sid}.h5", made_by, cfg.overwrite,
                                skipped if rank == 0 else {}, on_start=lambda: save_config(cfg, out) if rank == 0
                                else None, others=[sid for sid in order if sid not in mine],
                                summary_dir=shard_summary_dir(out, rank, world))
    with finishing(summary):
        if cfg.shared_loader and cfg.reader == "openslide":
            _extract_shared(run_cfg, encoder, summary, jobs, tiles_dir, progress)
        else:
            def work(sid: str, path: Path, target: Path) -> None:
                if cfg.reader != "openslide":  # tiles decoded on cfg.device (readers_gpu.py), OpenSlide the fallback
                    from adaptome.domains.pathology.readers_gpu import extract_slide_decoded

                    extract_slide_decoded(path, tiles_dir / f"{sid}.h5", encoder, target, cfg.batch_size,
                                          cfg.device, cfg.reader, cfg.num_workers, cfg.decode_threads,
                                          cfg.decode_cpu_share)
                    return
                extract_slide(path, tiles_dir / f"{sid}.h5", encoder, target, cfg.batch_size, cfg.num_workers,
                              cfg.device)

            with progress_bar("extract", len(jobs), enabled=progress, transient=True) as bar:
                for job in jobs:
                    do_job(summary, job, work, run_cfg.skip_errors)
                    bar.advance()
    return gather_summary(summary, out, order, rank, world, cfg.skip_errors)


def _extract_shared(cfg, encoder, summary: StageSummary, jobs: list[Job], tiles_dir: Path, progress: bool) -> None:
    """Extraction with one reader-worker pool for all slides: first check each slide (open, coords;
    failures recorded as usual), then encode every valid slide's tiles through one loader, writing
    each slide's file as soon as its last tile is encoded. A tile that cannot be read (in a reader
    worker or here) fails its slide only: named in one line, recorded, and the others go on."""
    from adaptome.domains.pathology.extract import encode_many, feature_attrs, write_features
    from adaptome.domains.pathology.tiling import read_coords, slide_geometry

    ready, meta = [], []
    for job in jobs:
        try:
            coords, attrs = read_coords(tiles_dir / f"{job.sid}.h5")
            s = open_slide(job.path)
            try:
                geom = slide_geometry(attrs, s, job.path, tiles_dir / f"{job.sid}.h5")
            finally:
                s.close()
        except Exception as e:
            msg = user_failure(e, job.path)
            if msg is None:
                raise
            fail(summary, job.sid, msg, cfg.skip_errors)
            continue
        start_job(summary, job)
        ready.append((str(job.path), geom, coords))
        meta.append((job, coords, attrs))

    with progress_bar("extract", len(ready), enabled=progress, transient=True) as bar:
        def on_slide(i: int, feats: np.ndarray) -> None:
            job, coords, attrs = meta[i]
            write_features(job.target, feats, coords, feature_attrs(encoder, attrs, feats.shape[1]))
            job_done(summary, job)
            bar.advance()

        def on_fail(i: int, msg: str) -> None:
            bar.advance()
            fail(summary, meta[i][0].sid, msg, cfg.skip_errors)

        encode_many(encoder, ready, on_slide, cfg.batch_size, cfg.num_workers, cfg.device, on_fail=on_fail)


def score(cfg, progress: bool = True) -> tuple[StageSummary, Path]:
    """Score slides with stored features and trained fold models (``cfg``: ``config.ScoreConfig``);
    returns the summary and the ``slides.csv`` path (``cases.csv`` beside it: ``score.write_case_csv``)."""
    import json

    from adaptome.domains.pathology.score import (
        features_on_the_fly,
        load_models,
        score_features,
        score_slide,
        write_case_csv,
        write_slide_csv,
    )

    if cfg.labels:  # a bad sheet is refused before any slide is scored
        from adaptome.domains.pathology.labels import read_case_sheet

        read_case_sheet(cfg.labels)
    models = load_models(cfg.model)
    out = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.model) / "scores"
    fdir = Path(cfg.features_dir) if cfg.features_dir else None
    rows = []
    encoder = None
    overrides: dict[str, float] = {}
    mj = Path(cfg.model) / "model.json"
    mj = mj if mj.is_file() else sorted(Path(cfg.model).glob("fold_*/model.json"))[0]
    recipe = json.loads(mj.read_text()).get("features")  # what made the features the models were trained on
    if fdir is None:  # compute features on the fly with the recipe the models were trained on
        from adaptome.domains.pathology.encoders import build_encoder

        if not recipe:
            raise PathologyError(f"{mj}: no feature recipe recorded; give --features-dir")
        if "encoder_options" not in recipe and recipe["encoder"] == "baseline":
            raise PathologyError(f"{mj}: the model records no encoder options (trained on features made before "
                                 "they were recorded), so its features cannot be re-created exactly; give "
                                 "--features-dir with the features it was trained on, or retrain it")
        opts = recipe.get("encoder_options") or None
        if recipe["encoder"] == "baseline" and opts is not None and "centre" not in opts:
            opts = {**opts, "centre": False}  # recorded before the option existed: raw stain / texture numbers
        encoder = build_encoder(recipe["encoder"], cfg.encoder_weights, opts)
        trained_on = recipe.get("encoder_weights")
        if trained_on and trained_on != encoder.weights_id:
            raise PathologyError(f"{mj}: the model was trained on features of encoder weights {trained_on}, but "
                                 f"--encoder-weights {cfg.encoder_weights or '(none)'} gives {encoder.weights_id}; "
                                 "pass the weights the features were extracted with, or --features-dir")
        overrides = read_mpp_csv(cfg.mpp_csv)
        if recipe.get("roi") and not cfg.roi_dir:
            raise PathologyError(f"{mj}: the model was trained on tiles inside regions of interest (tiled with "
                                 "roi_dir); scoring the whole tissue would score tiles of a kind it never saw: give "
                                 "--set roi_dir=<folder of <slide_id>.geojson>, or --features-dir")
    roi_classes = cfg.roi_classes if cfg.roi_classes is not None else json.loads(
        str((recipe or {}).get("roi_classes", "[]")))
    model_files = sorted(Path(cfg.model).glob("**/model.safetensors"))
    params = {"features": "stored" if fdir else recipe, "encoder_weights": cfg.encoder_weights,
              "heatmaps": cfg.heatmaps, "thumb_size": cfg.thumb_size}
    if cfg.roi_dir:  # recorded only when set: results made before the option stay valid
        params["roi_classes"] = sorted(roi_classes)
    if cfg.allow_upsample:
        params["allow_upsample"] = True

    def made_by(sid: str, path: Path) -> dict:
        feat = fdir / f"{sid}.h5" if fdir else None
        roi = _roi_file(cfg.roi_dir, sid)
        return identity(params, {"slide": file_stamp(path), "features": file_stamp(feat) if feat else None,
                                 **({"roi": file_stamp(roi) if roi.is_file() else None} if roi else {}),
                                 "models": {str(p.parent.name): file_stamp(p) for p in model_files},
                                 "encoder_weights": _weights_stamp(cfg.encoder_weights)},
                        slide={"mpp_override": _override(overrides, path)})

    def work(sid: str, path: Path, target: Path) -> None:
        if fdir is None:
            feats, coords, attrs = features_on_the_fly(path, recipe, encoder, overrides, cfg.batch_size,
                                                       cfg.num_workers, cfg.device, _roi_file(cfg.roi_dir, sid),
                                                       roi_classes, cfg.allow_upsample)
            rows.append(score_features(path, feats, coords, attrs, models, out, cfg.heatmaps, cfg.thumb_size))
            return
        feat = fdir / f"{sid}.h5"
        if not feat.is_file():
            raise PathologyError(f"{feat}: no features for slide {sid}; run 'tile' and 'extract' first")
        rows.append(score_slide(path, feat, models, out, cfg.heatmaps, cfg.thumb_size, recipe))

    try:
        # scores of slides outside this run made by other model files (retrained since) are refused, or with
        # overwrite removed: slides.csv would otherwise list two models' scores side by side
        summary = run_stage("score", _items(cfg.slides), out, lambda sid: out / "tiles" / f"{sid}.csv", work,
                            cfg.skip_errors, progress, made_by, cfg.overwrite, on_start=lambda: save_config(cfg, out),
                            shared_inputs=("models",))
    except SlideError:  # stopped at a failed slide: keep the slides scored so far, drop the failed one's old row
        write_slide_csv(rows, out / "slides.csv")
        write_case_csv(out / "slides.csv", cfg.labels)
        raise
    for sid in summary.removed:  # the rest of a removed slide's outputs (its tiles CSV and record are gone)
        for p in (out / "tiles" / f"{sid}.geojson", out / "heatmaps" / f"{sid}_score.png",
                  out / "heatmaps" / f"{sid}_attention.png"):
            p.unlink(missing_ok=True)
    write_slide_csv(rows, out / "slides.csv", drop=summary.removed)
    write_case_csv(out / "slides.csv", cfg.labels)
    return summary, out / "slides.csv"


def train_dir(cfg) -> Path:
    """``mil_<aggregation>_<group_by>_k<k>[_shuffled]`` under ``out_dir`` (default: the features folder)."""
    tag = f"mil_{cfg.aggregation}_{cfg.group_by}_k{cfg.k}" + ("_shuffled" if cfg.shuffle_labels else "")
    return Path(cfg.out_dir or cfg.features_dir) / tag


def train(cfg, progress: bool = True) -> dict:
    """k-fold CV of the MIL regressor (``cfg``: ``config.MILTrainConfig``). Fold models are reused only
    when the same parameters, label file contents and feature files made them (slides whose target cell is
    empty are left out and listed as ``no_target``); other labels or
    features: retrained, saying why; other parameters or another feature width: refused unless
    ``overwrite``. Writes ``summary.json`` / ``summary.md`` (see ``train_summary.py``); a run that stops
    before any fold model is saved removes the folder it created (nothing half-made is left)."""
    from adaptome.domains.pathology.train import (
        TRAIN_OPTIONS,
        check_groups,
        read_label_sheet,
        train_cv,
        train_identity,
    )
    from adaptome.domains.pathology.train_summary import prepare_run, record_run, write_train_summary

    out = train_dir(cfg)
    rows, no_target = read_label_sheet(cfg.labels)  # slides with an empty target: left out, listed
    check_groups(rows, cfg.k, cfg.group_by, cfg.labels)  # before anything is written or removed
    labelled = {r["slide_id"] for r in rows} | set(no_target)
    unlabelled = sorted(p.stem for p in Path(cfg.features_dir).glob("*.h5") if p.stem not in labelled)
    params = {k: getattr(cfg, k) for k in TRAIN_OPTIONS}
    current = train_identity(cfg.features_dir, cfg.labels, rows, params)
    redo = prepare_run(out, current, cfg.features_dir, cfg.overwrite)  # refuses before anything is written
    created = next((d for d in (*reversed(out.parents), out) if not d.exists()), None)  # the top folder made here
    save_config(cfg, out)
    record_run(out, current)
    write_train_summary(out, {"status": "running"}, cfg.cutoff)
    try:
        kw = {k: getattr(cfg, k) for k in TRAIN_OPTIONS}
        res = train_cv(cfg.features_dir, cfg.labels, out, progress=progress, made_by=current, **kw)
    except BaseException as e:
        if created is not None and not any(out.glob("fold_*/model.safetensors")):
            shutil.rmtree(created, ignore_errors=True)  # made by this run and holding no model: not left half-made
            raise
        why = str(e).splitlines()[0] if str(e) else ""
        write_train_summary(out, {"status": f"stopped ({type(e).__name__}: {why}); no complete result"}, cfg.cutoff)
        raise
    res.update(out_dir=str(out), redo_reason=redo, unlabelled=unlabelled, no_target=sorted(no_target))
    res["summary"] = write_train_summary(out, {**res, "status": "complete"}, cfg.cutoff)
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
    enc = build_encoder(cfg.encoder, None, cfg.encoder_options, seed=cfg.seed)
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
