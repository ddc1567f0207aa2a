"""Issue 13 section 3, through the CLI: a stage result is reused only when every input that made it is
the same; otherwise it is redone with the reason printed, or refused naming ``--overwrite``."""

from __future__ import annotations

import csv
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adaptome.domains.pathology.cli import app

SLIDES = ("train_000", "train_001", "train_002")


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _errors(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


@pytest.fixture()
def slides(cohort, tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    for sid in SLIDES:
        shutil.copy2(cohort["slides"] / f"{sid}.tiff", d / f"{sid}.tiff")
    return d


def _tile(slides, out, *extra):
    return _cli("tile", slides, "--out", out, "--tile-size", 64, "--set", "thumb_size=256", *extra)


def _state(tdir):
    """(bytes of config.yaml, {slide: (mtime_ns, n tiles, level-0 mpp)})."""
    files = {}
    for p in sorted(tdir.glob("*.h5")):
        with h5py.File(p, "r") as f:
            files[p.stem] = (p.stat().st_mtime_ns, len(f["coords"]), float(f.attrs["mpp"]))
    return (tdir / "config.yaml").read_bytes(), files


def test_tile_refuses_another_min_tissue_and_redoes_it_with_overwrite(slides, tmp_path):
    out = tmp_path / "job"
    tdir = out / "tiles_20x_64px_0ov"
    r = _tile(slides, out)
    assert r.exit_code == 0, r.output
    before = _state(tdir)
    r = _tile(slides, out, "--set", "min_tissue=0.95")
    assert r.exit_code == 2
    err = _errors(r.output)
    assert len(err) == 1 and "min_tissue: 0.5 -> 0.95" in err[0] and "--overwrite" in err[0]
    assert _state(tdir) == before  # refused: config.yaml and every tiles file untouched
    assert "min_tissue: 0.5\n" in before[0].decode()
    r = _tile(slides, out, "--set", "min_tissue=0.95", "--overwrite")
    assert r.exit_code == 0, r.output
    assert r.output.count("redone train_") == 3 and "min_tissue: 0.5 -> 0.95" in r.output
    cfg, after = _state(tdir)
    assert "min_tissue: 0.95\n" in cfg.decode()
    assert all(after[s][1] <= before[1][s][1] for s in SLIDES)  # a stricter tissue filter keeps fewer tiles
    assert sum(after[s][1] for s in SLIDES) < sum(before[1][s][1] for s in SLIDES)
    # the same options again: reused, nothing rewritten
    r = _tile(slides, out, "--set", "min_tissue=0.95")
    assert r.exit_code == 0 and "0 done, 3 reused" in r.output and _state(tdir)[1] == after


def test_tile_refuses_another_mpp_override_and_redoes_only_that_slide(slides, tmp_path):
    out = tmp_path / "job"
    tdir = out / "tiles_20x_64px_0ov"
    assert _tile(slides, out).exit_code == 0
    cfg0, before = _state(tdir)
    mpp_csv = tmp_path / "mpp.csv"
    mpp_csv.write_text("slide,mpp\ntrain_001.tiff,0.25\n")
    r = _tile(slides, out, "--mpp-csv", mpp_csv)
    err = _errors(r.output)
    assert r.exit_code == 2 and len(err) == 1 and "train_001" in err[0] and "mpp_override: null -> 0.25" in err[0]
    assert _state(tdir) == (cfg0, before)
    r = _tile(slides, out, "--mpp-csv", mpp_csv, "--overwrite")
    assert r.exit_code == 0, r.output
    assert "1 done, 2 reused" in r.output and "redone train_001" in r.output
    cfg, after = _state(tdir)
    assert after["train_001"][2] == 0.25 and after["train_001"][1] != before["train_001"][1]
    assert after["train_000"] == before["train_000"] and after["train_002"] == before["train_002"]
    assert "mpp.csv" in cfg.decode()


def test_a_changed_slide_file_is_retiled_and_its_features_redone(slides, tmp_path):
    out = tmp_path / "job"
    tdir = out / "tiles_20x_64px_0ov"
    assert _tile(slides, out).exit_code == 0
    r = _cli("extract", slides, "--tiles-dir", tdir, "--num-workers", 0)
    assert r.exit_code == 0 and "3 done" in r.output
    st = (slides / "train_002.tiff").stat()
    os.utime(slides / "train_002.tiff", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # a new copy
    r = _tile(slides, out)
    assert r.exit_code == 0 and "1 done, 2 reused" in r.output
    assert "redone train_002: input changed: inputs.slide.mtime_ns" in r.output
    r = _cli("extract", slides, "--tiles-dir", tdir, "--num-workers", 0)
    assert r.exit_code == 0 and "1 done, 2 reused" in r.output and "redone train_002" in r.output
    assert "inputs.tiles" in r.output  # the features were made from the old tiles file


def test_extract_refuses_other_encoder_options_and_timm_random_weights_are_seeded(slides, tmp_path):
    """A timm encoder without weights gives the same features on every run (and warns that it is
    random); other encoder options in the same features folder are refused."""
    out = tmp_path / "job"
    assert _tile(slides, out).exit_code == 0
    tdir = out / "tiles_20x_64px_0ov"
    twin = tmp_path / "twin"
    shutil.copytree(tdir, twin)
    opts = "encoder_options={img_size: 32, patch_size: 8, depth: 1, embed_dim: 16, num_heads: 2}"
    feats = []
    for i, d in enumerate((tdir, twin)):
        torch.manual_seed(100 + i)  # the global RNG differs between the runs
        r = _cli("extract", slides, "--tiles-dir", d, "--encoder", "timm:vit_tiny_patch16_224", "--num-workers", 0,
                 "--set", opts)
        assert r.exit_code == 0, r.output
        assert "weights are random (seed 0" in r.output
        with h5py.File(d / "features_timm-vit_tiny_patch16_224" / "train_001.h5", "r") as f:
            feats.append(f["features"][:])
    assert feats[0].shape[1] == 16 and np.array_equal(feats[0], feats[1])
    assert np.abs(feats[0] - feats[0].mean(0)).sum() > 0  # not a constant output
    r = _cli("extract", slides, "--tiles-dir", tdir, "--encoder", "timm:vit_tiny_patch16_224", "--num-workers", 0,
             "--set", opts.replace("embed_dim: 16", "embed_dim: 24"))
    err = _errors(r.output)
    assert r.exit_code == 2 and len(err) == 1 and "embed_dim: 16 -> 24" in err[0] and "--overwrite" in err[0]


def _train(features, labels, out, *extra):
    return _cli("train", "--features-dir", features, "--labels", labels, "--out", out, "--k", 2,
                "--set", "max_steps=12", "--set", "eval_every=6", *extra)


def _preds(run_dir):
    return {r["slide_id"]: float(r["pred"]) for r in csv.DictReader(open(run_dir / "predictions.csv"))}


def test_train_retrains_on_new_labels_and_refuses_another_feature_width(cohort, tmp_path):
    labels = tmp_path / "labels.csv"
    shutil.copy(cohort["labels"], labels)
    out = tmp_path / "mil"
    run = out / "mil_ratio_case_id_k2"
    r = _train(cohort["features_dir"], labels, out)
    assert r.exit_code == 0, r.output
    assert "2 folds trained" in r.output
    first = _preds(run)
    r = _train(cohort["features_dir"], labels, out)
    assert r.exit_code == 0 and "0 folds trained, 2 reused" in r.output and _preds(run) == first
    # the same file name with other targets (same size: 100 - t keeps the digits of most rows)
    rows = list(csv.DictReader(open(cohort["labels"])))
    with labels.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**row, "target": f"{100 - float(row['target']):g}"} for row in rows)
    r = _train(cohort["features_dir"], labels, out)
    assert r.exit_code == 0, r.output
    assert "retraining the earlier fold models: input changed: inputs.labels.sha256" in r.output
    assert "2 folds trained" in r.output
    second = _preds(run)
    targets = {row["slide_id"]: 100 - float(row["target"]) for row in rows}
    assert second != first
    err = [abs(second[s] - targets[s]) for s in targets]
    err_old = [abs(first[s] - targets[s]) for s in targets]
    assert np.mean(err) < np.mean(err_old)  # the new models learned the new labels
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["trained"] == [0, 1] and summary["retrained_because"]
    # the features folder re-extracted with another encoder width: one clear line, nothing changed
    fdir = tmp_path / "features"
    shutil.copytree(cohort["features_dir"], fdir)
    for p in fdir.glob("*.h5"):
        with h5py.File(p, "r+") as f:
            n = len(f["features"])
            del f["features"]
            f["features"] = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
            f.attrs["encoder"] = "timm:tiny8"
    shutil.copytree(run, tmp_path / "mil2" / run.name)
    run2 = tmp_path / "mil2" / run.name
    before = {p: p.read_bytes() for p in sorted(run2.rglob("*")) if p.is_file()}
    r = _train(fdir, labels, tmp_path / "mil2")
    err = _errors(r.output)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and len(err) == 1
    assert "take 44-wide features" in err[0] and "8-wide" in err[0] and "--overwrite" in err[0]
    assert {p: p.read_bytes() for p in sorted(run2.rglob("*")) if p.is_file()} == before
    # mixed widths in one folder: the odd file is named
    with h5py.File(fdir / "train_005.h5", "r+") as f:
        n = len(f["features"])
        del f["features"]
        f["features"] = np.zeros((n, 5), np.float32)
    r = _train(fdir, labels, tmp_path / "mil3")
    err = _errors(r.output)
    assert r.exit_code == 2 and len(err) == 1 and "train_005.h5: 5-wide features" in err[0]


def test_score_redone_when_the_model_changes_and_refused_with_other_options(trained, heldout, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained["real"]["out_dir"], model, ignore=shutil.ignore_patterns("scores"))
    args = ["score", heldout["slides"] / "test_000.tiff", "--model", model, "--features-dir", heldout["features_dir"],
            "--out", tmp_path / "scores", "--set", "heatmaps=false"]
    r = _cli(*args)
    assert r.exit_code == 0 and "score: 1 done" in r.output, r.output
    r = _cli(*args)
    assert r.exit_code == 0 and "score: 0 done, 1 reused" in r.output
    w = model / "fold_0" / "model.safetensors"
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # a retrained fold model
    r = _cli(*args)
    assert r.exit_code == 0 and "redone test_000: input changed: inputs.models.fold_0.mtime_ns" in r.output
    r = _cli(*args[:-1], "heatmaps=true")
    err = _errors(r.output)
    assert r.exit_code == 2 and len(err) == 1 and "params.heatmaps: false -> true" in err[0]


def test_extract_refuses_features_made_before_the_per_slide_stroma_cut(slides, tmp_path):
    """A features folder whose records lack the encoder's resolved options (made before the baseline
    encoder's stroma cut became per slide, same options and width) is not reused: one line naming
    ``encoder_recipe`` and ``--overwrite``; with ``--overwrite`` the features are redone."""
    out = tmp_path / "job"
    assert _tile(slides, out).exit_code == 0
    tdir = out / "tiles_20x_64px_0ov"
    assert _cli("extract", slides, "--tiles-dir", tdir, "--num-workers", 0).exit_code == 0
    rec_dir = tdir / "features_baseline" / "made_by"
    for p in rec_dir.glob("*.json"):  # what an older version wrote: no encoder_recipe
        rec = json.loads(p.read_text())
        assert rec["params"].pop("encoder_recipe") == {"lymph": True, "lymph_radius": 3.0, "stroma_cut": "slide",
                                                       "centre": "scale"}
        p.write_text(json.dumps(rec))
    before = (tdir / "features_baseline" / "train_000.h5").stat().st_mtime_ns
    r = _cli("extract", slides, "--tiles-dir", tdir, "--num-workers", 0)
    err = _errors(r.output)
    assert r.exit_code == 2 and len(err) == 1 and "encoder_recipe" in err[0] and "--overwrite" in err[0], r.output
    assert (tdir / "features_baseline" / "train_000.h5").stat().st_mtime_ns == before  # nothing rewritten
    r = _cli("extract", slides, "--tiles-dir", tdir, "--num-workers", 0, "--overwrite")
    assert r.exit_code == 0 and "3 done" in r.output, r.output


def _write_slide(path, seed: int) -> None:
    """A 512 x 512 tiled RGB TIFF at 0.5 um/px, uncompressed: any content gives the same byte size."""
    import tifffile

    img = np.full((512, 512, 3), 235, np.uint8)
    img[64:448, 64:448] = np.random.default_rng(seed).integers(60, 200, (384, 384, 3), dtype=np.uint8)
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb", resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")


