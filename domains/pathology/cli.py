"""``adaptome pathology ...``: segment | tile | extract | pretrain-encoder | train | score | heatmap |
labels | evaluate | synth.

Every command takes an optional ``--config`` YAML (``configs/*.yaml``) and ``--set key=value``
overrides; the common options are also flags. Bad input (an ``AdaptomeError`` or ``OSError``,
``core.cli_errors.user_errors``) gives a one-line error naming the file and exit code 2; anything
else is a bug and surfaces as a traceback. A finished result is reused only when the same parameters
and input files made it (``made_by.py``); one made from other input files is redone (the reason is
printed), one made with other parameters is replaced only with ``--overwrite``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from adaptome.core.cli_errors import fail, user_errors
from adaptome.domains.pathology.config import (
    EvaluateConfig,
    ExtractConfig,
    MILTrainConfig,
    PretrainConfig,
    ScoreConfig,
    SegmentConfig,
    SynthConfig,
    TileConfig,
    field_help,
)

app = typer.Typer(help="Whole-slide images -> tiles -> features -> MIL sTIL % regression, scores, heatmaps.\n\n"
                  "Example: adaptome pathology synth --out runs/synth", no_args_is_help=True)

_CFG = typer.Option(None, "--config", "-c", help="YAML config (see domains/pathology/configs/)")


def _opt(cls, name: str, flag: str):
    """An option that sets config field ``name``; its help is the field's documentation."""
    return typer.Option(None, flag, help=field_help(cls, name).replace("``", ""))


def _arg(cls, name: str):
    return typer.Argument(None, help=field_help(cls, name).replace("``", ""))
_SET = typer.Option([], "--set", help="override a key: --set tile_size=512 (repeatable)")


def _build(cls, config: Optional[Path], set_: list[str], **flags):
    from adaptome.core.config import apply_overrides, from_dict, read_yaml

    data = read_yaml(config) if config else {}
    data.update({k: v for k, v in flags.items() if v is not None})
    data = apply_overrides(data, set_)
    return from_dict(cls, data, source=config or "--set")


def _run(fn):
    """Run a stage; a user error (``AdaptomeError``, ``OSError``) becomes one line + exit 2."""
    with user_errors():
        return fn()


def _report(summary) -> None:
    typer.echo(summary.line())
    for sid, why in summary.redone.items():
        typer.echo(f"  redone {sid}: {why}")
    for sid in summary.removed:
        typer.echo(f"  removed {sid}: made with other parameters or model files (--overwrite)")
    for sid, why in summary.skipped.items():
        typer.secho(f"  skipped {sid}: {why}", fg=typer.colors.YELLOW)
    for sid, msg in summary.failed.items():
        typer.secho(f"  failed {sid}: {msg}", fg=typer.colors.YELLOW)


def _warn_random(encoder: str, weights) -> None:
    """A timm encoder without weights is random (seeded, so reproducible): say so."""
    if encoder.startswith("timm:") and not weights:
        from adaptome.domains.pathology.encoders import RANDOM_WEIGHTS_SEED

        typer.secho(f"warning: {encoder} has no --weights: its weights are random (seed {RANDOM_WEIGHTS_SEED}, the "
                    f"same on every run), not pretrained", fg=typer.colors.YELLOW, err=True)


@app.command()
def segment(slides: Optional[str] = _arg(SegmentConfig, "slides"),
            out: Optional[str] = _opt(SegmentConfig, "out_dir", "--out"),
            skip_errors: Optional[bool] = _opt(SegmentConfig, "skip_errors", "--skip-errors"),
            overwrite: Optional[bool] = _opt(SegmentConfig, "overwrite", "--overwrite"),
            config: Optional[Path] = _CFG, set_: list[str] = _SET) -> None:
    """Tissue mask (Otsu on saturation + morphology): mask PNG, GeoJSON contours, QC thumbnail.

    Example: adaptome pathology segment slides/ --out runs/job
    """
    from adaptome.domains.pathology import stages

    cfg = _run(lambda: _build(SegmentConfig, config, set_, slides=slides, out_dir=out, skip_errors=skip_errors,
                              overwrite=overwrite))
    _report(_run(lambda: stages.segment(cfg)))


