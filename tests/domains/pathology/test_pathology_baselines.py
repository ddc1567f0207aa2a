"""The simple baselines: explicit numerics, the MIL's own folds, always reported by ``evaluate``."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from adaptome.domains.pathology.baselines import dark_fraction, grouped_baselines


def test_dark_fraction_counts_pixels_below_grey_105():
    tiles = np.full((2, 4, 4, 3), 200, np.uint8)
    tiles[0, :2] = 100  # 8 of 16 pixels at luma 100
    tiles[1, 0, 0] = (255, 0, 0)  # luma 0.299 * 255 = 76: dark
    tiles[1, 0, 1] = (0, 255, 0)  # luma 150: not dark
    assert dark_fraction(tiles).tolist() == [0.5, 1 / 16]


def test_baselines_are_fitted_on_the_other_folds_by_the_stated_formulas():
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    n, d = 24, 5
    rows = [{"slide_id": f"s{i}", "fold": i % 3, "target": float(rng.uniform(0, 60))} for i in range(n)]
    summ = {r["slide_id"]: {"dark": float(rng.uniform()), "feat": rng.normal(size=d)} for r in rows}
    got = grouped_baselines(rows, summ, alpha=1.0)
    y = np.array([r["target"] for r in rows])
    dark = np.array([summ[r["slide_id"]]["dark"] for r in rows])
    feat = np.stack([summ[r["slide_id"]]["feat"] for r in rows])
    fold = np.array([r["fold"] for r in rows])
    for f in range(3):
        te, tr = fold == f, fold != f
        line = np.polyval(np.polyfit(dark[tr], y[tr], 1), dark[te])
        sc = StandardScaler().fit(feat[tr])
        ridge = Ridge(alpha=1.0).fit(sc.transform(feat[tr]), y[tr]).predict(sc.transform(feat[te]))
        const = np.full(te.sum(), y[tr].mean())
        for name, ref in (("dark_pixels", line), ("mean_features", ridge), ("majority", const)):
            pred = np.array([r["pred"] for r in got[name]])[te]
            assert pred == pytest.approx(np.clip(ref, 0, 100), abs=1e-8), name
    assert all([r["fold"] for r in got[k]] == fold.tolist() for k in got)


def test_cli_evaluate_reports_the_baselines_on_the_mil_folds(trained, tmp_path):
    from adaptome.domains.pathology.cli import app

    pred = trained["real"]["predictions"]
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["evaluate", pred, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "baseline dark_pixels" in r.output and "baseline mean_features" in r.output
    res = json.loads((out / "metrics.json").read_text())
    folds = {row["slide_id"]: int(row["fold"]) for row in csv.DictReader(open(pred))}
    for name in ("majority", "dark_pixels", "mean_features"):
        assert {row["slide_id"]: row["fold"] for row in res["baselines"][name]["rows"]} == folds
    assert res["baselines"]["majority"]["pooled"]["r2"] < 0.05  # the constant explains nothing out of fold
    assert set(res["site_mae"]["mil"]) == {f"site_{i}" for i in range(4)}
    report = (out / "report.md").read_text()
    assert "| dark_pixels |" in report and "MAE per site" in report

    # predictions without the run's configs: the report says why there are no baselines
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(pred, lone / "predictions.csv")
    r = CliRunner().invoke(app, ["evaluate", str(lone / "predictions.csv")])
    assert r.exit_code == 0 and "baselines not computed" in r.output and "config.yaml not found" in r.output


def test_slide_summaries_are_reused_only_while_the_files_are_unchanged(cohort):
    import os

    from adaptome.domains.pathology.baselines import slide_summaries

    a = slide_summaries(cohort["tiles_dir"], ["train_000"])["train_000"]
    assert slide_summaries(cohort["tiles_dir"], ["train_000"])["train_000"] is a  # same files: reused
    h5 = cohort["tiles_dir"] / "train_000.h5"
    st = os.stat(h5)
    os.utime(h5, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the tiles file changed
    try:
        b = slide_summaries(cohort["tiles_dir"], ["train_000"])["train_000"]
        assert b is not a and b["dark"] == a["dark"] and np.allclose(b["feat"], a["feat"])
    finally:  # the session cohort's tiles stay as their features' made_by records them (evaluate checks that)
        os.utime(h5, ns=(st.st_atime_ns, st.st_mtime_ns))
