"""Slide-level evaluation of sTIL % predictions: per-fold metrics, mean +- sd, plot and report.

Metrics per fold (``adaptome.core.evaluation``): R^2 (coefficient of determination against the
target), Pearson r, Spearman rho, MSE (in %^2), and ROC AUC of the prediction for the binary
``target >= cutoff`` (sTIL-high; WeakSTIL and clinical practice use cut-offs such as 10 % or 30 %;
a fold with one class has no AUC). Reported as mean +- sd over folds (the convention of the
reference R^2 0.45 +- 0.15, AUC 0.89 +- 0.05 of WeakSTIL on its own cohort, which are printed
beside ours for orientation, not as a like-for-like comparison) and pooled over all
out-of-fold predictions. Outputs: ``metrics.json``, ``report.md``, ``scatter.png``.

Per case (patient): a TCGA case often has two diagnostic slides (DX1, DX2) under one case-level label;
per slide it would count twice. ``per_case`` holds the same metrics over cases, each case's prediction the
mean of its slides' predictions and its target the mean of its slides' targets (``case_rows``; the case
of a slide: the ``case_id`` column ``train`` writes into ``predictions.csv``, else the label sheet's, else
the TCGA barcode, else the slide itself, ``case_ids``), for the MIL and for each baseline (fitted per slide
as the MIL is, their slide predictions averaged the same way). With one slide per case the numbers are the
per-slide ones; the report adds a per-case table only when some case has several slides. A case whose
slides lie in two folds is refused.

Beside the MIL result, always: the simple baselines of ``baselines.py`` (constant, dark-pixel
fraction, mean baseline-encoder features + ridge) on the MIL run's own folds, found through the
``config.yaml`` files the stages write (``mil_*/config.yaml`` -> features folder ->
``tiles_dir``); when they cannot be computed the report says why, also when the run's tiles or features
were made again after the run (the baselines would then read other tiles than the MIL's). With a label CSV holding
``site`` the MAE per site is reported too.

Not covered: calibration curves, confidence intervals by bootstrap, survival analysis.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from adaptome.core import evaluation as ev
from adaptome.domains.pathology.errors import PathologyError
from adaptome.domains.pathology.pipeline import write_json

WEAKSTIL_REFERENCE = {"r2": 0.45, "r2_sd": 0.15, "auc": 0.89, "auc_sd": 0.05,
                      "source": "Schirris et al. 2022, WeakSTIL, arXiv 2109.05892 (own cohort)"}


def slide_metrics(target, pred, cutoff: float) -> dict[str, float]:
    """R^2, Pearson, Spearman, MSE, MAE and AUC (target >= cutoff) of one set of slides; an undefined
    one is NaN: R^2 with fewer than 2 slides or one target for all (not ``r2_score``'s 0.0), the
    correlations with a constant target or prediction, AUC with one side of the cut-off only."""
    y, p = np.asarray(target, float), np.asarray(pred, float)
    r2 = float("nan") if len(y) < 2 or np.std(y) == 0 else ev.r2_score(y, p)
    out = {"n": float(len(y)), "r2": r2, "mse": ev.mse(y, p), "mae": float(np.mean(np.abs(y - p)))}
    const = np.std(y) == 0 or np.std(p) == 0
    out["pearson"] = float("nan") if const else ev.pearson(y, p)
    out["spearman"] = float("nan") if const else ev.spearman(y, p)
    high = (y >= cutoff).astype(int)
    out["auc"] = ev.roc_auc(high, p) if 0 < high.sum() < len(high) else float("nan")
    return out


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """Rows ``slide_id, fold, pred, target`` (and ``case_id`` where the CSV has the column: ``train`` writes
    it from the label sheet)."""
    path = Path(path)
    if not path.is_file():
        raise PathologyError(f"{path}: predictions CSV not found")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"slide_id", "pred", "target"}
    if not rows or not need <= set(rows[0]):
        raise PathologyError(f"{path}: predictions CSV needs columns slide_id,pred,target[,fold][,case_id]")
    return [{"slide_id": r["slide_id"], "fold": int(r.get("fold") or 0), "pred": float(r["pred"]),
             "target": float(r["target"]), **({"case_id": r["case_id"]} if (r.get("case_id") or "").strip() else {})}
            for r in rows]


#: how a slide's case was found, in the order tried (``case_ids``)
CASE_RULES = {"predictions": "the run's label sheet (case_id column of predictions.csv)",
              "labels": "the label sheet's case_id column",
              "barcode": "the first three fields of its TCGA barcode (TCGA-<site>-<patient>)",
              "slide": "none known: each slide is a case of its own"}


def case_ids(rows: list[dict], labels: str | os.PathLike | None = None) -> tuple[dict[str, str], str]:
    """slide id -> case id of prediction rows, and which rule (``CASE_RULES``) gave them: the rows' own
    ``case_id`` (``train`` writes it), else a label sheet's ``case_id`` (every slide listed there), else
    the TCGA barcode of every slide (``labels.case_of``), else each slide its own case."""
    from adaptome.domains.pathology.labels import case_of

    if rows and all("case_id" in r for r in rows):
        return {r["slide_id"]: r["case_id"] for r in rows}, "predictions"
    if labels is not None and Path(labels).is_file():
        from adaptome.domains.pathology.train import read_label_sheet

        sheet = {r["slide_id"]: r["case_id"] for r in read_label_sheet(labels)[0]}
        if all(r["slide_id"] in sheet for r in rows):
            return {r["slide_id"]: sheet[r["slide_id"]] for r in rows}, "labels"
    if rows and all(case_of(r["slide_id"]) for r in rows):
        return {r["slide_id"]: case_of(r["slide_id"]) for r in rows}, "barcode"
    return {r["slide_id"]: r["slide_id"] for r in rows}, "slide"


def case_rows(rows: list[dict], case_of: dict[str, str], source: str | os.PathLike = "predictions") -> list[dict]:
    """One row per case (patient) from slide rows ``slide_id, fold, pred, target``: ``slide_id`` = the case id
    (so the slide metrics apply), its ``fold``, ``pred`` = the mean of its slides' predictions, ``target`` =
    the mean of its slides' targets (the case's label when it is per case), ``n_slides``, ``n_targets`` (distinct
    slide targets), ``slides``. A case
    with one slide gives that slide's numbers unchanged. A case whose slides lie in several folds is refused
    (its patient was in training and in test)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(case_of[r["slide_id"]], []).append(r)
    out = []
    for case, rs in by.items():
        folds = sorted({r["fold"] for r in rs})
        if len(folds) > 1:
            where = ", ".join(f"{r['slide_id']} in fold {r['fold']}" for r in rs)
            raise PathologyError(f"{source}: case {case!r} has slides in folds {folds} ({where}): its patient was in "
                                 "training and in test; per-case metrics need each case in one fold (train groups "
                                 "folds by case_id)")
        if len(rs) == 1:
            out.append({**rs[0], "slide_id": case, "n_slides": 1, "n_targets": 1, "slides": [rs[0]["slide_id"]]})
            continue
        out.append({"slide_id": case, "fold": folds[0], "pred": float(np.mean([r["pred"] for r in rs])),
                    "target": float(np.mean([r["target"] for r in rs])), "n_slides": len(rs),
                    "n_targets": len({r["target"] for r in rs}), "slides": [r["slide_id"] for r in rs]})
    return out