@app.command()
def tile(slides: Optional[str] = _arg(TileConfig, "slides"),
         out: Optional[str] = _opt(TileConfig, "out_dir", "--out"),
         mag: Optional[float] = _opt(TileConfig, "magnification", "--mag"),
         mpp: Optional[float] = _opt(TileConfig, "mpp", "--mpp"),
         tile_size: Optional[int] = _opt(TileConfig, "tile_size", "--tile-size"),
         overlap: Optional[int] = _opt(TileConfig, "overlap", "--overlap"),
         mpp_csv: Optional[str] = _opt(TileConfig, "mpp_csv", "--mpp-csv"),
         skip_errors: Optional[bool] = _opt(TileConfig, "skip_errors", "--skip-errors"),
         overwrite: Optional[bool] = _opt(TileConfig, "overwrite", "--overwrite"),
         config: Optional[Path] = _CFG, set_: list[str] = _SET) -> None:
    """Tile coordinates at a magnification or MPP, kept where tissue (and an optional ROI) covers them.

    Example: adaptome pathology tile slides/ --out runs/job --mag 20 --tile-size 256
    """
    from adaptome.domains.pathology import stages

    flags = {k: v for k, v in dict(slides=slides, out_dir=out, tile_size=tile_size, overlap=overlap,
                                   mpp_csv=mpp_csv, skip_errors=skip_errors, magnification=mag,
                                   overwrite=overwrite).items()
             if v is not None}
    if mpp is not None:  # --mpp replaces the default magnification
        flags.update(mpp=mpp, magnification=mag)
    cfg = _run(lambda: _build_none(TileConfig, config, set_, flags))
    note = stages.segment_mismatch(cfg)
    if note:
        typer.secho(note, fg=typer.colors.YELLOW)
    _report(_run(lambda: stages.tile(cfg)))


def _build_none(cls, config, set_, flags):
    """Like ``_build`` but keeps explicit ``None`` flags (``--mpp`` clears the magnification)."""
    from adaptome.core.config import apply_overrides, from_dict, read_yaml

    data = read_yaml(config) if config else {}
    data.update(flags)
    return from_dict(cls, apply_overrides(data, set_), source=config or "--set")


@app.command()
def extract(slides: Optional[str] = _arg(ExtractConfig, "slides"),
            tiles_dir: Optional[str] = _opt(ExtractConfig, "tiles_dir", "--tiles-dir"),
            encoder: Optional[str] = _opt(ExtractConfig, "encoder", "--encoder"),
            weights: Optional[str] = _opt(ExtractConfig, "weights", "--weights"),
            num_workers: Optional[int] = _opt(ExtractConfig, "num_workers", "--num-workers"),
            batch_size: Optional[int] = _opt(ExtractConfig, "batch_size", "--batch-size"),
            device: Optional[str] = _opt(ExtractConfig, "device", "--device"),
            skip_errors: Optional[bool] = _opt(ExtractConfig, "skip_errors", "--skip-errors"),
            overwrite: Optional[bool] = _opt(ExtractConfig, "overwrite", "--overwrite"),
            config: Optional[Path] = _CFG, set_: list[str] = _SET) -> None:
    """Tile features (one HDF5 per slide: features, coords, attributes) with an encoder.

    Example: adaptome pathology extract slides/ --tiles-dir runs/job/tiles_20x_256px_0ov --encoder baseline
    """
    from adaptome.domains.pathology import stages

    cfg = _run(lambda: _build(ExtractConfig, config, set_, slides=slides, tiles_dir=tiles_dir, encoder=encoder,
                              weights=weights, num_workers=num_workers, batch_size=batch_size, device=device,
                              skip_errors=skip_errors, overwrite=overwrite))
    _warn_random(cfg.encoder, cfg.weights)
    _report(_run(lambda: stages.extract(cfg)))


