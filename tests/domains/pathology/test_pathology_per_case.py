"""Per-case (patient) metrics, through the CLI: a case with two slides (two sections, DX1 / DX2) counts once,
its prediction the mean of its slides' predictions; per-slide metrics stay beside them; a case never spans
two folds; ``score`` writes ``cases.csv``. A case whose slides carry different targets (either side of the
cut-off) is counted and reported, its target the mean of theirs; a case of three slides; per-case AUC is
``sklearn.metrics.roc_auc_score`` on the case means."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from adaptome.domains.pathology.cli import app

PAIRS = ((0, 4), (1, 5), (2, 6))  # slide j gets slide i's case and (case-level) target; i, j share a site


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _read(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write(path, rows, fields=("slide_id", "case_id", "target", "site")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write(",".join(fields) + "\n")
        for r in rows:
            f.write(",".join(str(r.get(k, "")) for k in fields) + "\n")
    return path


def _paired_sheet(cohort, path):
    rows = _read(cohort["labels"])
    for i, j in PAIRS:
        rows[j] = {**rows[j], "case_id": rows[i]["case_id"], "target": rows[i]["target"]}
    return _write(path, rows), rows


def _train(cohort, labels, out, *extra):
    return _cli("train", "--features-dir", cohort["features_dir"], "--labels", labels, "--out", out, "--k", 2,
                "--set", "max_steps=3", "--set", "batch_size=4", *extra)


def _by_case(pred_rows, case_of):
    """case -> (fold, mean prediction, mean target): the formula the report must follow."""
    cases: dict[str, list[dict]] = {}
    for r in pred_rows:
        cases.setdefault(case_of[r["slide_id"]], []).append(r)
    out = {}
    for c, rs in cases.items():
        assert len({int(r["fold"]) for r in rs}) == 1, (c, rs)  # a case's slides share one test fold
        preds, targets = [float(r["pred"]) for r in rs], [float(r["target"]) for r in rs]
        out[c] = (int(rs[0]["fold"]), np.mean(preds), np.mean(targets))
    return out


def _formula(cases, fold=None):
    sel = [v for v in cases.values() if fold is None or v[0] == fold]
    y, p = np.array([v[2] for v in sel]), np.array([v[1] for v in sel])
    r2 = 1.0 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2)
    dy, dp = y - y.mean(), p - p.mean()
    pearson = np.sum(dy * dp) / np.sqrt(np.sum(dy ** 2) * np.sum(dp ** 2))
    return {"r2": r2, "pearson": pearson, "mae": np.mean(np.abs(y - p)), "mse": np.mean((y - p) ** 2), "n": len(sel)}


@pytest.fixture(scope="module")
def paired(cohort, tmp_path_factory):
    """A 2-fold case-grouped run on the cohort where three cases hold two slides each."""
    root = tmp_path_factory.mktemp("paired")
    labels, rows = _paired_sheet(cohort, root / "labels.csv")
    r = _train(cohort, labels, root / "out")
    assert r.exit_code == 0, r.output
    return {"root": root, "labels": labels, "rows": rows, "run": next((root / "out").glob("mil_*")),
            "output": r.output}


def test_train_and_evaluate_report_per_case_metrics_of_cases_with_two_slides(cohort, paired, tmp_path):
    run, rows = paired["run"], paired["rows"]
    case_of = {r["slide_id"]: r["case_id"] for r in rows}
    preds = _read(run / "predictions.csv")
    for i, j in PAIRS:  # the two slides of a case: other predictions, one fold
        a, b = (next(p for p in preds if p["slide_id"] == rows[k]["slide_id"]) for k in (i, j))
        assert a["fold"] == b["fold"] and a["pred"] != b["pred"]
    cases = _by_case(preds, case_of)
    want = _formula(cases)
    assert want["n"] == len(rows) - len(PAIRS)

    summary = json.loads((run / "summary.json").read_text())
    pc = summary["per_case"]
    assert pc["n_cases"] == len(rows) - len(PAIRS) and pc["several_slides"] == len(PAIRS)
    for key in ("r2", "pearson", "mae", "mse"):
        assert pc["pooled"][key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key
    folds = [_formula(cases, f)["r2"] for f in (0, 1)]
    assert pc["r2"]["mean"] == pytest.approx(np.mean(folds)) and pc["r2"]["sd"] == pytest.approx(np.std(folds, ddof=1))
    assert [f["n_cases"] for f in pc["folds"]] == [_formula(cases, f)["n"] for f in (0, 1)]
    assert summary["n_slides"] == len(rows) and summary["pooled"]["r2"] != pytest.approx(pc["pooled"]["r2"])
    md = (run / "summary.md").read_text()
    assert f"per case ({pc['n_cases']} cases, {len(PAIRS)} with several slides" in md, md
    assert "per slide" in md, md
    line = " ".join(paired["output"].split())
    assert f"per case ({pc['n_cases']} cases, {len(PAIRS)} with several slides" in line, line
    assert f"pooled R2 {want['r2']:.3f}" in line, line

    r = _cli("evaluate", run / "predictions.csv", "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    met = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    pc = met["per_case"]
    assert pc["n_cases"] == want["n"] and pc["several_slides"] == len(PAIRS)
    for key in ("r2", "pearson", "mae", "mse"):
        assert pc["pooled"][key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key
    assert pc["mean_sd"]["r2"]["mean"] == pytest.approx(np.mean(folds))
    assert met["n_slides"] == len(rows) and met["pooled"]["r2"] == pytest.approx(summary["pooled"]["r2"])
    assert set(met["baselines"]) == {"majority", "dark_pixels", "mean_features"}
    for name, b in met["baselines"].items():  # the baselines on the same cases, the same way
        bw = _formula(_by_case(b["rows"], case_of))
        assert b["per_case"]["pooled"]["mae"] == pytest.approx(bw["mae"], rel=1e-9), name
        assert b["per_case"]["pooled"]["mse"] == pytest.approx(bw["mse"], rel=1e-9), name
    out = " ".join(r.output.split())
    assert f"MIL per case ({want['n']} cases, {len(PAIRS)} with several slides)" in out, out
    assert "baseline majority per case: R2" in out, out
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "## Per case" in report and "mean of its slides' predictions" in report, report


def test_single_slide_cases_give_the_same_per_case_and_per_slide_numbers(cohort, tmp_path):
    r = _train(cohort, cohort["labels"], tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "per case" not in r.output  # nothing new on screen when every case has one slide
    run = next((tmp_path / "out").glob("mil_*"))
    s = json.loads((run / "summary.json").read_text())
    pc = s["per_case"]
    assert pc["n_cases"] == s["n_slides"] and pc["several_slides"] == 0
    for key in ("r2", "mse", "auc", "pearson", "spearman"):
        assert pc["pooled"][key] == s["pooled"][key], key
    for key in ("r2", "mse", "auc"):
        assert pc[key]["mean"] == s[key]["mean"] and pc[key]["sd"] == s[key]["sd"], key
    assert "per case" not in (run / "summary.md").read_text()
    r = _cli("evaluate", run / "predictions.csv", "--out", tmp_path / "ev", "--no-baselines")
    assert r.exit_code == 0, r.output
    assert "per case" not in r.output
    met = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert met["per_case"]["pooled"] == met["pooled"] and met["per_case"]["mean_sd"] == met["mean_sd"]
    assert met["per_case"]["per_fold"] == met["per_fold"]
    assert "## Per case" not in (tmp_path / "ev" / "report.md").read_text()


def test_a_case_never_falls_in_two_folds(cohort, paired, tmp_path):
    """Folds group by case_id (and by site only when each case has one site); a sheet that splits one TCGA
    patient's slides over two case ids, and a predictions CSV that puts a case in two folds, are refused."""
    rows = paired["rows"]
    for group_by, k in (("case_id", 2), ("case_id", 5), ("site", 4)):  # every split keeps each case in one fold
        r = _cli("train", "--features-dir", cohort["features_dir"], "--labels", paired["labels"], "--out",
                 tmp_path / "o", "--k", k, "--group-by", group_by, "--set", "max_steps=1", "--set", "batch_size=2")
        assert r.exit_code == 0, r.output
        preds = _read(next((tmp_path / "o").glob(f"mil_*_{group_by}_k{k}")) / "predictions.csv")
        _by_case(preds, {r2["slide_id"]: r2["case_id"] for r2 in rows})  # asserts one fold per case

    # two DX slides of one TCGA patient under two case ids: the patient would sit in training and test
    fdir = tmp_path / "features"
    fdir.mkdir()
    sheet = []
    for i, r in enumerate(rows[:8]):
        sid = f"TCGA-A0-A{i % 4:03d}-01Z-00-DX{1 + i // 4}.0"  # slides i and i + 4: DX1 and DX2 of one patient
        shutil.copy2(cohort["features_dir"] / f"{r['slide_id']}.h5", fdir / f"{sid}.h5")
        sheet.append({"slide_id": sid, "case_id": sid, "target": r["target"]})
    labels = _write(tmp_path / "by_slide.csv", sheet, ("slide_id", "case_id", "target"))
    r = _cli("train", "--features-dir", fdir, "--labels", labels, "--out", tmp_path / "t", "--k", 2,
             "--set", "max_steps=1", "--set", "batch_size=2")
    assert r.exit_code == 2, r.output
    err = " ".join(r.output.split())
    assert ("4 TCGA patient(s) have slides under several case_id values, e.g. TCGA-A0-A000 "
            "(TCGA-A0-A000-01Z-00-DX1.0 as 'TCGA-A0-A000-01Z-00-DX1.0', TCGA-A0-A000-01Z-00-DX2.0 as "
            "'TCGA-A0-A000-01Z-00-DX2.0')") in err, err
    assert not (tmp_path / "t").exists()

    # a predictions CSV edited by hand: one case's slides in two folds
    src = _read(paired["run"] / "predictions.csv")
    i, j = PAIRS[0]
    a, b = rows[i]["slide_id"], rows[j]["slide_id"]
    fold_a = next(p["fold"] for p in src if p["slide_id"] == a)
    moved = [{**p, "fold": str(1 - int(fold_a))} if p["slide_id"] == b else p for p in src]
    bad = tmp_path / "run" / "predictions.csv"
    bad.parent.mkdir()
    _write(bad, moved, list(src[0]))
    r = _cli("evaluate", bad, "--out", tmp_path / "ev", "--no-baselines")
    assert r.exit_code == 2, r.output
    assert (f"case {rows[i]['case_id']!r} has slides in folds" in r.output
            and "per-case metrics need each case in one fold" in " ".join(r.output.split())), r.output


