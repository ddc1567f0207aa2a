"""The ``train`` stage's bookkeeping: whether earlier fold models may stand, and its summary.

``prepare_run`` compares the run folder's record (``made_by.json``, see ``made_by.py``) with what
this run would train from: the same -> the fold models are reused; other label contents or
feature files -> they are removed and retrained, and the reason is returned; other training
options, another feature width or encoder, or fold models without a record -> refused (one line
naming what changed and ``--overwrite``) before any file is touched.

``write_train_summary`` writes ``summary.json`` / ``summary.md`` like every other stage: status,
folds trained or reused (and why they were retrained), the slides left out (feature files without a
label row, label rows with an empty target), per-fold R^2 / MSE / ROC AUC of the
out-of-fold predictions (``evaluate.slide_metrics``), the mean +- sd over the folds where each is
defined (and over how many), and the folds without an R^2 (fewer than 2 test slides, or one target
for all) or without an AUC (test slides all on one side of the cut-off), by name. ``per_case``: the same
metrics over cases (patients), each case's prediction the mean of its slides' predictions (``evaluate.case_rows``);
with one slide per case they equal the per-slide ones, and ``summary.md`` shows them (and labels the other
lines per slide) only when some case has several slides. Strict JSON: an undefined number is ``null``.

Not covered: metrics of the fold models on their validation slides (only ``best_val_mse``).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from adaptome.core.atomic import write_text_atomic
from adaptome.domains.pathology.evaluate import case_note
from adaptome.domains.pathology.made_by import compare, read_record, write_record
from adaptome.domains.pathology.pipeline import StaleResultError, write_json

RECORD = "made_by.json"


def prepare_run(out: Path, current: dict, features_dir, overwrite: bool) -> str | None:
    """Check earlier fold models in ``out`` against ``current``; returns why they are retrained
    (``None``: nothing to retrain, or a fresh folder). Raises ``StaleResultError`` to refuse."""
    models = sorted(out.glob("fold_*/model.safetensors"))
    if not models:
        return None
    stored = read_record(out / RECORD)
    verdict = compare(stored, current)
    if verdict.action == "reuse":
        return None
    if verdict.action == "refuse" and not overwrite:
        old_w = (stored or {}).get("params", {}).get("feature_width")
        new_w = current["params"]["feature_width"]
        if old_w is not None and old_w != new_w:
            raise StaleResultError(
                f"{out}: the fold models take {old_w}-wide features but {features_dir} holds {new_w}-wide ones "
                f"(encoder {current['params']['encoder'] or '?'}); pass --overwrite to retrain them on these "
                f"features, or choose another --out")
        raise StaleResultError(f"{out}: the fold models were trained with other parameters ({verdict.why}); "
                               f"pass --overwrite to retrain them, or choose another --out")
    for d in out.glob("fold_*"):
        shutil.rmtree(d)
    for name in ("predictions.csv", "cv_summary.json", RECORD):
        (out / name).unlink(missing_ok=True)
    return verdict.why


def record_run(out: Path, current: dict) -> None:
    """Write the run's record (after ``prepare_run`` and before training)."""
    out.mkdir(parents=True, exist_ok=True)
    write_record(out / RECORD, current)


def _mean_sd(vals: list[float]) -> dict:
    return {"mean": float(np.mean(vals)) if vals else None,
            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else None), "n_folds": len(vals)}