@app.command("pretrain-encoder")
def pretrain_encoder(slides: Optional[str] = _arg(PretrainConfig, "slides"),
                     tiles_dir: Optional[str] = _opt(PretrainConfig, "tiles_dir", "--tiles-dir"),
                     out: Optional[str] = _opt(PretrainConfig, "out_dir", "--out"),
                     encoder: Optional[str] = _opt(PretrainConfig, "encoder", "--encoder"),
                     max_steps: Optional[int] = _opt(PretrainConfig, "max_steps", "--max-steps"),
                     config: Optional[Path] = _CFG, set_: list[str] = _SET) -> None:
    """SimCLR pretraining of a tile encoder on unlabeled tiles; writes encoder.safetensors.

    Example: adaptome pathology pretrain-encoder slides/ --tiles-dir runs/job/tiles_20x_256px_0ov
    --encoder timm:resnet18
    """
    from adaptome.domains.pathology import stages

    cfg = _run(lambda: _build(PretrainConfig, config, set_, slides=slides, tiles_dir=tiles_dir, out_dir=out,
                              encoder=encoder, max_steps=max_steps))
    res = _run(lambda: stages.pretrain_encoder(cfg))
    typer.echo(f"SimCLR loss {res['losses'][0]:.3f} -> {res['losses'][-1]:.3f}; weights: {res['weights']}")


@app.command()
def train(features_dir: Optional[str] = _opt(MILTrainConfig, "features_dir", "--features-dir"),
          labels: Optional[str] = _opt(MILTrainConfig, "labels", "--labels"),
          out: Optional[str] = _opt(MILTrainConfig, "out_dir", "--out"),
          k: Optional[int] = _opt(MILTrainConfig, "k", "--k"),
          group_by: Optional[str] = _opt(MILTrainConfig, "group_by", "--group-by"),
          aggregation: Optional[str] = _opt(MILTrainConfig, "aggregation", "--aggregation"),
          shuffle_labels: Optional[bool] = _opt(MILTrainConfig, "shuffle_labels", "--shuffle-labels"),
          overwrite: Optional[bool] = _opt(MILTrainConfig, "overwrite", "--overwrite"),
          config: Optional[Path] = _CFG, set_: list[str] = _SET) -> None:
    """k-fold CV training of the MIL sTIL regressor (MSE on label/100); best fold models saved.

    Example: adaptome pathology train --features-dir runs/job/tiles_20x_256px_0ov/features_baseline --labels labels.csv
    """
    from adaptome.domains.pathology import stages

    cfg = _run(lambda: _build(MILTrainConfig, config, set_, features_dir=features_dir, labels=labels, out_dir=out,
                              k=k, group_by=group_by, aggregation=aggregation, shuffle_labels=shuffle_labels,
                              overwrite=overwrite))
    res = _run(lambda: stages.train(cfg))
    s = res["summary"]
    if res["redo_reason"]:
        typer.echo(f"retraining the earlier fold models: {res['redo_reason']}")
    done = [f"{len(s['trained'])} folds trained"] + [f"{len(s['reused'])} reused (same inputs)"] * bool(s["reused"])
    auc, r2 = s["auc"], s["r2"]
    auc_txt = "n/a" if auc["mean"] is None else f"{auc['mean']:.3f}"
    r2_txt = "n/a" if r2["mean"] is None else f"{r2['mean']:.3f}"
    c = s["per_case"]
    per = "per slide " if c["several_slides"] else ""
    typer.echo(f"{', '.join(done)} -> {res['out_dir']}; {per}fold R2 {r2_txt} over {r2['n_folds']} of {r2['of_folds']} "
               f"folds, AUC {auc_txt} over {auc['n_folds']} of {auc['of_folds']} folds; predictions: "
               f"{res['predictions']}")
    if c["several_slides"]:  # a case with two slides counts twice per slide
        from adaptome.domains.pathology.evaluate import case_note

        typer.echo(f"  per case ({case_note(c['n_cases'], c['several_slides'])}; mean of its slides' predictions): "
                   f"fold R2 {_mean_sd(c['r2'], c['r2']['of_folds'])}, AUC {_mean_sd(c['auc'], c['auc']['of_folds'])}; "
                   f"pooled R2 {_num(c['pooled']['r2'])}")
    if s["unlabelled"]:
        typer.secho(f"  {len(s['unlabelled'])} feature file(s) without a label left out, e.g. {s['unlabelled'][:3]}",
                    fg=typer.colors.YELLOW)
    if s["no_target"]:
        typer.secho(f"  {len(s['no_target'])} labelled slide(s) without a target (empty cell) left out: "
                    f"{s['no_target'][:10]}{' ...' * (len(s['no_target']) > 10)}", fg=typer.colors.YELLOW)
    for f, why in r2["folds_without_r2"].items():
        typer.secho(f"  fold {f} has no R2: {why}", fg=typer.colors.YELLOW)
    for f, why in auc["folds_without_auc"].items():
        typer.secho(f"  fold {f} has no AUC: {why}", fg=typer.colors.YELLOW)