def test_score_writes_a_case_table_from_tcga_barcodes_or_a_labels_sheet(cohort, paired, tmp_path):
    rows = paired["rows"]
    r = _cli("score", cohort["slides"], "--model", paired["run"], "--features-dir", cohort["features_dir"],
             "--out", tmp_path / "sc", "--labels", paired["labels"], "--set", "heatmaps=false")
    assert r.exit_code == 0, r.output
    slides = {s["slide_id"]: float(s["stil_pct"]) for s in _read(tmp_path / "sc" / "slides.csv")}
    cases = {c["case_id"]: c for c in _read(tmp_path / "sc" / "cases.csv")}
    assert len(cases) == len(rows) - len(PAIRS)
    for i, j in PAIRS:
        c = cases[rows[i]["case_id"]]
        a, b = rows[i]["slide_id"], rows[j]["slide_id"]
        assert c["n_slides"] == "2" and c["slides"] == f"{a};{b}" and c["case_from"] == "labels"
        assert float(c["stil_pct"]) == pytest.approx((slides[a] + slides[b]) / 2, abs=1e-4)
    out = " ".join(r.output.split())
    assert f"case scores: {tmp_path / 'sc' / 'cases.csv'} ({len(cases)} cases, {len(PAIRS)} with several slides" in out
    assert "a slide's case: its case_id in" in out, out

    # TCGA slide barcodes, no sheet: the case is the barcode's first three fields
    tc = tmp_path / "tcga"
    tc.mkdir()
    names = {"train_000": "TCGA-A1-A0SK-01Z-00-DX1.AB12", "train_001": "TCGA-A1-A0SK-01Z-00-DX2.CD34",
             "train_002": "TCGA-B6-A0RE-01Z-00-DX1.EF56", "train_003": "plain_slide"}
    for src, dst in names.items():
        shutil.copy2(cohort["slides"] / f"{src}.tiff", tc / f"{dst}.tiff")
    r = _cli("score", tc, "--model", paired["run"], "--out", tmp_path / "sc2", "--set", "heatmaps=false")
    assert r.exit_code == 0, r.output
    slides = {s["slide_id"]: float(s["stil_pct"]) for s in _read(tmp_path / "sc2" / "slides.csv")}
    cases = {c["case_id"]: c for c in _read(tmp_path / "sc2" / "cases.csv")}
    assert set(cases) == {"TCGA-A1-A0SK", "TCGA-B6-A0RE", "plain_slide"}
    c = cases["TCGA-A1-A0SK"]
    assert c["n_slides"] == "2" and c["case_from"] == "TCGA barcode"
    assert float(c["stil_pct"]) == pytest.approx((slides[names["train_000"]] + slides[names["train_001"]]) / 2,
                                                  abs=1e-4)
    assert cases["plain_slide"]["case_from"] == "slide" and cases["plain_slide"]["n_slides"] == "1"
    out = " ".join(r.output.split())
    assert "first three fields of its TCGA barcode" in out and "1 slide(s) without a case id" in out, out


