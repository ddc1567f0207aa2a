"""Issue 13 section 4, through the CLI: every failure is one line naming the slide, recorded in the
summary; good results are kept; summaries are written last and say what is done; strict JSON."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from adaptome.domains.pathology.cli import app

SLIDES = ("train_000", "train_001", "train_002", "train_003")


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _errors(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


def _zero_level0(path, page: int = 0) -> None:
    """Zero every compressed tile of the slide's level 0 (or ``page``): it still opens, its thumbnail
    (from a coarser level) still reads, but no level-0 tile decodes. The modification time is kept, as with
    damage on disk that no file stamp sees (a rewritten slide is refused before any read: ``check_slide_version``)."""
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[page]
        spans = list(zip(page.dataoffsets, page.databytecounts))
    data = bytearray(path.read_bytes())
    for off, n in spans:
        data[off:off + n] = bytes(n)
    st = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture()
def tiled(cohort, tmp_path):
    """Four slides tiled at 20x / 64 px; then train_001's level 0 is zeroed and train_003's tiles file
    removed (as if its tiling had failed)."""
    d = tmp_path / "slides"
    d.mkdir()
    for sid in SLIDES:
        shutil.copy2(cohort["slides"] / f"{sid}.tiff", d / f"{sid}.tiff")
    r = _cli("tile", d, "--out", tmp_path / "job", "--tile-size", 64, "--set", "thumb_size=256")
    assert r.exit_code == 0, r.output
    tdir = tmp_path / "job" / "tiles_20x_64px_0ov"
    _zero_level0(d / "train_001.tiff")
    (tdir / "train_003.h5").unlink()
    return d, tdir


def test_extract_refuses_tiles_of_an_earlier_version_of_a_rewritten_slide(tiled):
    """A slide rewritten after tiling with the same sizes: before, extract read the old tile coordinates on the
    new pixels (check_same_slide compares sizes only). Now it is refused until the slide is tiled again."""
    slides, tdir = tiled
    path = slides / "train_002.tiff"
    _zero_level0(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))  # rewritten: a later modification time
    args = ["extract", slides, "--tiles-dir", tdir]
    r = _cli(*args, "--skip-errors")
    assert r.exit_code == 0, r.output
    summary = json.loads((tdir / "features_baseline" / "summary.json").read_text())
    why = summary["failed"]["train_002"]
    assert "train_002.h5: made from another version of the slide" in why and "re-run 'tile'" in why
    assert not (tdir / "features_baseline" / "train_002.h5").exists()
    r = _cli("tile", slides, "--out", tdir.parent, "--tile-size", 64, "--set", "thumb_size=256")
    assert r.exit_code == 0 and "redone train_002" in r.output, r.output
    _cli(*args, "--skip-errors")  # its tiles are the new slide's: past the version check, to the zeroed level
    summary = json.loads((tdir / "features_baseline" / "summary.json").read_text())
    assert "train_002.tiff: cannot read the tile at" in summary["failed"]["train_002"]


@pytest.mark.parametrize("shared", [True, False], ids=["shared-loader", "per-slide-loader"])
def test_corrupt_level_in_a_reader_worker_is_one_line_then_skipped(tiled, shared):
    slides, tdir = tiled
    fdir = tdir / "features_baseline"
    args = ["extract", slides, "--tiles-dir", tdir, "--num-workers", 2, "--set", f"shared_loader={shared}"]
    r = _cli(*args)
    assert r.exit_code == 2
    err = _errors(r.output)
    assert len(err) == 1 and "train_001.tiff: cannot read the tile at" in err[0] and "Decoding error" in err[0]
    assert "Traceback" not in r.output
    summary = json.loads((fdir / "summary.json").read_text())
    assert list(summary["failed"]) == ["train_001"] and summary["status"].startswith("stopped at the failure")
    assert summary["done"] == ["train_000"] and sorted(p.stem for p in fdir.glob("*.h5")) == ["train_000"]
    r = _cli(*args, "--skip-errors")
    assert r.exit_code == 0, r.output
    assert "1 done, 1 reused (same inputs), 1 skipped, 1 failed" in r.output
    assert "failed train_001:" in r.output and "skipped train_003: no tiles file" in r.output
    summary = json.loads((fdir / "summary.json").read_text())
    assert summary["status"] == "complete, with failed slides"
    assert summary["done"] == ["train_002"] and summary["reused"] == ["train_000"]
    assert "train_001.tiff" in summary["failed"]["train_001"] and "train_003.h5" in summary["skipped"]["train_003"]
    assert sorted(p.stem for p in fdir.glob("*.h5")) == ["train_000", "train_002"]
    md = (fdir / "summary.md").read_text()
    assert "- failed: 1" in md and "`train_001`" in md and "- skipped: 1" in md and "`train_003`" in md


def test_interrupted_extract_leaves_no_summary_claiming_done(tiled, monkeypatch):
    from adaptome.domains.pathology import extract

    slides, tdir = tiled
    (slides / "train_001.tiff").unlink()
    fdir = tdir / "features_baseline"
    real = extract.write_features
    calls = []

    def write_then_stop(*a, **kw):
        if calls:
            raise KeyboardInterrupt  # Ctrl-C while the second slide is being written
        calls.append(a[0])
        real(*a, **kw)

    monkeypatch.setattr(extract, "write_features", write_then_stop)
    r = _cli("extract", slides, "--tiles-dir", tdir, "--num-workers", 0)
    assert r.exit_code == 130  # Ctrl-C: typer exits 128 + SIGINT
    summary = json.loads((fdir / "summary.json").read_text())
    files = sorted(p.stem for p in fdir.glob("*.h5"))
    assert files == ["train_000"] and summary["done"] == files
    assert summary["status"].startswith("interrupted (KeyboardInterrupt)")
    assert "- done: 1" in (fdir / "summary.md").read_text()
    assert not [p for p in fdir.iterdir() if ".tmp-" in p.name]  # no half-written feature file
    monkeypatch.setattr(extract, "write_features", real)
    r = _cli("extract", slides, "--tiles-dir", tdir, "--num-workers", 0)
    assert r.exit_code == 0 and "1 done, 1 reused" in r.output
    assert json.loads((fdir / "summary.json").read_text())["status"] == "complete"


def _strict(text: str):
    def no_nan(name):
        raise ValueError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=no_nan)


def test_train_summary_and_metrics_are_strict_json_and_name_a_fold_without_auc(cohort, tmp_path):
    out = tmp_path / "mil"
    run = out / "mil_ratio_case_id_k3"
    base = ["train", "--features-dir", cohort["features_dir"], "--labels", cohort["labels"], "--out", out, "--k", 3,
            "--set", "max_steps=10", "--set", "eval_every=5"]
    r = _cli(*base)
    assert r.exit_code == 0, r.output
    # a cut-off above every target of one fold (and below some target of each other fold)
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    top = {f: max(float(r["target"]) for r in rows if r["fold"] == f) for f in {r["fold"] for r in rows}}
    low_fold, low_max = min(top.items(), key=lambda kv: kv[1])
    cutoff = (low_max + sorted(top.values())[1]) / 2
    assert cutoff > low_max
    r = _cli(*base, "--set", f"cutoff={cutoff}")
    assert r.exit_code == 0 and "0 folds trained, 3 reused" in r.output  # the cut-off does not change models
    assert "over 2 of 3 folds" in r.output and f"fold {low_fold} has no AUC: no test slides with target >=" in r.output
    summary = _strict((run / "summary.json").read_text())
    assert summary["auc"]["n_folds"] == 2 and summary["auc"]["of_folds"] == 3
    assert list(summary["auc"]["folds_without_auc"]) == [low_fold]
    assert [f["auc"] for f in summary["folds"] if f["fold"] == int(low_fold)] == [None]
    from sklearn.metrics import roc_auc_score

    per = [roc_auc_score([float(r["target"]) >= cutoff for r in rows if r["fold"] == f],
                         [float(r["pred"]) for r in rows if r["fold"] == f]) for f in sorted(top) if f != low_fold]
    assert summary["auc"]["mean"] == pytest.approx(np.mean(per))
    md = (run / "summary.md").read_text()
    assert "over 2 of 3 folds" in md and f"fold {low_fold} has no AUC" in md
    _strict((run / "cv_summary.json").read_text())
    # evaluate: metrics.json parses strictly, the undefined AUC is null; the report names the fold
    r = _cli("evaluate", run / "predictions.csv", "--cutoff", cutoff, "--out", tmp_path / "eval")
    assert r.exit_code == 0, r.output
    metrics = _strict((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["per_fold"][low_fold]["auc"] is None and metrics["mean_sd"]["auc"]["n_folds"] == 2
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "over 2 of 3 folds" in report and f"Fold {low_fold} has no AUC" in report
    # a cut-off no slide reaches: no AUC anywhere, still strict JSON
    r = _cli("evaluate", run / "predictions.csv", "--cutoff", 100.5, "--out", tmp_path / "eval2")
    assert r.exit_code == 0, r.output
    metrics = _strict((tmp_path / "eval2" / "metrics.json").read_text())
    assert metrics["pooled"]["auc"] is None and metrics["mean_sd"]["auc"]["mean"] is None


def test_corrupt_level_read_in_the_main_process_is_one_line_then_skipped(cohort, tmp_path):
    """The tile stage reads the thumbnail in the main process: a corrupt level there is named too."""
    d = tmp_path / "slides"
    d.mkdir()
    for sid in ("train_000", "train_001"):
        shutil.copy2(cohort["slides"] / f"{sid}.tiff", d / f"{sid}.tiff")
    _zero_level0(d / "train_000.tiff", page=1)  # the level the 256-px thumbnail is read from
    args = ["tile", d, "--out", tmp_path / "job", "--tile-size", 64, "--set", "thumb_size=256"]
    r = _cli(*args)
    err = _errors(r.output)
    assert r.exit_code == 2 and len(err) == 1 and "train_000.tiff: " in err[0] and "Traceback" not in r.output
    r = _cli(*args, "--skip-errors")
    assert r.exit_code == 0 and "1 done, 0 reused (same inputs), 0 skipped, 1 failed" in r.output
    summary = json.loads((tmp_path / "job" / "tiles_20x_64px_0ov" / "summary.json").read_text())
    assert list(summary["failed"]) == ["train_000"] and summary["done"] == ["train_001"]


def _labels(path, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "case_id", "target", "site"])
        w.writerows(rows)


def test_r2_of_a_fold_with_one_target_is_null_and_left_out_of_the_mean(cohort, tmp_path):
    """Each fold's two test slides share one target (one case): no fold has an R² (not 0.000), train and
    evaluate say over how many folds (0 of 3), for the MIL and every baseline; pooled R² stays."""
    from sklearn.metrics import r2_score

    labels = tmp_path / "labels.csv"
    _labels(labels, [(f"train_00{i}", f"c{i // 2}", 10 + 30 * (i // 2), f"s{i // 2}") for i in range(6)])
    out = tmp_path / "mil"
    run = out / "mil_ratio_case_id_k3"
    r = _cli("train", "--features-dir", cohort["features_dir"], "--labels", labels, "--out", out, "--k", 3,
             "--set", "max_steps=6", "--set", "eval_every=3", "--set", "batch_size=2")
    assert r.exit_code == 0, r.output
    assert "fold R2 n/a over 0 of 3 folds" in r.output and "0.000 ± 0.000" not in r.output
    assert r.output.count("has no R2: all its 2 test slides have target") == 3
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    y, p = [float(r["target"]) for r in rows], [float(r["pred"]) for r in rows]
    summary = _strict((run / "summary.json").read_text())
    assert summary["r2"]["mean"] is None and summary["r2"]["n_folds"] == 0 and summary["r2"]["of_folds"] == 3
    assert [f["r2"] for f in summary["folds"]] == [None] * 3 and len(summary["r2"]["folds_without_r2"]) == 3
    assert summary["pooled"]["r2"] == pytest.approx(r2_score(y, p))
    assert "R² over 0 of 3 folds: n/a" in (run / "summary.md").read_text()
    # val_frac 0 (the default): the kept weights were chosen on training slides, and the summary says so
    assert [f["selected_on"] for f in summary["folds"]] == ["training slides"] * 3
    assert "Folds 0, 1, 2 have no validation slides (val_frac 0)" in (run / "summary.md").read_text()
    r = _cli("evaluate", run / "predictions.csv", "--out", tmp_path / "eval")
    assert r.exit_code == 0, r.output
    assert "MIL: R2 n/a over 0 of 3 folds" in r.output and "0.000 ± 0.000" not in r.output
    for name in ("majority", "dark_pixels", "mean_features"):
        assert f"baseline {name}: R2 n/a over 0 of 3 folds" in r.output, r.output
    metrics = _strict((tmp_path / "eval" / "metrics.json").read_text())
    assert all(m["r2"] is None for m in metrics["per_fold"].values())
    assert metrics["mean_sd"]["r2"]["mean"] is None and metrics["mean_sd"]["r2"]["n_folds"] == 0
    assert metrics["pooled"]["r2"] == pytest.approx(r2_score(y, p))
    assert all(b["mean_sd"]["r2"]["mean"] is None and b["pooled"]["r2"] is not None
               for b in metrics["baselines"].values())
    assert "R² (over 0 of 3 folds) | n/a" in (tmp_path / "eval" / "report.md").read_text()


def test_fold_mean_r2_is_over_the_folds_that_define_it():
    """A fold with one target (or one slide) has no R²: NaN, not scikit-learn's 0.0; the mean and sd are over the
    other folds; the pooled R² is the plain one."""
    from adaptome.core import evaluation as ev
    from adaptome.domains.pathology.evaluate import _fold_summary, slide_metrics

    assert np.isnan(slide_metrics([20.0, 20.0], [10.0, 30.0], 30)["r2"])
    assert np.isnan(slide_metrics([20.0], [10.0], 30)["r2"])
    rows = [{"slide_id": s, "fold": f, "target": t, "pred": p} for s, f, t, p in
            (("a", 0, 20.0, 10.0), ("b", 0, 20.0, 30.0), ("c", 1, 10.0, 15.0), ("d", 1, 50.0, 40.0),
             ("e", 1, 80.0, 70.0), ("f", 2, 40.0, 45.0), ("g", 2, 60.0, 50.0))]
    per_fold, summary, pooled = _fold_summary(rows, 30)
    r2 = [ev.r2_score([10.0, 50.0, 80.0], [15.0, 40.0, 70.0]), ev.r2_score([40.0, 60.0], [45.0, 50.0])]
    assert np.isnan(per_fold[0]["r2"]) and summary["r2"]["n_folds"] == 2
    assert summary["r2"]["mean"] == pytest.approx(np.mean(r2))
    assert summary["r2"]["sd"] == pytest.approx(np.std(r2, ddof=1))
    assert pooled["r2"] == pytest.approx(ev.r2_score([r["target"] for r in rows], [r["pred"] for r in rows]))


def test_train_with_fewer_slides_than_a_batch_names_its_own_option_and_leaves_no_folder(cohort, tmp_path):
    labels = tmp_path / "labels.csv"
    _labels(labels, [(f"train_00{i}", f"c{i}", 10 + 20 * i, "") for i in range(4)])
    out = tmp_path / "mil"
    base = ("train", "--features-dir", cohort["features_dir"], "--labels", labels, "--out", out, "--k", 2)
    r = _cli(*base)
    err = _errors(r.output)
    assert r.exit_code == 2 and len(err) == 1, r.output
    assert err[0] == (f"error: {labels}: fold 0 trains on 2 slides, fewer than one batch (batch_size 8); add "
                      "labelled slides or lower it: --set batch_size=2")
    assert not out.exists()  # made by this run and holding no model: not left behind
    r = _cli(*base, "--set", "batch_size=2", "--set", "max_steps=2", "--set", "eval_every=1")
    assert r.exit_code == 0 and "2 folds trained" in r.output, r.output
