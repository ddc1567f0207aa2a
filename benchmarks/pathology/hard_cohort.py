"""Pathology benchmark: the default pipeline against the simple baselines on the HARD synthetic cohort.

Question: on a cohort with the confounders of real slides (``synth_hard.py``: four staining sites,
pen / fold / blur artefacts, intratumoral lymphocytes, nuclear grade, fibroblasts and red cells,
case pairs), does the MIL pipeline beat a one-feature dark-pixel baseline, and which parts of the
pipeline matter? For each cohort seed: ``synth`` (hard) -> ``tile`` -> ``extract`` -> ``train``
(5-fold CV grouped by case) -> ``evaluate`` (baselines on the same folds), through the stage
functions the CLI calls, once per variant (the default pipeline, and the default with one part
switched off). Reported per variant: pooled R^2, fold-mean R^2 +- sd, the dark-pixel and
mean-feature baselines' R^2 on the same folds, MAE on slides with artefacts vs clean ones, MAE
per site, Spearman of tile scores with the planted tile density on tiles that are >= half stroma
(pooled over slides) and the median within-slide Spearman.

Run: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/pathology/hard_cohort.py`` (add
``--seeds 0,1,2``). Writes ``results_hard_cohort.json`` and ``results_hard_cohort.md`` beside this file.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: variant -> (TileConfig overrides, encoder, ExtractConfig encoder options, MILTrainConfig overrides); "default"
#: is the pipeline's defaults. Variants with the same tiling and encoder share one job folder (tiled and encoded once).
VARIANTS = {
    "default": ({}, "baseline", {}, {}),
    "uncentred": ({}, "baseline", {"centre": False}, {}),  # the default before the encoder's centring
    "centred": ({}, "baseline", {"centre": True}, {}),  # all 35 stain / texture numbers minus their slide mean
    "centre_intensity": ({}, "baseline", {"centre": "intensity"}, {}),  # only the stain-amount numbers centred
    "attention": ({}, "baseline", {}, {"aggregation": "attention"}),
    "attention_old_training": ({}, "baseline", {}, {"aggregation": "attention", "lr": 1e-3, "val_frac": 0.2}),
    "ratio_old_training": ({}, "baseline", {}, {"lr": 1e-3, "val_frac": 0.2}),
    "mean": ({}, "baseline", {}, {"aggregation": "mean"}),
    "no_lymph_features": ({}, "baseline", {"lymph": False}, {}),
    "fixed_stroma_cut": ({}, "baseline", {"stroma_cut": 0.42}, {}),
    "with_artefact_mask": ({"artefacts": True}, "baseline", {}, {}),
    "with_stain_norm": ({"stain_norm": "macenko"}, "baseline", {}, {}),
}


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for p in ("torch", "numpy", "scikit-learn", "openslide-python", "tifffile"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "absent"
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                                           text=True).stdout.strip()
    except OSError:
        out["git_commit"] = "unknown"
    return out


def tile_scores(mil_dir: Path, features_dir: Path, pred_rows: list[dict]) -> dict[str, tuple]:
    """Per slide: (coords, tile scores in %) from the fold model that held the slide out."""
    import numpy as np
    import torch

    from adaptome.domains.pathology.extract import read_features
    from adaptome.domains.pathology.train import load_model

    models, out = {}, {}
    for r in pred_rows:
        f = r["fold"]
        if f not in models:
            models[f] = load_model(mil_dir / f"fold_{f}").eval()
        feats, coords, _ = read_features(features_dir / f"{r['slide_id']}.h5")
        with torch.no_grad():
            res = models[f](torch.from_numpy(np.asarray(feats, np.float32))[None])
        out[r["slide_id"]] = (coords, 100.0 * res.tiles[0].numpy())
    return out


def tile_agreement(slides_dir: Path, scores: dict, size0: float) -> dict:
    """Spearman of tile scores with the planted density on tiles >= half stroma: pooled, and the
    median over slides (slides with >= 5 such tiles)."""
    import numpy as np
    from scipy.stats import spearmanr

    from adaptome.domains.pathology.synth import read_hard_truth
    from adaptome.domains.pathology.synth_hard import tile_truth

    all_s, all_t, per_slide = [], [], []
    for sid, (coords, s) in scores.items():
        truth, scale = read_hard_truth(slides_dir / "truth" / f"{sid}.npz")
        tt = tile_truth(truth, coords, size0, scale)
        keep = (tt["stroma_frac"] >= 0.5) & np.isfinite(tt["lymph_density"])
        all_s.append(s[keep])
        all_t.append(tt["lymph_density"][keep])
        if keep.sum() >= 5 and np.std(tt["lymph_density"][keep]) > 0:
            per_slide.append(float(spearmanr(s[keep], tt["lymph_density"][keep]).statistic))
    pooled = float(spearmanr(np.concatenate(all_s), np.concatenate(all_t)).statistic)
    return {"tile_spearman": pooled, "n_tiles": int(sum(len(x) for x in all_s)),
            "within_slide_spearman_median": float(np.median(per_slide)) if per_slide else float("nan"),
            "n_slides_within": len(per_slide)}


def stain_diagnosis(tiles_dir: Path, slides: Path, facts: dict) -> dict:
    """Does the per-slide Macenko estimate track the site's stain, or the slide's content? Pearson r of
    (estimated strength / drawn site strength) with the target, per stain, and that ratio's coefficient
    of variation (0 for a perfect estimate)."""
    import numpy as np

    from adaptome.domains.pathology.synth_hard import site_stain
    from adaptome.domains.pathology.tiling import read_coords

    rows = []
    for h5 in sorted(tiles_dir.glob("*.h5")):
        attrs = read_coords(h5)[1]
        f = facts[h5.stem]
        _, _, s_h, s_e, _ = site_stain(int(f["site"].split("_")[1]), 1.0)
        est = np.asarray(attrs["stain_max"], float)
        rows.append((est[0] / s_h, est[1] / s_e, float(f["target"])))
    r = np.array(rows)
    out = {}
    for j, name in enumerate(("h", "e")):
        out[f"stain_{name}_r_target"] = float(np.corrcoef(r[:, j], r[:, 2])[0, 1])
        out[f"stain_{name}_cv"] = float(r[:, j].std() / r[:, j].mean())
    return out


def run_variant(work: Path, slides: Path, labels: Path, name: str, args) -> dict:
    import numpy as np

    from adaptome.domains.pathology import stages
    from adaptome.domains.pathology.config import ExtractConfig, MILTrainConfig, TileConfig
    from adaptome.domains.pathology.evaluate import evaluate_predictions, read_predictions
    from adaptome.domains.pathology.tiling import read_coords

    tile_kw, enc, enc_opts, train_kw = VARIANTS[name]
    job = work / ("job_" + "_".join(f"{k}-{v}" for k, v in sorted({**tile_kw, **enc_opts}.items())))
    t0 = time.perf_counter()
    tcfg = TileConfig(slides=str(slides), out_dir=str(job), magnification=args.mag, tile_size=args.tile_size,
                      thumb_size=512, **tile_kw)
    stages.tile(tcfg, progress=False)
    tiles_dir = job / f"tiles_{args.mag:g}x_{args.tile_size}px_0ov"
    stages.extract(ExtractConfig(slides=str(slides), tiles_dir=str(tiles_dir), encoder=enc, encoder_options=enc_opts,
                                 num_workers=0), progress=False)
    fdir = tiles_dir / f"features_{enc}"
    res = stages.train(MILTrainConfig(features_dir=str(fdir), labels=str(labels), out_dir=str(job / f"train_{name}"),
                                      k=5, group_by="case_id", max_steps=args.max_steps, seed=args.seed_offset,
                                      **train_kw), progress=False)
    t_pipe = time.perf_counter() - t0
    ev = evaluate_predictions(res["predictions"], Path(res["out_dir"]) / "eval", cutoff=30.0)
    rows = read_predictions(res["predictions"])
    facts = {r["slide_id"]: r for r in csv.DictReader((slides / "truth" / "slides.csv").open())}
    has_art = {s for s, f in facts.items() if f["pen"] or f["fold"] == "True" or f["blur"] == "True"}
    art = [abs(r["pred"] - r["target"]) for r in rows if r["slide_id"] in has_art]
    clean = [abs(r["pred"] - r["target"]) for r in rows if r["slide_id"] not in has_art]
    site_mae = {g: v["mae"] for g, v in ev["site_mae"]["mil"].items()}
    size0 = float(read_coords(next(tiles_dir.glob("*.h5")))[1]["tile_size_level0"])
    agree = tile_agreement(slides, tile_scores(Path(res["out_dir"]), fdir, rows), size0)
    b = ev["baselines"]
    extra = stain_diagnosis(tiles_dir, slides, facts) if tile_kw.get("stain_norm") == "macenko" else {}
    return {**extra, "pooled_r2": ev["pooled"]["r2"], "fold_r2_mean": ev["mean_sd"]["r2"]["mean"],
            "fold_r2_sd": ev["mean_sd"]["r2"]["sd"], "auc_mean": ev["mean_sd"]["auc"]["mean"],
            "dark_pooled_r2": b["dark_pixels"]["pooled"]["r2"],
            "dark_fold_r2_mean": b["dark_pixels"]["mean_sd"]["r2"]["mean"],
            "dark_fold_r2_sd": b["dark_pixels"]["mean_sd"]["r2"]["sd"],
            "meanfeat_pooled_r2": b["mean_features"]["pooled"]["r2"],
            "meanfeat_fold_r2_mean": b["mean_features"]["mean_sd"]["r2"]["mean"],
            "mae_artefact": float(np.mean(art)) if art else float("nan"), "n_artefact": len(art),
            "mae_clean": float(np.mean(clean)) if clean else float("nan"), "n_clean": len(clean),
            "site_mae": site_mae, "site_mae_ratio": max(site_mae.values()) / max(min(site_mae.values()), 1e-9),
            **agree, "pipeline_s": t_pipe,
            # per slide (for pooling over cohorts): id, site, artefact flag, target and held-out prediction (%)
            "slides": [{"slide_id": r["slide_id"], "site": facts[r["slide_id"]]["site"], "fold": r["fold"],
                        "artefact": r["slide_id"] in has_art, "target": r["target"], "pred": r["pred"]}
                       for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--n-slides", type=int, default=40)
    ap.add_argument("--grid", type=int, default=16, help="cells per side (64 px each at 0.5 um/px)")
    ap.add_argument("--mag", type=float, default=20)
    ap.add_argument("--tile-size", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--seed-offset", type=int, default=0, help="MIL training seed")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--merge", nargs="*", default=None,
                    help="only merge these results_hard_cohort.json files (runs of other seeds / variants) into --out")
    args = ap.parse_args()
    if args.merge:
        merge([Path(p) for p in args.merge], args, Path(args.out))
        return

    from adaptome.domains.pathology.synth import make_hard_cohort

    results = {"versions": _versions(), "args": vars(args), "seeds": {}}
    names = args.variants.split(",")
    for seed in [int(s) for s in args.seeds.split(",")]:
        work = Path(tempfile.mkdtemp(prefix="patho_hard_"))
        try:
            t0 = time.perf_counter()
            labels = make_hard_cohort(work / "slides", n_slides=args.n_slides, seed=seed, grid=args.grid)
            results["seeds"][seed] = {"synth_s": time.perf_counter() - t0}
            for name in names:
                r = run_variant(work, work / "slides", labels, name, args)
                results["seeds"][seed][name] = r
                print(seed, name, json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                                              if k != "slides"}), flush=True)
                write(results, args, Path(args.out))  # after every variant, so a long run keeps what it measured
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print((Path(args.out) / "results_hard_cohort.md").read_text())


def merge(paths: list[Path], args, out: Path) -> None:
    """Join the seeds of several runs (same cohort size and settings) and rewrite the aggregate."""
    runs = [json.loads(p.read_text()) for p in paths]
    results = {"versions": runs[0]["versions"], "args": runs[0]["args"], "seeds": {},
               "commands": [r["command"] for r in runs]}
    names = []
    for r in runs:
        for seed, res in r["seeds"].items():
            results["seeds"].setdefault(seed, {}).update(res)
        names += [n for n in r["args"]["variants"].split(",") if n not in names]
    args.variants, args.seeds = ",".join(names), ",".join(sorted(results["seeds"]))
    write(results, args, out)
    results = json.loads((out / "results_hard_cohort.json").read_text())
    results["command"] = (" ; ".join(results["commands"]) + " ; then .venv/bin/python benchmarks/pathology/"
                          "hard_cohort.py --merge <each run's results_hard_cohort.json, in that order>")
    (out / "results_hard_cohort.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "results_hard_cohort.md").write_text(render(results))
    print((out / "results_hard_cohort.md").read_text())


def write(results: dict, args, out: Path) -> None:
    """Aggregate over the seeds measured so far and write ``results_hard_cohort.json`` / ``results_hard_cohort.md``."""
    import numpy as np

    agg = {}
    for name in args.variants.split(","):
        per = [results["seeds"][s][name] for s in results["seeds"] if name in results["seeds"][s]]
        if not per:
            continue
        agg[name] = {k: float(np.mean([p[k] for p in per])) for k in per[0] if isinstance(per[0][k], (int, float))}
        agg[name]["n_seeds"] = len(per)
        sd = float(np.std([p["pooled_r2"] for p in per], ddof=1)) if len(per) > 1 else 0.0
        agg[name]["sd_over_seeds_pooled_r2"] = sd
    results["mean_over_seeds"] = agg
    results["command"] = ("OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/pathology/hard_cohort.py "
                          f"--seeds {args.seeds} --n-slides {args.n_slides} --grid {args.grid} --mag {args.mag:g} "
                          f"--tile-size {args.tile_size} --max-steps {args.max_steps} --variants {args.variants}")
    (out / "results_hard_cohort.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "results_hard_cohort.md").write_text(render(results))


def pooled_errors(res: dict, name: str, n_perm: int = 10_000, seed: int = 0) -> dict | None:
    """Per-slide errors of variant ``name`` pooled over every cohort that recorded them (``slides``):
    per-site MAE over all cohorts' slides of the site, its max/min, the per-cohort max/min, the pooled
    artefact / clean MAE, and a permutation null for the site ratios: the site labels shuffled within
    each cohort (``n_perm`` times; errors kept, sites made exchangeable), so the ratio that noise alone
    gives with these slide counts. None when no cohort recorded slides."""
    import numpy as np

    cohorts = [(sd, v[name]["slides"]) for sd, v in res["seeds"].items() if "slides" in v.get(name, {})]
    if not cohorts:
        return None
    sites = sorted({r["site"] for _, rows in cohorts for r in rows})
    rng = np.random.default_rng(seed)
    err, lab, art = [], [], []
    obs_per, null_per, null_sums, null_counts = {}, [], 0.0, 0.0
    for sd, rows in cohorts:
        e = np.array([abs(r["pred"] - r["target"]) for r in rows])
        onehot = np.array([[r["site"] == g for g in sites] for r in rows], float)  # (n, S)
        counts = onehot.sum(0)
        m = e @ onehot / np.maximum(counts, 1)  # (n,) @ (n, S) -> (S,)
        obs_per[sd] = float(m.max() / max(m.min(), 1e-9))
        perm = np.argsort(rng.random((n_perm, len(e))), axis=1)  # (P, n) a permutation per row
        sums = e[perm] @ onehot  # (P, n) @ (n, S) -> (P, S) per-site error sums under shuffled sites
        mp = sums / np.maximum(counts, 1)
        null_per.append(mp.max(1) / np.maximum(mp.min(1), 1e-9))  # (P,)
        null_sums, null_counts = null_sums + sums, null_counts + counts
        err.append(e)
        lab += [r["site"] for r in rows]
        art += [bool(r.get("artefact", False)) for r in rows]
    err, lab, art = np.concatenate(err), np.array(lab), np.array(art)
    site_mae = {g: float(err[lab == g].mean()) for g in sites}
    ratio = max(site_mae.values()) / max(min(site_mae.values()), 1e-9)
    mp = null_sums / np.maximum(null_counts, 1)  # (P, S) pooled per-site MAE under shuffled sites
    null_pooled = mp.max(1) / np.maximum(mp.min(1), 1e-9)
    null_per = np.concatenate(null_per)
    return {"n_cohorts": len(cohorts), "cohorts": [sd for sd, _ in cohorts], "site_mae": site_mae,
            "site_n": {g: int((lab == g).sum()) for g in sites}, "site_ratio": ratio,
            "site_ratio_per_cohort": obs_per,
            "null_pooled_median": float(np.median(null_pooled)),
            "null_pooled_p95": float(np.quantile(null_pooled, 0.95)),
            "p_pooled": float((1 + (null_pooled >= ratio).sum()) / (1 + n_perm)),
            "null_per_cohort_median": float(np.median(null_per)),
            "null_per_cohort_p95": float(np.quantile(null_per, 0.95)), "n_perm": n_perm,
            "mae_artefact": float(err[art].mean()) if art.any() else float("nan"), "n_artefact": int(art.sum()),
            "mae_clean": float(err[~art].mean()) if (~art).any() else float("nan"), "n_clean": int((~art).sum())}


def render(res: dict) -> str:
    """Markdown with every sentence computed from the numbers."""
    import numpy as np

    agg, a = res["mean_over_seeds"], res["args"]
    res = {**res, "seeds": {str(k): v for k, v in res["seeds"].items()}}  # int keys in a run, str from JSON
    seeds = list(res["seeds"])
    title = "## Pathology: the default pipeline vs simple baselines on the HARD synthetic cohort"
    if "uncentred" in agg:  # a run that compares the encoder's centring
        title += (" (the baseline encoder's `centre` option: the default `scale`, beside "
                  + ", ".join(f"`{n}`" for n in ("centred", "uncentred", "centre_intensity") if n in agg) + ")")
    lines = [title, "",
             f"{a['n_slides']} synthetic slides per cohort ({a['grid'] * 64} px square at 0.5 um/px, "
             f"4 sites, artefacts, intratumoral lymphocytes ...; `synth_hard.py`), tiles of {a['tile_size']} px "
             f"at {a['mag']:g}x, `baseline` encoder, MIL ({a['max_steps']} steps; aggregation and training options "
             "per variant below), 5-fold CV grouped by case; "
             f"cohort seeds {', '.join(map(str, seeds))} (numbers are means over the seeds each variant ran on, "
             "column n). Baselines are fitted on the MIL's own folds and read the variant's own tiles (normalised "
             "ones in `with_stain_norm`).", "",
             "Variants (each is the default pipeline with the options shown changed; `{}` = none; "
             "`fixed_stroma_cut` is the default before the per-slide stroma cut): "
             + "; ".join(f"`{n}`: tiling {VARIANTS[n][0] or '{}'}, encoder options {VARIANTS[n][2] or '{}'}, "
                         f"train {VARIANTS[n][3] or '{}'}" for n in agg if n in VARIANTS) + ".", "",
             "| variant | n | pooled R² | fold R² mean ± sd | dark-pixel pooled R² | dark-pixel fold R² | "
             "mean-features fold R² | MAE artefact / clean | site MAE max/min (mean of per-cohort) | "
             "tile Spearman (≥ ½ stroma) | "
             "median within-slide Spearman |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in agg.items():
        lines.append(f"| {name} | {r['n_seeds']:.0f} | {r['pooled_r2']:.3f} "
                     f"| {r['fold_r2_mean']:.3f} ± {r['fold_r2_sd']:.3f} "
                     f"| {r['dark_pooled_r2']:.3f} | {r['dark_fold_r2_mean']:.3f} | {r['meanfeat_fold_r2_mean']:.3f} "
                     f"| {r['mae_artefact']:.2f} / {r['mae_clean']:.2f} | {r['site_mae_ratio']:.2f} "
                     f"| {r['tile_spearman']:.3f} | {r['within_slide_spearman_median']:.3f} |")
    d = agg.get("default")
    pe = pooled_errors(res, "default") if d else None
    pooled_ok = pe is not None and pe["n_cohorts"] == len(seeds)
    if d:
        if pooled_ok:  # both MAE criteria on slides pooled over the cohorts (what the paragraph below explains)
            art = ("MAE artefact <= 1.5 x clean (slides pooled over the cohorts)",
                   pe["mae_artefact"] <= 1.5 * pe["mae_clean"],
                   f"{pe['mae_artefact']:.2f} over {pe['n_artefact']} slides vs {pe['mae_clean']:.2f} over "
                   f"{pe['n_clean']}; ratio {pe['mae_artefact'] / pe['mae_clean']:.2f}")
            site = ("per-site MAE within a factor 2 (slides pooled over the cohorts)", pe["site_ratio"] <= 2.0,
                    f"max/min {pe['site_ratio']:.2f} over {min(pe['site_n'].values())}-{max(pe['site_n'].values())} "
                    "slides per site; per cohort "
                    + ", ".join(f"{v:.2f}" for v in pe["site_ratio_per_cohort"].values()))
        else:
            art = ("MAE artefact <= 1.5 x clean (means over seeds)", d["mae_artefact"] <= 1.5 * d["mae_clean"],
                   f"{d['mae_artefact']:.2f} vs {d['mae_clean']:.2f}")
            site = ("per-site MAE within a factor 2 (mean of the per-seed max/min)", d["site_mae_ratio"] <= 2.0,
                    f"max/min {d['site_mae_ratio']:.2f}")
        checks = [
            ("pooled R² >= 0.85", d["pooled_r2"] >= 0.85, f"{d['pooled_r2']:.3f}"),
            ("fold-mean R² >= dark-pixel's + 0.1", d["fold_r2_mean"] >= d["dark_fold_r2_mean"] + 0.1,
             f"{d['fold_r2_mean']:.3f} vs {d['dark_fold_r2_mean']:.3f}"),
            art, site,
            ("tile Spearman >= 0.85", d["tile_spearman"] >= 0.85, f"{d['tile_spearman']:.3f}"),
        ]
        lines += ["", "Targets of issue #13 for the default pipeline:", ""]
        lines += [f"- {t}: {'met' if ok else 'NOT met'} ({v})" for t, ok, v in checks]
        if pooled_ok:
            lines += ["", "How the two MAE criteria are aggregated. Both are judged on the held-out errors of every "
                      f"slide pooled over the {pe['n_cohorts']} cohorts: per site "
                      + ", ".join(f"{g} {v:.2f} (n {pe['site_n'][g]})" for g, v in pe["site_mae"].items())
                      + f"; artefact {pe['mae_artefact']:.2f} (n {pe['n_artefact']}) vs clean {pe['mae_clean']:.2f} "
                      f"(n {pe['n_clean']}). A site's MAE over its ~10 slides of one cohort is a noisy estimate "
                      "(a few high-sTIL slides carry most of the error), and the largest of four noisy MAEs over the "
                      "smallest is biased upward, so the per-cohort max/min overstates the site effect; pooling "
                      "gives ~30 slides per site and a ratio of means instead of a mean of ratios, the same way "
                      "for both criteria. How large a ratio noise alone gives: shuffling the site labels within "
                      f"each cohort ({pe['n_perm']} times; the errors stay, the sites become exchangeable) gives "
                      f"a per-cohort max/min of {pe['null_per_cohort_median']:.2f} at the median (95th percentile "
                      f"{pe['null_per_cohort_p95']:.2f}) and a pooled one of {pe['null_pooled_median']:.2f} "
                      f"({pe['null_pooled_p95']:.2f}); the observed pooled ratio {pe['site_ratio']:.2f} is reached "
                      f"or exceeded by {100 * pe['p_pooled']:.1f} % of the shuffles (permutation p = "
                      f"{pe['p_pooled']:.3f}). The per-cohort ratios (seeds "
                      + ", ".join(pe["site_ratio_per_cohort"]) + ": "
                      + ", ".join(f"{v:.2f}" for v in pe["site_ratio_per_cohort"].values())
                      + ") are reported, not judged on."]
            split = []  # where each site's error sits: low- vs high-sTIL slides, pooled over the cohorts
            for g in pe["site_mae"]:
                sl = [r for sd in seeds for r in res["seeds"][sd]["default"]["slides"] if r["site"] == g]
                lo = [abs(r["pred"] - r["target"]) for r in sl if r["target"] <= 25]
                hi = [abs(r["pred"] - r["target"]) for r in sl if r["target"] > 25]
                split.append(f"{g} {np.mean(lo) if lo else float('nan'):.2f} (n {len(lo)}) / "
                             f"{np.mean(hi) if hi else float('nan'):.2f} (n {len(hi)})")
            lines += ["", "Pooled MAE of the default on slides with target <= 25 % / > 25 %, per site: "
                      + "; ".join(split) + "."]
        rows = [(n, pooled_errors(res, n, n_perm=2000)) for n in agg]
        rows = [(n, q) for n, q in rows if q is not None]
        if len(rows) > 1:
            lines += ["", "The pooled MAE criteria for every variant with recorded per-slide errors (slides pooled "
                      "over its cohorts; p: share of 2000 site shuffles with a pooled max/min at least as large):", "",
                      "| variant | cohorts | site MAE " + " / ".join(rows[0][1]["site_mae"]) + " | max/min | p "
                      "| MAE artefact / clean | ratio |", "|---|---|---|---|---|---|---|"]
            for n, q in rows:
                lines.append(f"| {n} | {q['n_cohorts']} | " + " / ".join(f"{v:.2f}" for v in q["site_mae"].values())
                             + f" | {q['site_ratio']:.2f} | {q['p_pooled']:.3f} | {q['mae_artefact']:.2f} / "
                             f"{q['mae_clean']:.2f} | {q['mae_artefact'] / q['mae_clean']:.2f} |")
        lines += ["", "Per seed (default pipeline; the R² and Spearman targets above are checked on means over "
                  "seeds, the MAE ones on slides pooled over the cohorts when every cohort recorded them):", "",
                  "| seed | pooled R² | fold R² | dark-pixel pooled / fold R² | mean-features pooled / fold R² "
                  "| MAE artefact / clean | site MAE max/min | tile Spearman |", "|---|---|---|---|---|---|---|---|"]
        for sd in seeds:
            r = res["seeds"][sd]["default"]
            lines.append(f"| {sd} | {r['pooled_r2']:.3f} | {r['fold_r2_mean']:.3f} | {r['dark_pooled_r2']:.3f} / "
                         f"{r['dark_fold_r2_mean']:.3f} | {r['meanfeat_pooled_r2']:.3f} / "
                         f"{r['meanfeat_fold_r2_mean']:.3f} "
                         f"| {r['mae_artefact']:.2f} / {r['mae_clean']:.2f} | {r['site_mae_ratio']:.2f} "
                         f"| {r['tile_spearman']:.3f} |")
        diffs = []
        for n in agg:
            both = [sd for sd in seeds if n != "default" and n in res["seeds"][sd] and "default" in res["seeds"][sd]]
            if both:
                dp = np.mean([res["seeds"][sd][n]["pooled_r2"] - res["seeds"][sd]["default"]["pooled_r2"]
                              for sd in both])
                df = np.mean([res["seeds"][sd][n]["fold_r2_mean"] - res["seeds"][sd]["default"]["fold_r2_mean"]
                              for sd in both])
                diffs.append(f"`{n}` {dp:+.3f} / {df:+.3f} (over {len(both)} cohort(s))")
        if diffs:
            lines += ["", "Each variant minus the default on the same cohorts, pooled R² / fold-mean R²: "
                      + "; ".join(diffs) + "."]
        better = sum(res["seeds"][sd]["default"]["meanfeat_pooled_r2"] > res["seeds"][sd]["default"]["pooled_r2"]
                     for sd in seeds)
        lines += ["", f"The mean-features ridge baseline has a higher pooled R² than the MIL on {better} of "
                  f"{len(seeds)} cohorts."]
        lines += ["", "Per-site MAE of the default pipeline (%), per cohort seed: " + "; ".join(
            f"{sd}: " + ", ".join(f"{g} {v:.2f}" for g, v in res["seeds"][sd]["default"]["site_mae"].items())
            for sd in seeds) + "."]
        worst = [max(res["seeds"][sd]["default"]["site_mae"].items(), key=lambda kv: kv[1])[0] for sd in seeds]
        lines += ["", f"The site with the largest MAE: {', '.join(worst)} (seeds {', '.join(seeds)}; site_1 is the "
                  "haematoxylin-heavy one, site_2 the pale one, site_3 the eosin-heavy one)."]
        n_sites = len(res["seeds"][seeds[0]]["default"]["site_mae"])
        if len(seeds) > 1 and len(set(worst)) == 1:
            lines[-1] += (f" The same site in all {len(seeds)} cohorts: with exchangeable sites that happens with "
                          f"probability {n_sites ** (1 - len(seeds)):.3f}, so {worst[0]} is systematically the "
                          "weakest site (by how much: the pooled per-site MAE above).")
        fr = [res["seeds"][sd]["default"]["fold_r2_mean"] for sd in seeds]
        fsd = ", ".join(f"{res['seeds'][sd]['default']['fold_r2_sd']:.2f}" for sd in seeds)
        pr = [res["seeds"][sd]["default"]["pooled_r2"] for sd in seeds]
        lines += ["", f"Noise: with 40 slides a fold holds 8, so a fold's R² rests on few targets; the default's "
                  f"fold R² sd within a cohort is {fsd} "
                  f"(seeds {', '.join(seeds)}), and over cohorts its pooled R² spans {min(pr):.3f}-{max(pr):.3f}, "
                  f"its fold-mean R² {min(fr):.3f}-{max(fr):.3f}."]
    sn = [res["seeds"][sd]["with_stain_norm"] for sd in seeds if "stain_h_r_target" in res["seeds"][sd].get(
        "with_stain_norm", {})]
    if sn:
        m = {k: float(np.mean([x[k] for x in sn])) for k in ("stain_h_r_target", "stain_h_cv", "stain_e_r_target",
                                                              "stain_e_cv")}
        lines += ["", f"Why stain normalisation does not help (mean over {len(sn)} cohort(s)): the per-slide "
                  "Macenko strength estimate divided by the site's drawn strength should be constant; for "
                  f"haematoxylin its coefficient of variation is {m['stain_h_cv']:.2f} and it correlates with the "
                  f"slide's target (r = {m['stain_h_r_target']:.2f}); for eosin cv {m['stain_e_cv']:.2f}, r = "
                  f"{m['stain_e_r_target']:.2f}. The 75th-percentile concentration that sets the strength rises with "
                  "the lymphocyte coverage, so normalising divides part of the signal out of every slide."]
    v = res["versions"]
    lines += ["", f"Versions: git {v['git_commit'][:12]}, python {v['python']}, torch {v['torch']}, "
              f"numpy {v['numpy']}, "
              f"scikit-learn {v['scikit-learn']}, openslide-python {v['openslide-python']}."
              + (f" {res['note']}" if res.get("note") else "") + " Reproduce:", "",
              f"    {res['command']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