# ---- cases whose slides carry different targets, and a case of three slides -------------------------------------

DIFFER = (0, 4)  # one case, slide targets either side of the 30 % cut-off: its mean 30 % is neither slide's target
DIFFER_TARGETS = (20.0, 40.0)
TRIPLE = (1, 5, 9)  # one case of three slides (one site), the first slide's target
SAME = (2, 6)  # one case of two slides with one target


def _mixed_sheet(cohort, path):
    rows = _read(cohort["labels"])
    i, j = DIFFER
    rows[i] = {**rows[i], "target": DIFFER_TARGETS[0]}
    rows[j] = {**rows[j], "case_id": rows[i]["case_id"], "target": DIFFER_TARGETS[1], "site": rows[i]["site"]}
    for first, *rest in (TRIPLE, SAME):
        for j in rest:
            rows[j] = {**rows[j], "case_id": rows[first]["case_id"], "target": rows[first]["target"],
                       "site": rows[first]["site"]}
    return _write(path, rows), rows


def _auc(cases, fold=None, cutoff=30.0):
    """sklearn's ROC AUC of the case means (target >= cut-off is positive); NaN with one side only."""
    from sklearn.metrics import roc_auc_score

    sel = [v for v in cases.values() if fold is None or v[0] == fold]
    high = np.array([v[2] for v in sel]) >= cutoff
    return roc_auc_score(high, [v[1] for v in sel]) if 0 < high.sum() < len(high) else float("nan")