@app.command()
def score(slides: Optional[str] = _arg(ScoreConfig, "slides"),
          model: Optional[str] = _opt(ScoreConfig, "model", "--model"),
          features_dir: Optional[str] = _opt(ScoreConfig, "features_dir", "--features-dir"),
          out: Optional[str] = _opt(ScoreConfig, "out_dir", "--out"),
          mpp_csv: Optional[str] = _opt(ScoreConfig, "mpp_csv", "--mpp-csv"),
          skip_errors: Optional[bool] = _opt(ScoreConfig, "skip_errors", "--skip-errors"),
          overwrite: Optional[bool] = _opt(ScoreConfig, "overwrite", "--overwrite"),
          labels: Optional[str] = _opt(ScoreConfig, "labels", "--labels"),
          config: Optional[Path] = _CFG, set_: list[str] = _SET) -> None:
    """Slide sTIL % (CSV), case sTIL % (cases.csv: the mean of a case's slides, for TCGA barcodes or with
    --labels), per-tile scores (CSV + GeoJSON for QuPath) and heatmap PNGs.

    Example: adaptome pathology score slides/
    --model runs/job/tiles_20x_256px_0ov/features_baseline/mil_ratio_case_id_k5
    --features-dir runs/job/tiles_20x_256px_0ov/features_baseline
    """
    from adaptome.domains.pathology import stages

    cfg = _run(lambda: _build(ScoreConfig, config, set_, slides=slides, model=model, features_dir=features_dir,
                              out_dir=out, mpp_csv=mpp_csv, skip_errors=skip_errors, overwrite=overwrite,
                              labels=labels))
    summary, csv_path = _run(lambda: stages.score(cfg))
    _report(summary)
    typer.echo(f"slide scores: {csv_path}")
    if (csv_path.parent / "cases.csv").is_file():
        from adaptome.domains.pathology.score import case_table_line

        typer.echo(case_table_line(csv_path.parent / "cases.csv", cfg.labels))


@app.command()
def heatmap(slide: Path = typer.Argument(..., help="slide file"),
            tiles_csv: Path = typer.Argument(..., help="tiles/<slide>.csv written by 'score'"),
            out: Path = typer.Option(..., help="output PNG"),
            column: str = typer.Option("score_pct", help="score_pct | attention"),
            cmap: str = typer.Option("jet"), alpha: float = typer.Option(0.45),
            thumb_size: int = typer.Option(1024, "--thumb-size")) -> None:
    """Re-render a heatmap of per-tile values over the slide thumbnail (the slide the tiles were scored on: a
    score run's record beside tiles/ names it, and another file is refused).

    Example: adaptome pathology heatmap slide.svs scores/tiles/slide.csv --out slide_attention.png --column attention
    """
    import csv

    import numpy as np

    from adaptome.domains.pathology.errors import PathologyError
    from adaptome.domains.pathology.score import check_scored_slide, heatmap_image, save_heatmap_png, scale_label
    from adaptome.domains.pathology.slide import open_slide, thumbnail

    if out.exists():
        fail(f"{out}: exists; not overwritten")

    def go():
        if not tiles_csv.is_file():
            raise PathologyError(f"{tiles_csv}: tiles CSV not found")
        rows = list(csv.DictReader(tiles_csv.open()))
        if not rows or column not in rows[0]:
            raise PathologyError(f"{tiles_csv}: no column {column!r}")
        coords = np.array([[float(r["x"]), float(r["y"])] for r in rows])
        vals = np.array([float(r[column]) for r in rows])
        s = open_slide(slide)
        check_scored_slide(tiles_csv, slide)  # another scan of the same tissue fits inside it, at another scale
        w, h = s.dimensions
        size0 = float(rows[0]["size"])
        if ((coords + size0) > np.array([w, h]) + 1).any():  # another slide's tiles would be painted out of place
            raise PathologyError(f"{tiles_csv}: tiles reach beyond {slide} ({w} x {h} px at level 0): the scores of "
                                 "another slide?")
        thumb, scale = thumbnail(s, thumb_size)
        lo, hi = (0.0, 100.0) if column == "score_pct" else (float(vals.min()), float(vals.max()))
        label = scale_label(column, lo, hi)
        img = heatmap_image(np.asarray(thumb), scale, coords, size0, vals, lo, hi, cmap, alpha, label)
        save_heatmap_png(img, out, label, lo, hi, cmap)

    _run(go)
    typer.echo(f"heatmap: {out}")