def write_train_summary(out: Path, res: dict, cutoff: float) -> dict:
    """``summary.json`` / ``summary.md`` of a CV run (``res``: ``train_cv``'s result plus ``status``,
    ``redo_reason``); a run that is not complete gets its status only. Returns the summary."""
    from adaptome.domains.pathology.evaluate import read_predictions, slide_metrics

    summary: dict = {"stage": "train", "status": res["status"]}
    if "folds" not in res:
        write_json(out / "summary.json", summary)
        write_text_atomic(out / "summary.md", f"# train summary\n\n- status: {res['status']}\n")
        return summary
    rows = read_predictions(res["predictions"])
    folds, no_auc, no_r2 = [], {}, {}
    for info in res["folds"]:
        sel = [r for r in rows if r["fold"] == info["fold"]]
        m = slide_metrics([r["target"] for r in sel], [r["pred"] for r in sel], cutoff)
        if math.isnan(m["r2"]):
            no_r2[info["fold"]] = _why_no_r2([r["target"] for r in sel])
        high = sum(r["target"] >= cutoff for r in sel)
        if math.isnan(m["auc"]):
            side = "no" if high == 0 else "only"
            no_auc[info["fold"]] = f"{side} test slides with target >= {cutoff:g} % ({len(sel)} slides)"
        folds.append({"fold": info["fold"], "model": "reused" if info.get("reused") else "trained",
                      "n_train": info.get("n_train"), "n_val": info.get("n_val"), "n_test": len(sel),
                      "best_val_mse": info.get("best_val_mse"), "r2": m["r2"], "mse": m["mse"], "auc": m["auc"],
                      # the weights kept are the lowest-MSE evaluation's; without validation slides that MSE
                      # (best_val_mse) is on the fold's training slides
                      "selected_on": "validation slides" if info.get("n_val") else "training slides"})
    pooled = slide_metrics([r["target"] for r in rows], [r["pred"] for r in rows], cutoff)
    finite = lambda key: [f[key] for f in folds if not math.isnan(f[key])]  # noqa: E731
    per_case = _per_case(rows, [f["fold"] for f in folds], cutoff, res["predictions"])
    summary.update(
        out_dir=str(out), k=len(folds), cutoff=cutoff, retrained_because=res.get("redo_reason"),
        trained=[f["fold"] for f in folds if f["model"] == "trained"],
        reused=[f["fold"] for f in folds if f["model"] == "reused"],
        r2={**_mean_sd(finite("r2")), "of_folds": len(folds), "folds_without_r2": no_r2},
        mse=_mean_sd(finite("mse")),
        auc={**_mean_sd(finite("auc")), "of_folds": len(folds), "folds_without_auc": no_auc},
        pooled={k: pooled[k] for k in ("r2", "mse", "auc", "pearson", "spearman")}, folds=folds,
        predictions=res["predictions"], best_fold=res.get("best_fold"), n_slides=len(rows),
        unlabelled=res.get("unlabelled", []), no_target=res.get("no_target", []), per_case=per_case)
    write_json(out / "summary.json", summary)
    write_text_atomic(out / "summary.md", _markdown(summary))
    return summary


def _per_case(rows: list[dict], fold_ids: list[int], cutoff: float, source) -> dict:
    """The summary's metrics over cases (``evaluate.case_rows``: a case's prediction is the mean of its slides'
    predictions, its target the mean of their targets): per fold, mean +- sd over the folds where each is
    defined, pooled."""
    from adaptome.domains.pathology.evaluate import CASE_RULES, case_ids, case_rows, slide_metrics

    cases, rule = case_ids(rows)  # train writes each slide's case_id into predictions.csv
    crows = case_rows(rows, cases, source)
    folds = []
    for f in fold_ids:
        sel = [c for c in crows if c["fold"] == f]
        m = slide_metrics([c["target"] for c in sel], [c["pred"] for c in sel], cutoff)
        folds.append({"fold": f, "n_cases": len(sel), "r2": m["r2"], "mse": m["mse"], "auc": m["auc"]})
    finite = lambda key: [f[key] for f in folds if not math.isnan(f[key])]  # noqa: E731
    pooled = slide_metrics([c["target"] for c in crows], [c["pred"] for c in crows], cutoff)
    return {"n_cases": len(crows), "several_slides": sum(c["n_slides"] > 1 for c in crows),
            "differing_targets": sum(c["n_targets"] > 1 for c in crows), "case_from": CASE_RULES[rule],
            "r2": {**_mean_sd(finite("r2")), "of_folds": len(folds)}, "mse": _mean_sd(finite("mse")),
            "auc": {**_mean_sd(finite("auc")), "of_folds": len(folds)},
            "pooled": {k: pooled[k] for k in ("r2", "mse", "auc", "pearson", "spearman", "mae")}, "folds": folds}