@pytest.fixture(scope="module")
def mixed(cohort, tmp_path_factory):
    """A 2-fold case-grouped run where one case's two slides differ in target and one case has three slides."""
    root = tmp_path_factory.mktemp("mixed")
    labels, rows = _mixed_sheet(cohort, root / "labels.csv")
    r = _train(cohort, labels, root / "out")
    assert r.exit_code == 0, r.output
    return {"root": root, "labels": labels, "rows": rows, "run": next((root / "out").glob("mil_*")),
            "output": r.output}


def test_a_case_with_different_slide_targets_and_a_case_of_three_slides(cohort, mixed, tmp_path):
    run, rows = mixed["run"], mixed["rows"]
    case_of = {r["slide_id"]: r["case_id"] for r in rows}
    preds = _read(run / "predictions.csv")
    by_slide = {p["slide_id"]: p for p in preds}
    assert [float(by_slide[rows[k]["slide_id"]]["target"]) for k in DIFFER] == list(DIFFER_TARGETS)  # kept per slide
    cases = _by_case(preds, case_of)
    differ, triple = cases[rows[DIFFER[0]]["case_id"]], cases[rows[TRIPLE[0]]["case_id"]]
    assert differ[2] == pytest.approx(30.0) and differ[2] not in DIFFER_TARGETS  # the mean, on the cut-off: high
    assert triple[1] == pytest.approx(np.mean([float(by_slide[rows[k]["slide_id"]]["pred"]) for k in TRIPLE]))
    n_cases = len(rows) - 1 - 2 - 1
    want, auc = _formula(cases), _auc(cases)
    assert want["n"] == n_cases and not np.isnan(auc)

    pc = json.loads((run / "summary.json").read_text())["per_case"]
    assert (pc["n_cases"], pc["several_slides"], pc["differing_targets"]) == (n_cases, 3, 1)
    assert pc["pooled"]["auc"] == pytest.approx(auc, rel=1e-9, abs=1e-12)
    for key in ("r2", "pearson", "mae", "mse"):
        assert pc["pooled"][key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key
    folds = [_auc(cases, f) for f in (0, 1)]
    assert [f["auc"] for f in pc["folds"]] == pytest.approx(folds, nan_ok=True)
    assert pc["auc"]["mean"] == pytest.approx(np.nanmean(folds))
    md = (run / "summary.md").read_text()
    assert f"per case ({n_cases} cases, 3 with several slides" in md, md
    assert "\n  - 1 case(s) have slides with different targets\n" in md, md

    r = _cli("evaluate", run / "predictions.csv", "--out", tmp_path / "ev", "--no-baselines")
    assert r.exit_code == 0, r.output
    pc = json.loads((tmp_path / "ev" / "metrics.json").read_text())["per_case"]
    assert (pc["n_cases"], pc["several_slides"], pc["differing_targets"]) == (n_cases, 3, 1)
    assert pc["pooled"]["auc"] == pytest.approx(auc, rel=1e-9, abs=1e-12)
    assert pc["pooled"]["r2"] == pytest.approx(want["r2"], rel=1e-9, abs=1e-9)
    assert [pc["per_fold"][str(f)]["auc"] for f in (0, 1)] == pytest.approx(folds, nan_ok=True)
    report = " ".join((tmp_path / "ev" / "report.md").read_text().split())
    assert "1 case(s) have slides with different targets." in report, report
    assert f"| MIL (this run) | {want['r2']:.3f} |" in report, report


def test_score_averages_a_case_of_three_slides(cohort, mixed, tmp_path):
    rows = mixed["rows"]
    r = _cli("score", cohort["slides"], "--model", mixed["run"], "--features-dir", cohort["features_dir"],
             "--out", tmp_path / "sc", "--labels", mixed["labels"], "--set", "heatmaps=false")
    assert r.exit_code == 0, r.output
    slides = {s["slide_id"]: float(s["stil_pct"]) for s in _read(tmp_path / "sc" / "slides.csv")}
    cases = {c["case_id"]: c for c in _read(tmp_path / "sc" / "cases.csv")}
    assert len(cases) == len(rows) - 4
    for group in (DIFFER, TRIPLE, SAME):
        c, ids = cases[rows[group[0]]["case_id"]], [rows[k]["slide_id"] for k in group]
        assert c["n_slides"] == str(len(group)) and c["slides"] == ";".join(ids), c
        assert float(c["stil_pct"]) == pytest.approx(np.mean([slides[s] for s in ids]), abs=1e-4)
    out = " ".join(r.output.split())
    assert f"({len(cases)} cases, 3 with several slides" in out, out