@app.command()
def labels(table: Path = typer.Argument(..., help="the Digi-sTILs CSV (Number,TCGA Cases IDs,Digi-sTILs Score,"
                                                  "...; scores as fractions), e.g. the shipped "
                                                  "data/digi_stils_tcga/TCGA-cohort.csv, or a case-level sheet "
                                                  "case_id,target[,site] (target in %; an empty target leaves "
                                                  "the case out)"),
           out: Path = typer.Option(..., "--out", help="label CSV to write (slide_id,case_id,target,site; "
                                                     "target in %); an existing file is not overwritten"),
           slides: Optional[str] = typer.Option(None, "--slides", help="slide file or folder: one row per slide "
                                                "whose id starts with a case of the table (TCGA slide barcodes); "
                                                "default: one row per case, slide_id = case id")) -> None:
    """Label CSV from the Digi-sTILs TCGA table (scores x 100) or a case-level sheet, TCGA site, joined to your
    slides by case (every slide of a case gets its row).

    Example: adaptome pathology labels TCGA-cohort.csv --slides slides/ --out labels.csv
    """
    from adaptome.domains.pathology.labels import case_of, case_table_rows, join_slides, write_label_csv
    from adaptome.domains.pathology.slide import list_slides, slide_id

    if out.exists():
        fail(f"{out}: exists; not overwritten")

    def go():
        rows, no_target = case_table_rows(table)
        if slides is None:
            return rows, [], len(rows), no_target, []
        ids = [slide_id(p) for p in list_slides(slides)]
        joined, unmatched, normal = join_slides(rows, ids)
        if not joined:
            from adaptome.domains.pathology.errors import PathologyError

            raise PathologyError(f"{slides}: none of its {len(ids)} slide ids starts with a case of {table} "
                                 f"(e.g. {ids[:3]}; TCGA slide files are named TCGA-<site>-<patient>-...)")
        unscored = set(no_target)  # a slide of a case without a target is that case's, not one without a case
        return joined, [u for u in unmatched if case_of(u) not in unscored], len({r["case_id"] for r in joined}), \
            no_target, normal

    rows, unmatched, n_cases, no_target, normal = _run(go)
    _run(lambda: write_label_csv(rows, out))
    source = "Digi-sTILs score x 100" if "Digi-sTILs Score" in _columns(table) else "the sheet's target"
    typer.echo(f"{len(rows)} rows ({n_cases} cases) -> {out}; target = {source} (%)")
    if unmatched:
        typer.secho(f"  {len(unmatched)} slide(s) without a case in {table.name} left out, e.g. {unmatched[:3]}",
                    fg=typer.colors.YELLOW)
    if normal:
        typer.secho(f"  {len(normal)} slide(s) of normal tissue (TCGA sample type 10-19) left out, e.g. {normal[:3]}",
                    fg=typer.colors.YELLOW)
    if no_target:
        typer.secho(f"  {len(no_target)} case(s) without a target (empty cell) left out: {no_target[:10]}"
                    f"{' ...' * (len(no_target) > 10)}", fg=typer.colors.YELLOW)


def _columns(table: Path) -> list[str]:
    """The header cells of a CSV."""
    import csv

    with table.open(newline="", encoding="utf-8-sig") as f:
        return [c.strip() for c in next(csv.reader(f), [])]


def _num(v) -> str:
    """A metric to 3 decimals, ``n/a`` when undefined (``None`` or NaN)."""
    import math

    return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"


def _mean_sd(m: dict, k: int) -> str:
    """``0.512 ± 0.101 over 3 of 4 folds`` (``n/a`` for the mean when no fold defines the metric)."""
    import math

    mean = "n/a" if m["mean"] is None or math.isnan(m["mean"]) else f"{m['mean']:.3f} ± {m['sd']:.3f}"
    return f"{mean} over {m['n_folds']} of {k} folds"