def _why_no_r2(targets: list[float]) -> str:
    """Why a fold's R^2 is undefined: fewer than 2 test slides, or one target for all of them."""
    if len(targets) < 2:
        return f"only {len(targets)} test slide (R² needs at least 2, with different targets)"
    return f"all its {len(targets)} test slides have target {targets[0]:g} %"


def _num(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _markdown(s: dict) -> str:
    auc = s["auc"]
    lines = ["# train summary", "", f"- status: {s['status']}",
             f"- folds: {s['k']} ({len(s['trained'])} trained, {len(s['reused'])} reused with the same inputs)"]
    lines.append(f"- slides: {s['n_slides']} labelled with features; {len(s['unlabelled'])} feature files without a "
                 f"label left out" + (f" ({', '.join(s['unlabelled'][:10])}{' ...' * (len(s['unlabelled']) > 10)})"
                                      if s["unlabelled"] else ""))
    if s["no_target"]:
        lines.append(f"- {len(s['no_target'])} labelled slides without a target (empty cell) left out: "
                     f"{', '.join(s['no_target'][:20])}{' ...' * (len(s['no_target']) > 20)}")
    if s["retrained_because"]:
        lines.append(f"- earlier fold models retrained because {s['retrained_because']}")
    r2 = s["r2"]
    tag = "per slide: " if s["per_case"]["several_slides"] else ""  # beside the per-case line below
    lines += [f"- {tag}R² over {r2['n_folds']} of {r2['of_folds']} folds: {_num(r2['mean'])} ± {_num(r2['sd'])}; "
              f"pooled {_num(s['pooled']['r2'])}"]
    lines += [f"  - fold {f} has no R²: {why}" for f, why in r2["folds_without_r2"].items()]
    lines += [f"- {tag}ROC AUC (target >= {s['cutoff']:g} %) over {auc['n_folds']} of {auc['of_folds']} folds: "
              f"{_num(auc['mean'])} ± {_num(auc['sd'])}; pooled {_num(s['pooled']['auc'])}"]
    lines += [f"  - fold {f} has no AUC: {why}" for f, why in auc["folds_without_auc"].items()]
    c = s["per_case"]
    if c["several_slides"]:  # the lines above are per slide: a case with two slides is counted twice there
        lines += [f"- per case ({case_note(c['n_cases'], c['several_slides'])}; a case's prediction is the mean of "
                  f"its slides' predictions, its target the mean of their targets; a slide's case: {c['case_from']}): "
                  f"R² over {c['r2']['n_folds']} of {c['r2']['of_folds']} folds: {_num(c['r2']['mean'])} ± "
                  f"{_num(c['r2']['sd'])}; pooled {_num(c['pooled']['r2'])}; ROC AUC over {c['auc']['n_folds']} of "
                  f"{c['auc']['of_folds']} folds: {_num(c['auc']['mean'])} ± {_num(c['auc']['sd'])}; pooled "
                  f"{_num(c['pooled']['auc'])}; pooled Pearson r {_num(c['pooled']['pearson'])}, MAE "
                  f"{_num(c['pooled']['mae'], '.2f')} %"]
        if c["differing_targets"]:
            lines.append(f"  - {c['differing_targets']} case(s) have slides with different targets")
    lines += ["", "| fold | model | train | val | test | R² | MSE (%²) | AUC |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {f['fold']} | {f['model']} | {f['n_train']} | {f['n_val']} | {f['n_test']} | {_num(f['r2'])} | "
              f"{_num(f['mse'], '.1f')} | {_num(f['auc'])} |" for f in s["folds"]]
    on_train = [str(f["fold"]) for f in s["folds"] if f.get("selected_on") == "training slides"]
    if on_train:
        lines += ["", f"Folds {', '.join(on_train)} have no validation slides (val_frac 0): each keeps the weights of "
                  "its lowest training MSE, and its best_val_mse is measured on its training slides."]
    return "\n".join(lines) + "\n"
