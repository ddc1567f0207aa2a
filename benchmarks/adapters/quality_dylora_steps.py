"""A DIAGNOSTIC: does DyLoRA reach LoRA when it trains longer? Its components each receive a gradient on only a
share of the steps (frozen mode: the sampled rank's component alone), so 120 steps may be too few for it.

Setting: the stored run ``results_quality_r8_transductive_s3`` (transductive encoder, rank 8, rates chosen on 3 seeds
per selection fold, head rate from that run). Part 1 (validation, the benchmark's selection folds and seeds): every
point of ``POINTS`` trained for ``LONG`` steps instead of 120, scored as the benchmark scores it (DyLoRA: the mean
over ranks 1..8 of the pooled macro-F1); the stored run's 120-step validation scores beside them. Part 2 (test
folds): the DyLoRA point best on validation at ``LONG`` steps, trained at the stored run's seeds on the 3 test folds
and scored at every rank, against the stored run's LoRA trained at each rank (120 steps, its chosen rate).

It reads test scores for one point chosen on validation only, and changes nothing in the benchmark. The protocol
that turns it into a result, every row choosing its number of steps with its rate on validation, is
``quality.py --steps-grid 120 480`` (results_quality_r8_transductive_steps.md). Run from the repository root:
``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality_dylora_steps`` (``--report-only``).
Not covered: other step counts, LoRA at ``LONG`` steps on the test folds (on validation it gains nothing).
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.adapters import quality as q
from benchmarks.adapters import quality_diag as diag
from benchmarks.adapters import quality_task as qt
from benchmarks.adapters.quality_select import point_score

HERE = Path(__file__).resolve().parent
STORED = HERE / "results_quality_r8_transductive_s3.json"
COMMAND = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality_dylora_steps"
LONG = 480  # 4x the benchmark's 120 steps
RANK, ALPHA = 8, 16.0
POINTS = [("dylora", {"mode": m}, lr) for m in ("nested", "frozen") for lr in (1e-3, 3e-3)] + [("lora", {}, 1e-2)]
MARGIN = 5.0  # the target: DyLoRA within 5 points of accuracy of LoRA at every rank


def _validation(pool, head_lr: float, tmp: str) -> list[dict]:
    ranks = list(range(1, RANK + 1))
    out = []
    for method, extra, lr in POINTS:
        opts = {"r": RANK, "lora_alpha": ALPHA, **extra}
        jobs = [(method, opts, lr, head_lr, j, ranks if method == "dylora" else None, tmp, j + qt.SELECT_FOLDS * s)
                for s in range(q.SELECT_SEEDS) for j in range(qt.SELECT_FOLDS)]
        sc = point_score(pool.starmap(q._select_job, jobs, chunksize=1))
        out.append({"method": method, "variant": extra, "lr": lr, "macro_f1": sc["macro_f1"],
                    "by_rank_macro_f1": sc.get("by_rank_macro_f1", {})})
        print(f"{method} {extra} {lr:g}: validation macro-F1 {100 * sc['macro_f1']:.1f}", flush=True)
    return out


def run() -> dict:
    t0, env = time.time(), q.environment()
    stored = json.loads(STORED.read_text(encoding="utf-8"))
    st = stored["setup"]
    qt.use_corpus(st["corpus"])
    q.STEPS, q.SELECT_SEEDS = LONG, st["select_seeds"]
    _, _, _, key = diag.frozen_setup(RANK, stored["encoder"]["key"])
    head_lr = stored["head_lr"]
    with tempfile.TemporaryDirectory() as tmp, multiprocessing.get_context("fork").Pool(q.WORKERS) as pool:
        val = _validation(pool, head_lr, tmp)
        dy = max((p for p in val if p["method"] == "dylora"), key=lambda p: (p["macro_f1"], -p["lr"]))
        unit = ("dylora", {"r": RANK, "lora_alpha": ALPHA, **dy["variant"]}, dy["lr"], head_lr)
        test = diag.test_points(pool, [unit], tuple(st["seeds"]), list(range(1, RANK + 1)), tmp)[0]
    return {"command": COMMAND, "env": env, "stored": STORED.name, "encoder_key": key, "steps": LONG,
            "stored_steps": st["steps"], "select_seeds": st["select_seeds"], "head_lr": head_lr,
            "seeds": st["seeds"], "validation": val, "chosen": dy, "test": test, "seconds": time.time() - t0}


def _stored_point(stored: dict, method: str, variant: dict, lr: float) -> float | None:
    row = next(r for r in stored["rows"] if r["method"] == method)
    for p in row["selection"]["points"]:
        if p["lr"] == lr and p["variant"] == variant:
            return p["macro_f1"]
    return None


def _row_acc(stored: dict, method: str) -> float:
    return 100 * next(r for r in stored["rows"] if r["method"] == method)["accuracy"]["mean"]


def markdown(res: dict) -> str:
    stored = json.loads((HERE / res["stored"]).read_text(encoding="utf-8"))
    env = res["env"]
    ranks = [str(k) for k in range(1, RANK + 1)]
    lines = [f"## DIAGNOSTIC: DyLoRA trained {res['steps']} steps instead of {res['stored_steps']} "
             f"(transductive encoder, rank {RANK})", "",
             f"Command: `{res['command']}` ({res['seconds'] / 60:.1f} min). Git commit `{env['git_commit'][:12]}`"
             f"{' with uncommitted changes' if env['git_dirty'] else ''}. Compared with `{res['stored']}` (same "
             f"encoder `{res['encoder_key']}`, head rate {res['head_lr']:g}, selection folds and "
             f"{res['select_seeds']} seeds per fold).", "",
             "Validation macro-F1 % (the benchmark's selection score; DyLoRA: mean over ranks 1..8):", "",
             f"| row | rate | {res['stored_steps']} steps (stored run) | {res['steps']} steps |",
             "|---|---:|---:|---:|"]
    for p in res["validation"]:
        old = _stored_point(stored, p["method"], p["variant"], p["lr"])
        name = p["method"] + (f" {p['variant']['mode']}" if p["variant"] else "")
        lines.append(f"| {name} | {p['lr']:g} | {'-' if old is None else f'{100 * old:.1f}'} | "
                     f"{100 * p['macro_f1']:.1f} |")
    head = next(r for r in stored["rows"] if r["method"] == "head")["selection"]
    head_val = max(p["macro_f1"] for p in head["points"])
    best_dy_old = max(p["macro_f1"] for p in next(r for r in stored["rows"] if r["method"] == "dylora")
                      ["selection"]["points"])
    ch, t = res["chosen"], res["test"]
    dy_acc = {k: 100 * statistics.mean(s["accuracy"] for s in t["by_rank"][k]) for k in ranks}
    lora = {k: 100 * stored["lora_by_rank"][k]["accuracy"]["mean"] for k in ranks}
    gaps = {k: dy_acc[k] - lora[k] for k in ranks}
    worst = min(gaps, key=gaps.get)
    lines += ["", f"Head-only on validation: {100 * head_val:.1f}; the best DyLoRA point of the stored run "
              f"({res['stored_steps']} steps): {100 * best_dy_old:.1f}. Best DyLoRA point at {res['steps']} steps: "
              f"{ch['variant']['mode']} at {ch['lr']:g}, {100 * ch['macro_f1']:.1f}.", "",
              f"That point on the test folds (seeds {', '.join(map(str, res['seeds']))}, accuracy %, mean over seeds) "
              f"against the stored run's LoRA trained at each rank ({res['stored_steps']} steps, rate "
              f"{stored['lora_by_rank'][ranks[-1]]['lr']:g}):", "",
              "| rank | " + " | ".join(ranks) + " |", "|---|" + "---:|" * len(ranks),
              "| DyLoRA, one training | " + " | ".join(f"{dy_acc[k]:.1f}" for k in ranks) + " |",
              "| LoRA at that rank | " + " | ".join(f"{lora[k]:.1f}" for k in ranks) + " |",
              "| gap | " + " | ".join(f"{gaps[k]:+.1f}" for k in ranks) + " |", "",
              f"On the same test folds (the stored run): head-only {_row_acc(stored, 'head'):.1f} %, majority class "
              f"{100 * stored['baselines']['majority']['accuracy']:.1f} %, logistic regression on amino-acid "
              f"composition {100 * stored['baselines']['composition_logreg']['accuracy']:.1f} %.", "",
              f"Worst gap {gaps[worst]:+.1f} points at rank {worst}: within {MARGIN:g} at every rank: "
              f"{'yes' if gaps[worst] >= -MARGIN else 'no'}. This is a diagnostic: the stored benchmark's rows all "
              f"train {res['stored_steps']} steps, and only a rerun in which every row chooses its steps on "
              "validation can count for the target." + _steps_run_note(), ""]
    return "\n".join(lines)


def _steps_run_note() -> str:
    """What the benchmark's steps-grid run (``quality.py --steps-grid``), when stored, found for the same target."""
    path = HERE / "results_quality_r8_transductive_steps.json"
    if not path.exists():
        return ""
    res = json.loads(path.read_text(encoding="utf-8"))
    rows = {r["method"]: r for r in res["rows"]}
    dy, lora_r = rows["dylora"], res["lora_by_rank"]
    gaps = {int(k): 100 * (v["accuracy"]["mean"] - lora_r[k]["accuracy"]["mean"]) for k, v in dy["by_rank"].items()}
    worst = min(gaps, key=gaps.get)
    return (f" That rerun is {path.stem}.md (steps chosen from {', '.join(str(n) for n in res['setup']['steps_grid'])}"
            f" with the rate, by every row): DyLoRA chose {dy['options']['steps']} steps and LoRA "
            f"{rows['lora']['options']['steps']}; worst gap {gaps[worst]:+.1f} points at rank {worst}, within "
            f"{MARGIN:g} at every rank: {'yes' if gaps[worst] >= -MARGIN else 'no'}.")


if __name__ == "__main__":
    diag.main(__doc__.split("\n")[0], HERE / "results_quality_dylora_steps.json", run, markdown)