def case_note(n_cases: int, several: int) -> str:
    """``12 cases, 2 with several slides`` (the start of every per-case line)."""
    return f"{n_cases} cases, {several} with several slides"


def find_run_inputs(pred_csv: str | os.PathLike) -> tuple[Path | None, Path | None, str]:
    """(tiles folder, label CSV, why-not) of the MIL run that wrote ``pred_csv``, from the configs
    the stages wrote beside it; a missing piece gives None and the reason."""
    from adaptome.core.config import read_yaml

    run = Path(pred_csv).parent
    if not (run / "config.yaml").is_file():
        return None, None, f"{run / 'config.yaml'} not found (not a 'train' run folder)"
    cfg = read_yaml(run / "config.yaml")
    labels = Path(cfg["labels"]) if cfg.get("labels") else None
    fdir = Path(cfg.get("features_dir") or "")
    if not (fdir / "config.yaml").is_file():
        return None, labels, f"{fdir / 'config.yaml'} not found (features folder of the run)"
    tiles = read_yaml(fdir / "config.yaml").get("tiles_dir")
    return (Path(tiles) if tiles else None), labels, "" if tiles else f"{fdir / 'config.yaml'} names no tiles_dir"


def stale_run_inputs(pred_csv: str | os.PathLike, tiles_dir: Path, slide_ids: list[str]) -> str:
    """Why the tiles in ``tiles_dir`` (the run's own) are not the ones the MIL run's predictions come from:
    a feature file made again after the run trained (its ``made_by.json`` records each one's size and time),
    or a tiles file made again after its features were extracted (``made_by/<slide>.json`` of the features
    folder); ``""`` when they are, or when the records are missing (older runs are not checked)."""
    from adaptome.core.config import read_yaml
    from adaptome.domains.pathology.made_by import file_stamp, read_record, record_path

    run = Path(pred_csv).parent
    if not (run / "config.yaml").is_file():
        return ""
    fdir = Path(read_yaml(run / "config.yaml").get("features_dir") or "")
    trained_on = (((read_record(run / "made_by.json") or {}).get("inputs") or {}).get("features")) or {}
    for sid in slide_ids:
        feat, tiles = fdir / f"{sid}.h5", tiles_dir / f"{sid}.h5"
        if sid in trained_on and feat.is_file():
            st = file_stamp(feat)
            if f"{st['size']} bytes, mtime {st['mtime_ns']}" != trained_on[sid]:
                return (f"the features of {sid} ({feat}) were made again after this run trained; re-run train "
                        f"(it retrains on them), then evaluate")
        made = ((read_record(record_path(fdir, sid)) or {}).get("inputs") or {}).get("tiles")
        if isinstance(made, dict) and tiles.is_file():
            st = file_stamp(tiles)
            if (made.get("size"), made.get("mtime_ns")) != (st["size"], st["mtime_ns"]):
                return (f"the tiles of {sid} ({tiles}) were made again after the run's features were extracted "
                        f"from them, so the baselines would read other tiles than the MIL's; re-run extract and "
                        f"train, then evaluate")
    return ""


