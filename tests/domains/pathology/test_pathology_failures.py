"""Issue 13 section 4, through the CLI: every failure is one line naming the slide, recorded in the
summary; good results are kept; summaries are written last and say what is done; strict JSON."""

from __future__ import annotations

import csv
import json
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
    (from a coarser level) still reads, but no level-0 tile decodes."""
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[page]
        spans = list(zip(page.dataoffsets, page.databytecounts))
    data = bytearray(path.read_bytes())
    for off, n in spans:
        data[off:off + n] = bytes(n)
    path.write_bytes(bytes(data))


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