def test_score_refuses_features_of_an_earlier_version_of_a_replaced_slide(trained, tmp_path):
    """A slide rewritten with other pixels but the same byte size and dimensions: ``score`` with the old
    features is refused in one line naming the features file and the slide, and nothing of the old slide
    stays in ``slides.csv``; re-running tile and extract gives its new score."""
    from adaptome.domains.pathology.extract import read_features
    from adaptome.domains.pathology.score import load_models, score_bag

    d = tmp_path / "slides"
    d.mkdir()
    slide = d / "mine_b.tiff"
    _write_slide(slide, 0)
    out, model = tmp_path / "job", trained["real"]["out_dir"]
    tdir = out / "tiles_20x_64px_0ov"
    fdir = tdir / "features_baseline"
    scores = tmp_path / "scores"
    score = ("score", d, "--model", model, "--features-dir", fdir, "--out", scores, "--set", "heatmaps=false")
    assert _tile(d, out).exit_code == 0
    assert _cli("extract", d, "--tiles-dir", tdir, "--num-workers", 0).exit_code == 0
    r = _cli(*score)
    assert r.exit_code == 0, r.output
    old = float(next(csv.DictReader(open(scores / "slides.csv")))["stil_pct"])
    size = slide.stat().st_size
    _write_slide(slide, 1)
    st = slide.stat()
    os.utime(slide, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # a later copy, whatever the clock
    assert st.st_size == size
    r = _cli(*score)
    err = _errors(r.output)
    assert r.exit_code == 2 and len(err) == 1, r.output
    assert f"{fdir / 'mine_b.h5'}: made from another version of the slide {slide}" in err[0], err[0]
    assert "re-run 'tile' and 'extract'" in err[0]
    assert not (scores / "tiles" / "mine_b.csv").exists()
    assert "mine_b" not in (scores / "slides.csv").read_text()  # the old slide's score is not left standing
    assert "redone mine_b" in _tile(d, out).output
    assert "redone mine_b" in _cli("extract", d, "--tiles-dir", tdir, "--num-workers", 0).output
    r = _cli(*score)
    assert r.exit_code == 0 and "score: 1 done" in r.output, r.output
    new = float(next(csv.DictReader(open(scores / "slides.csv")))["stil_pct"])
    feats, _, _ = read_features(fdir / "mine_b.h5")
    assert new == pytest.approx(score_bag(load_models(model), feats)["slide"], abs=1e-3) and new != old