def _fold_summary(rows: list[dict], cutoff: float) -> tuple[dict, dict, dict]:
    folds = sorted({r["fold"] for r in rows})
    per_fold = {}
    for f in folds:
        sel = [r for r in rows if r["fold"] == f]
        per_fold[f] = slide_metrics([r["target"] for r in sel], [r["pred"] for r in sel], cutoff)
    summary = {}
    for key in ("r2", "pearson", "spearman", "mse", "auc", "mae"):
        vals = [m[key] for m in per_fold.values() if not math.isnan(m[key])]
        summary[key] = {"mean": float(np.mean(vals)) if vals else float("nan"),
                        "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, "n_folds": len(vals)}
    pooled = slide_metrics([r["target"] for r in rows], [r["pred"] for r in rows], cutoff)
    return per_fold, summary, pooled


def group_mae(rows: list[dict], group_of: dict[str, str]) -> dict[str, dict]:
    """MAE and slide count per group (e.g. site) of prediction rows."""
    out = {}
    for g in sorted({group_of.get(r["slide_id"], "") for r in rows}):
        err = [abs(r["pred"] - r["target"]) for r in rows if group_of.get(r["slide_id"], "") == g]
        out[g] = {"n": len(err), "mae": float(np.mean(err))}
    return out


def evaluate_predictions(pred_csv: str | os.PathLike, out_dir: str | os.PathLike, cutoff: float = 30.0,
                         title: str = "sTIL % (out-of-fold)", tiles_dir: str | os.PathLike | None = None,
                         labels: str | os.PathLike | None = None, baselines: bool = True) -> dict:
    """Compute per-fold and pooled metrics of the MIL and of the baselines on the same folds, per slide and
    per case (``per_case``: ``case_ids``, ``case_rows``); write ``metrics.json``, ``report.md``,
    ``scatter.png``. ``tiles_dir`` / ``labels`` default to the run's."""
    from adaptome.domains.pathology.baselines import grouped_baselines, slide_summaries

    rows = read_predictions(pred_csv)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_fold, summary, pooled = _fold_summary(rows, cutoff)
    result = {"cutoff": cutoff, "n_slides": len(rows), "per_fold": {str(k): v for k, v in per_fold.items()},
              "mean_sd": summary, "pooled": pooled, "reference": WEAKSTIL_REFERENCE, "baselines": {},
              "baselines_note": "", "site_mae": {}}
    run_tiles, run_labels, why = find_run_inputs(pred_csv)
    tiles_dir = Path(tiles_dir) if tiles_dir else run_tiles
    labels = Path(labels) if labels else run_labels
    own_tiles = tiles_dir is not None and run_tiles is not None and tiles_dir.resolve() == run_tiles.resolve()
    stale = stale_run_inputs(pred_csv, tiles_dir, [r["slide_id"] for r in rows]) if baselines and own_tiles else ""
    if not baselines:
        result["baselines_note"] = "not computed (turned off)"
    elif tiles_dir is None:
        result["baselines_note"] = f"not computed: {why}; pass the tiles folder"
    elif stale:
        result["baselines_note"] = f"not computed: {stale}"
    else:
        base = grouped_baselines(rows, slide_summaries(tiles_dir, [r["slide_id"] for r in rows]))
        for name, brows in base.items():
            _, bs, bp = _fold_summary(brows, cutoff)
            result["baselines"][name] = {"mean_sd": bs, "pooled": bp, "rows": brows}
    cases, rule = case_ids(rows, labels)
    crows = case_rows(rows, cases, pred_csv)
    c_fold, c_summary, c_pooled = _fold_summary(crows, cutoff)
    result["per_case"] = {"n_cases": len(crows), "several_slides": sum(c["n_slides"] > 1 for c in crows),
                          "differing_targets": sum(c["n_targets"] > 1 for c in crows),
                          "case_from": CASE_RULES[rule], "per_fold": {str(k): v for k, v in c_fold.items()},
                          "mean_sd": c_summary, "pooled": c_pooled}
    for b in result["baselines"].values():  # the same cases, each the mean of its slides' baseline predictions
        _, bs, bp = _fold_summary(case_rows(b["rows"], cases, pred_csv), cutoff)
        b["per_case"] = {"mean_sd": bs, "pooled": bp}
    if labels is not None and Path(labels).is_file():
        from adaptome.domains.pathology.train import read_labels

        site = {r["slide_id"]: r["site"] for r in read_labels(labels)}
        if any(site.values()):
            result["site_mae"] = {"mil": group_mae(rows, site)}
            for name, b in result["baselines"].items():
                result["site_mae"][name] = group_mae(b["rows"], site)
    write_json(out / "metrics.json", result)  # strict JSON: an undefined metric is null, never NaN
    _scatter(rows, out / "scatter.png", title, pooled)
    (out / "report.md").write_text(_markdown(result), encoding="utf-8")
    return result


def _fmt(m: dict) -> str:
    return "n/a" if math.isnan(m["mean"]) else f"{m['mean']:.3f} ± {m['sd']:.3f}"


def _markdown(res: dict) -> str:
    s, ref, p = res["mean_sd"], res["reference"], res["pooled"]
    lines = [
        "# sTIL % regression: evaluation", "",
        f"{res['n_slides']} slides, {len(res['per_fold'])} folds, sTIL-high cut-off {res['cutoff']:g} %.", "",
        "| metric | ours (mean ± sd over folds) | pooled | WeakSTIL reference |", "|---|---|---|---|",
        f"| R² (over {s['r2']['n_folds']} of {len(res['per_fold'])} folds) | {_fmt(s['r2'])} | {p['r2']:.3f} | "
        f"{ref['r2']} ± {ref['r2_sd']} |",
        f"| ROC AUC (sTIL-high; over {s['auc']['n_folds']} of {len(res['per_fold'])} folds) | {_fmt(s['auc'])} | "
        f"{p['auc']:.3f} | {ref['auc']} ± {ref['auc_sd']} |",
        f"| Pearson r | {_fmt(s['pearson'])} | {p['pearson']:.3f} | – |",
        f"| Spearman ρ | {_fmt(s['spearman'])} | {p['spearman']:.3f} | – |",
        f"| MSE (%²) | {_fmt(s['mse'])} | {p['mse']:.2f} | – |",
        f"| MAE (%) | {_fmt(s['mae'])} | {p['mae']:.2f} | – |", "",
        f"Reference: {ref['source']}; a different cohort and label source, shown for orientation only.", "",
        "## Beside the simple baselines (same folds)", "",
    ]
    if res["baselines"]:
        lines += ["| model | pooled R² | R² mean ± sd over folds | AUC mean ± sd | MAE (pooled, %) |",
                  "|---|---|---|---|---|",
                  f"| MIL (this run) | {p['r2']:.3f} | {_fmt(s['r2'])} | {_fmt(s['auc'])} | {p['mae']:.2f} |"]
        for name, b in res["baselines"].items():
            lines.append(f"| {name} | {b['pooled']['r2']:.3f} | {_fmt(b['mean_sd']['r2'])} "
                         f"| {_fmt(b['mean_sd']['auc'])} | {b['pooled']['mae']:.2f} |")
        lines += ["", "majority = mean target of the training folds; dark_pixels = mean share of pixels with grey "
                  "< 105 over the tiles, line fit; mean_features = mean baseline-encoder features, ridge.", ""]
    else:
        lines += [f"Baselines {res['baselines_note']}.", ""]
    if res["site_mae"]:
        names = list(res["site_mae"])
        sites = list(res["site_mae"]["mil"])
        lines += ["## MAE per site (%)", "", "| site | n | " + " | ".join(names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for g in sites:
            lines.append(f"| {g} | {res['site_mae']['mil'][g]['n']} | "
                         + " | ".join(f"{res['site_mae'][n][g]['mae']:.2f}" for n in names) + " |")
        lines.append("")
    c = res["per_case"]
    if c["several_slides"]:
        cs, cp, k = c["mean_sd"], c["pooled"], len(c["per_fold"])
        lines[2] += " The tables are per slide (a case with two slides counts twice) but the one under Per case."
        lines += ["## Per case", "",
                  f"{case_note(c['n_cases'], c['several_slides'])}; a case's prediction is the mean of its slides' "
                  f"predictions, its target the mean of its slides' targets; a slide's case: {c['case_from']}."]
        if c["differing_targets"]:
            lines[-1] += f" {c['differing_targets']} case(s) have slides with different targets."
        lines += ["", "| model | pooled R² | R² mean ± sd over folds | AUC mean ± sd | Pearson r (pooled) | "
                  "MAE (pooled, %) |", "|---|---|---|---|---|---|",
                  f"| MIL (this run) | {cp['r2']:.3f} | {_fmt(cs['r2'])} (over {cs['r2']['n_folds']} of {k} folds) | "
                  f"{_fmt(cs['auc'])} | {cp['pearson']:.3f} | {cp['mae']:.2f} |"]
        for name, b in res["baselines"].items():
            bp, bs = b["per_case"]["pooled"], b["per_case"]["mean_sd"]
            lines.append(f"| {name} | {bp['r2']:.3f} | {_fmt(bs['r2'])} | {_fmt(bs['auc'])} | {bp['pearson']:.3f} | "
                         f"{bp['mae']:.2f} |")
        lines.append("")
    lines += [f"Fold {f} has no R²: fewer than 2 test slides, or one target for all of them." for f, m in
              res["per_fold"].items() if math.isnan(m["r2"])]
    lines += [f"Fold {f} has no AUC: all its test slides are on one side of the cut-off." for f, m in
              res["per_fold"].items() if math.isnan(m["auc"])]
    return "\n".join(lines)


def _scatter(rows: list[dict], path: Path, title: str, pooled: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    folds = sorted({r["fold"] for r in rows})
    for f in folds:
        sel = [r for r in rows if r["fold"] == f]
        ax.scatter([r["target"] for r in sel], [r["pred"] for r in sel], s=18, label=f"fold {f}")
    hi = max(max(r["target"] for r in rows), max(r["pred"] for r in rows), 1.0) * 1.05
    ax.plot([0, hi], [0, hi], "k--", lw=0.8)
    ax.set_xlim(0, hi), ax.set_ylim(0, hi)
    ax.set_xlabel("target sTIL %"), ax.set_ylabel("predicted sTIL %")
    ax.set_title(f"{title}\nR² {pooled['r2']:.2f}, r {pooled['pearson']:.2f}")
    if len(folds) <= 10:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
