"""A user's own pyramidal TIFFs through the CLI, for what a later stage must re-create or keep apart from an
earlier one: the tissue-mask settings a model's tiles were chosen with (scoring on the fly must choose the
same tiles), scores of an earlier model left in a scoring folder, and a slide scanned coarser than the
resolution a model was trained at (scoring on the fly refuses it, as ``tile`` does)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from adaptome.domains.pathology.cli import app


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _write_slide(path, seed: int, mpp: float = 0.5, size: int = 1024) -> None:
    """A two-level tiled TIFF (resolution tags in pixels per cm) of pink tissue with purple nuclei: one large
    piece and one small piece of 2 x 2 tiles (64 px) at the lower right, 1.6 % of the slide's area."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 238, np.uint8) + rng.integers(0, 4, (size, size, 3)).astype(np.uint8)
    tissue = np.zeros((size, size), bool)
    tissue[64:576, 64:640] = True
    tissue[768:896, 768:896] = True  # the small piece
    img[tissue] = (225, 150, 190)
    yy, xx = np.mgrid[0:size, 0:size]
    for cx, cy in rng.integers(0, size, (900, 2)):
        if tissue[cy, cx]:
            img[((xx - cx) ** 2 + (yy - cy) ** 2 < 25) & tissue] = (90, 40, 140)
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tif:
        for i, im in enumerate((img, np.asarray(Image.fromarray(img).resize((size // 2, size // 2), Image.BOX)))):
            tif.write(im, tile=(128, 128), photometric="rgb", compression="zlib", subfiletype=1 if i else 0, **res)


def _cohort(tmp_path, n: int = 2):
    d = tmp_path / "slides"
    d.mkdir()
    rows = []
    for i in range(n):
        _write_slide(d / f"s{i}.tiff", i)
        rows.append({"slide_id": f"s{i}", "case_id": f"c{i}", "target": 10 + 20 * i})
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["slide_id", "case_id", "target"])
        w.writeheader()
        w.writerows(rows)
    return d, labels


def _n_tiles(slides_csv) -> dict[str, int]:
    with open(slides_csv, newline="") as f:
        return {r["slide_id"]: int(r["n_tiles"]) for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict:
    """Two slides tiled with ``min_area_frac=0.05`` (the small tissue piece is not tissue), baseline features."""
    tmp_path = tmp_path_factory.mktemp("audit_recipes")
    d, labels = _cohort(tmp_path)
    r = _cli("tile", d, "--out", tmp_path / "job", "--tile-size", 64, "--set", "min_area_frac=0.05",
             "--set", "thumb_size=256")
    assert r.exit_code == 0, r.output
    tiles = tmp_path / "job" / "tiles_20x_64px_0ov"
    r = _cli("extract", d, "--tiles-dir", tiles, "--num-workers", 0)
    assert r.exit_code == 0, r.output
    return {"slides": d, "labels": labels, "tiles": tiles, "features": tiles / "features_baseline"}


def _train(job, labels, out):
    r = _cli("train", "--features-dir", job["features"], "--labels", labels, "--out", out, "--k", 2,
             "--set", "max_steps=3", "--set", "batch_size=1")
    assert r.exit_code == 0, r.output
    return next(out.glob("mil_*"))


def test_scoring_on_the_fly_chooses_tiles_with_the_tissue_mask_settings_the_model_was_trained_with(job, tmp_path):
    """A model trained on tiles chosen with ``min_area_frac=0.05`` and scored on the fly must drop the small piece
    too: before, the recipe kept none of the mask settings (blur, close, min_area_frac) and the defaults chose 4
    more tiles per slide, tissue the model never saw, without a word."""
    d, tiles = job["slides"], job["tiles"]
    model = _train(job, job["labels"], tmp_path / "mil")
    recipe = json.loads((model / "fold_0" / "model.json").read_text())["features"]
    assert recipe["min_area_frac"] == 0.05 and recipe["blur"] == 5 and recipe["close"] == 2, recipe
    r = _cli("score", d, "--model", model, "--features-dir", tiles / "features_baseline", "--out", tmp_path / "st",
             "--set", "heatmaps=false")
    assert r.exit_code == 0, r.output
    r = _cli("score", d, "--model", model, "--out", tmp_path / "fly", "--set", "heatmaps=false")
    assert r.exit_code == 0, r.output
    stored, fly = _n_tiles(tmp_path / "st" / "slides.csv"), _n_tiles(tmp_path / "fly" / "slides.csv")
    assert fly == stored, (fly, stored)
    r = _cli("tile", d, "--out", tmp_path / "default", "--tile-size", 64, "--set", "thumb_size=256")
    assert r.exit_code == 0, r.output
    import h5py

    with h5py.File(tmp_path / "default" / "tiles_20x_64px_0ov" / "s0.h5", "r") as f:  # the piece is 4 tiles
        assert len(f["coords"]) == stored["s0"] + 4


def test_score_refuses_to_list_an_earlier_models_scores_beside_the_new_ones(job, tmp_path):
    """Slides scored into a folder, the model retrained (new labels), then one slide scored again: the other
    slide's row in ``slides.csv`` came from the earlier model and stayed there, beside the new model's, without
    a word. Now refused (nothing written), naming the slide; ``--overwrite`` removes its outputs and row."""
    d = job["slides"]
    model = _train(job, job["labels"], tmp_path / "mil")
    out = tmp_path / "scores"
    r = _cli("score", d, "--model", model, "--features-dir", job["features"], "--out", out)
    assert r.exit_code == 0, r.output
    assert set(_n_tiles(out / "slides.csv")) == {"s0", "s1"}
    labels2 = tmp_path / "labels2.csv"
    labels2.write_text(job["labels"].read_text().replace("s1,c1,30", "s1,c1,70"))
    assert _train(job, labels2, tmp_path / "mil") == model  # retrained in place
    one = tmp_path / "one"
    one.mkdir()
    import shutil

    shutil.copy2(d / "s0.tiff", one / "s0.tiff")
    before = (out / "slides.csv").read_text()
    r = _cli("score", one, "--model", model, "--features-dir", job["features"], "--out", out)
    assert r.exit_code == 2, r.output
    assert "1 slide(s) outside this run (e.g. s1) were made from other models than this run's" in r.output, r.output
    assert (out / "slides.csv").read_text() == before
    r = _cli("score", one, "--model", model, "--features-dir", job["features"], "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert "removed s1" in r.output, r.output
    assert set(_n_tiles(out / "slides.csv")) == {"s0"}
    assert not any((out / "tiles").glob("s1.*")) and not any((out / "heatmaps").glob("s1_*"))


def test_scoring_on_the_fly_refuses_a_slide_scanned_coarser_than_the_models_tiles(job, tmp_path):
    """A 10x scan (1 um/px) scored on the fly by a model trained on 20x tiles (0.5 um/px): ``tile`` refuses to
    enlarge its pixels, but scoring did it without a word (its tiles twice the field of view the model saw).
    Now the slide fails naming both resolutions, unscored; ``--set allow_upsample=true`` scores it."""
    model = _train(job, job["labels"], tmp_path / "mil")
    d = tmp_path / "lowres"
    d.mkdir()
    _write_slide(d / "x10.tiff", 5, mpp=1.0, size=512)
    r = _cli("score", d, "--model", model, "--out", tmp_path / "s", "--set", "heatmaps=false")
    assert r.exit_code == 2, r.output
    assert "x10.tiff: scanned at 1 um/px (about 10x), coarser than the target 0.5 um/px" in r.output, r.output
    assert not (tmp_path / "s" / "tiles" / "x10.csv").exists()
    assert not (tmp_path / "s" / "slides.csv").exists() or _n_tiles(tmp_path / "s" / "slides.csv") == {}
    r = _cli("score", d, "--model", model, "--out", tmp_path / "s", "--set", "heatmaps=false",
             "--set", "allow_upsample=true")
    assert r.exit_code == 0, r.output
    assert set(_n_tiles(tmp_path / "s" / "slides.csv")) == {"x10"}


def test_evaluate_does_not_fit_baselines_on_tiles_made_again_after_the_run(tmp_path):
    """The tiles re-made with another ``min_tissue`` (``tile --overwrite``) after a run trained: ``evaluate``
    fitted the baselines on the new tiles and reported them beside the MIL's predictions from the old ones, as
    if on the same data. Now the report says the baselines are not computed and why; the MIL metrics stay."""
    d, labels = _cohort(tmp_path)
    tiles = tmp_path / "job" / "tiles_20x_64px_0ov"
    for step in (("tile", d, "--out", tmp_path / "job", "--tile-size", 64, "--set", "thumb_size=256"),
                 ("extract", d, "--tiles-dir", tiles, "--num-workers", 0)):
        r = _cli(*step)
        assert r.exit_code == 0, r.output
    model = _train({"features": tiles / "features_baseline"}, labels, tmp_path / "mil")
    r = _cli("evaluate", model / "predictions.csv")
    assert r.exit_code == 0 and "baseline dark_pixels: R2" in r.output, r.output
    r = _cli("tile", d, "--out", tmp_path / "job", "--tile-size", 64, "--set", "thumb_size=256",
             "--set", "min_tissue=0.3", "--overwrite")
    assert r.exit_code == 0, r.output
    r = _cli("evaluate", model / "predictions.csv")
    assert r.exit_code == 0, r.output
    assert "baseline dark_pixels" not in r.output and "baselines not computed: the tiles of s" in r.output, r.output
    assert "were made again after the run's features were extracted from them" in r.output, r.output
    metrics = json.loads((model / "eval_cut30" / "metrics.json").read_text())
    assert metrics["baselines"] == {} and metrics["n_slides"] == 2


def test_train_by_site_refuses_a_case_with_slides_at_two_sites(tmp_path):
    """A patient's two slides labelled with two sites (a biopsy and a resection scanned at two centres):
    ``--group-by site`` put them in different folds, so the patient was in training when its other slide was
    tested, without a word. Refused before anything is written, naming the case, its slides and sites."""
    labels = tmp_path / "labels.csv"
    rows = ["slide_id,case_id,target,site"] + [f"s{i},c{i},{10 + 5 * i},site_{i % 3}" for i in range(6)]
    rows.append("s6,c1,40,site_2")  # c1's first slide is at site_1
    labels.write_text("\n".join(rows) + "\n")
    feats = tmp_path / "features"
    feats.mkdir()
    r = _cli("train", "--features-dir", feats, "--labels", labels, "--k", 3, "--group-by", "site",
             "--out", tmp_path / "mil")
    assert r.exit_code == 2, r.output
    assert ("1 case(s) have slides under several site values, e.g. case 'c1' (s1 at 'site_1', s6 at 'site_2'); "
            "--group-by site would put them in different folds") in r.output, r.output
    assert not (tmp_path / "mil").exists()
