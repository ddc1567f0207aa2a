"""Pathology benchmark: the default pipeline on sites it never trained on (leave-one-site-out CV).

Question: on synthetic cohorts whose folds are grouped by site (each test fold is a site no training
slide came from), does the MIL beat the majority predictor and the dark-pixel baseline, and which change
of the pipeline helps across cohorts? Per cohort: ``synth`` (hard) -> ``tile`` -> ``extract`` (baseline
encoder, once) -> ``train`` per variant (k = number of sites, grouped by site) -> metrics of each variant
and of the baselines (``evaluate``'s, fitted on the same folds).

Run: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/pathology/unseen_sites.py --cohorts
11:24:3:jpeg,...`` (cohort = seed:n_slides:n_sites:compression). Writes ``results_unseen.json`` /
``results_unseen.md`` beside this file.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: variant -> (TileConfig overrides, MILTrainConfig overrides); variants with the same tiling share one job folder
VARIANTS = {
    "default": ({}, {}),
    "stain_norm": ({"stain_norm": "macenko"}, {}),
    "stain_norm_tiles": ({"stain_norm": "macenko_tiles"}, {}),
}


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for p in ("torch", "numpy", "scikit-learn", "openslide-python", "tifffile"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "absent"
    out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                                       text=True).stdout.strip()
    return out


def metrics(rows: list[dict]) -> dict:
    """Pooled R^2, fold-mean R^2 +- sd, MAE, per-site MAE of held-out predictions."""
    import numpy as np

    def r2(p, t):
        p, t = np.asarray(p, float), np.asarray(t, float)
        return float(1 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2))

    folds = sorted({r["fold"] for r in rows})
    fr = [r2([r["pred"] for r in rows if r["fold"] == f], [r["target"] for r in rows if r["fold"] == f])
          for f in folds]
    sites = sorted({r["site"] for r in rows})
    return {"pooled_r2": r2([r["pred"] for r in rows], [r["target"] for r in rows]),
            "fold_r2_mean": float(np.mean(fr)), "fold_r2_sd": float(np.std(fr, ddof=1)) if len(fr) > 1 else 0.0,
            "mae": float(np.mean([abs(r["pred"] - r["target"]) for r in rows])),
            "site_mae": {g: float(np.mean([abs(r["pred"] - r["target"]) for r in rows if r["site"] == g]))
                         for g in sites},
            "pred_range": [float(min(r["pred"] for r in rows)), float(max(r["pred"] for r in rows))]}


def run_cohort(work: Path, seed: int, n_slides: int, n_sites: int, compression: str, names: list[str],
               args) -> dict:
    from adaptome.domains.pathology import stages
    from adaptome.domains.pathology.config import ExtractConfig, MILTrainConfig, TileConfig
    from adaptome.domains.pathology.evaluate import evaluate_predictions
    from adaptome.domains.pathology.synth import make_hard_cohort

    slides = work / "slides"
    if not (slides / "labels.csv").is_file():
        make_hard_cohort(slides, n_slides=n_slides, seed=seed, n_sites=n_sites, compression=compression)
    labels = slides / "labels.csv"
    site_of = {r["slide_id"]: r["site"] for r in csv.DictReader(labels.open())}
    out = {}
    for name in names:
        t0 = time.perf_counter()
        tile_kw, train_kw = VARIANTS[name]
        job = work / ("job_" + "_".join(f"{k}-{v}" for k, v in sorted(tile_kw.items())))
        stages.tile(TileConfig(slides=str(slides), out_dir=str(job), magnification=20, tile_size=64,
                               thumb_size=512, **tile_kw), progress=False)
        tiles_dir = job / "tiles_20x_64px_0ov"
        stages.extract(ExtractConfig(slides=str(slides), tiles_dir=str(tiles_dir), encoder="baseline",
                                     num_workers=0), progress=False)
        fdir = tiles_dir / "features_baseline"
        res = stages.train(MILTrainConfig(features_dir=str(fdir), labels=str(labels),
                                          out_dir=str(work / f"train_{name}"), k=n_sites, group_by="site",
                                          max_steps=args.max_steps, **train_kw), progress=False)
        rows = [{"slide_id": r["slide_id"], "fold": int(r["fold"]), "pred": float(r["pred"]),
                 "target": float(r["target"]), "site": site_of[r["slide_id"]]}
                for r in csv.DictReader(open(res["predictions"]))]
        out[name] = {**metrics(rows), "pipeline_s": time.perf_counter() - t0, "slides": rows}
        if "baselines" not in out:
            ev = evaluate_predictions(res["predictions"], Path(res["out_dir"]) / "eval", cutoff=30.0)
            out["baselines"] = {}
            for b, v in ev["baselines"].items():
                brows = [{**r, "site": site_of[r["slide_id"]]} for r in v["rows"]]
                out["baselines"][b] = {k: x for k, x in metrics(brows).items()}
        print(seed, n_slides, n_sites, name, json.dumps({k: v for k, v in out[name].items() if k != "slides"},
                                                        default=lambda x: round(x, 3)), flush=True)
    print("baselines", json.dumps(out["baselines"], default=lambda x: round(x, 3)), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohorts", default="11:24:3:jpeg")
    ap.add_argument("--variants", default="default")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--work", default=None, help="keep cohorts here (reused on re-run)")
    ap.add_argument("--out", default=str(HERE / "results_unseen.json"))
    args = ap.parse_args()
    import tempfile

    names = args.variants.split(",")
    results = {"versions": _versions(), "args": vars(args), "cohorts": {}}
    root = Path(args.work or tempfile.mkdtemp(prefix="patho_unseen_"))
    for spec in args.cohorts.split(","):
        seed, n, s, comp = spec.split(":")
        results["cohorts"][spec] = run_cohort(root / spec.replace(":", "_"), int(seed), int(n), int(s), comp,
                                              names, args)
        Path(args.out).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