@app.command()
def evaluate(predictions: Optional[str] = _arg(EvaluateConfig, "predictions"),
             out: Optional[str] = _opt(EvaluateConfig, "out_dir", "--out"),
             cutoff: Optional[float] = _opt(EvaluateConfig, "cutoff", "--cutoff"),
             baselines: Optional[bool] = _opt(EvaluateConfig, "baselines", "--baselines/--no-baselines"),
             tiles_dir: Optional[str] = _opt(EvaluateConfig, "tiles_dir", "--tiles-dir"),
             config: Optional[Path] = _CFG, set_: list[str] = _SET) -> None:
    """R^2, Pearson, Spearman, MSE, ROC AUC (mean +- sd over folds), scatter PNG, JSON + Markdown report.

    Example: adaptome pathology evaluate
    runs/job/tiles_20x_256px_0ov/features_baseline/mil_ratio_case_id_k5/predictions.csv --cutoff 30
    """
    from adaptome.domains.pathology.evaluate import evaluate_predictions

    cfg = _run(lambda: _build(EvaluateConfig, config, set_, predictions=predictions, out_dir=out, cutoff=cutoff,
                              baselines=baselines, tiles_dir=tiles_dir))
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.predictions).parent / f"eval_cut{cfg.cutoff:g}"
    res = _run(lambda: evaluate_predictions(cfg.predictions, out_dir, cfg.cutoff, tiles_dir=cfg.tiles_dir,
                                            labels=cfg.labels, baselines=cfg.baselines))
    s, k = res["mean_sd"], len(res["per_fold"])
    typer.echo(f"MIL: R2 {_mean_sd(s['r2'], k)} (pooled {res['pooled']['r2']:.3f}), AUC {_mean_sd(s['auc'], k)} "
               "(WeakSTIL ref R2 0.45, AUC 0.89)")
    for name, b in res["baselines"].items():
        typer.echo(f"  baseline {name}: R2 {_mean_sd(b['mean_sd']['r2'], k)} (pooled {b['pooled']['r2']:.3f})")
    if not res["baselines"]:
        typer.secho(f"  baselines {res['baselines_note']}", fg=typer.colors.YELLOW)
    c = res["per_case"]
    if c["several_slides"]:  # the lines above are per slide: a case with two slides counts twice there
        from adaptome.domains.pathology.evaluate import case_note

        cs = c["mean_sd"]
        typer.echo(f"MIL per case ({case_note(c['n_cases'], c['several_slides'])}): R2 {_mean_sd(cs['r2'], k)} "
                   f"(pooled {_num(c['pooled']['r2'])}), AUC {_mean_sd(cs['auc'], k)}; a case's prediction is the "
                   f"mean of its slides'; the lines above are per slide")
        for name, b in res["baselines"].items():
            typer.echo(f"  baseline {name} per case: R2 {_mean_sd(b['per_case']['mean_sd']['r2'], k)} "
                       f"(pooled {_num(b['per_case']['pooled']['r2'])})")
    typer.echo(f"report: {out_dir / 'report.md'}")


@app.command()
def synth(out: Optional[str] = _opt(SynthConfig, "out_dir", "--out"),
          n_slides: Optional[int] = _opt(SynthConfig, "n_slides", "--n-slides"),
          seed: Optional[int] = _opt(SynthConfig, "seed", "--seed"),
          compression: Optional[str] = _opt(SynthConfig, "compression", "--compression"),
          config: Optional[Path] = _CFG, set_: list[str] = _SET) -> None:
    """Write a SYNTHETIC cohort: pyramidal TIFFs with a planted sTIL % + labels.csv + per-cell truth.

    Example: adaptome pathology synth --out runs/synth --n-slides 24
    """
    from adaptome.domains.pathology import stages

    cfg = _run(lambda: _build(SynthConfig, config, set_, out_dir=out, n_slides=n_slides, seed=seed,
                              compression=compression))
    labels = _run(lambda: stages.synth(cfg))
    typer.echo(f"{cfg.n_slides} synthetic slides -> {cfg.out_dir}; labels: {labels}")
