"""A DIAGNOSTIC, designed after seeing results and labelled so: SoRA's gate condition checked on the models that
are tested, not only on the selection trainings.

Why: in ``results_quality_r8_transductive_steps`` the SoRA point chosen on validation (shrink 0.8, rate 0.01, 480
steps) kept 48 % of its gates in the selection trainings (about 110 training windows each) and 53 % in the test-fold
models (about 178): more data keeps more gates. A share of gates is a property of a trained model, read without
any test label, so a rule may look at it on the test-fold models themselves, as SoRA's paper does when it raises
lambda until a target sparsity is reached.

Rule: the rate, steps and first shrink are the point the benchmark's default rule (``--sora-kept pooled``) picks
from the stored selection of ``results_quality_r8_transductive_steps_sorafine`` (grid 0.4 / 0.8 / 1.2 / 1.6;
recomputed here from the recorded validation scores and checked to be the steps run's own choice). Each test-fold
model is trained at that shrink; a model with more than ``SORA_MAX_KEPT`` of its gates non-zero is trained again
at the grid's next shrink (same rate, steps and seed), until one is at most that share or the grid ends. Test
labels are read only to score the final models, against the stored LoRA r=8 row (same folds and seeds).

It changes nothing in the benchmark; a result under this rule counts for the target only as this labelled,
post-hoc protocol. Because the rule was made after seeing the stored runs, ``--fresh-seeds`` replicates it on
seeds no run had used (SoRA under the rule and the stored LoRA r=8 point, both trained at those seeds on the same
folds); decided before that replication ran: the target counts as met only if it holds there too. Run from the
repository root: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality_sora_final``
(then ``--fresh-seeds 5 6 7 8 9``; ``--report-only``).
Not covered: choosing the rate again for the larger shrink (it keeps the validation choice).
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
from benchmarks.adapters.quality_select import rank_key

HERE = Path(__file__).resolve().parent
STORED = HERE / "results_quality_r8_transductive_steps_sorafine.json"
OUT = HERE / "results_quality_sora_final.json"
COMMAND = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.adapters.quality_sora_final"
RANK, ALPHA = 8, 16.0
MARGIN = 2.0  # the target: at most half of the gates non-zero, within 2 points of accuracy of LoRA


def pooled_choice(selection: dict, max_kept: float) -> dict:
    """The point the default rule picks from recorded selection points: the best macro-F1 (``rank_key``) among
    those whose share of non-zero gates, pooled over their selection trainings, is at most ``max_kept``."""
    ok = [p for p in selection["points"] if p["kept_fraction"] <= max_kept]
    return max(ok, key=rank_key("macro_f1"))


def next_shrinks(grid: list[float], first: float) -> list[float]:
    """The shrinks a fold model may be trained at: ``first``, then the larger ones of ``grid`` in order."""
    return sorted(s for s in grid if s >= first)


def _fold_job(shrinks: list[float], lr: float, head_lr: float, steps: int, seed: int, f: int, tmp: str) -> dict:
    """Fold ``f`` at ``seed``: trained at each shrink of ``shrinks`` in turn until its share of non-zero gates is
    at most ``SORA_MAX_KEPT``; the last model predicts the fold's test windows."""
    encoder, d = q._SHARED["encoder"], q._SHARED["data"]
    labels, acc = d["labels"], q._worker_setup()
    train, test = q.folds(d)[f]
    tried = []
    for shrink in shrinks:
        opts = {"r": RANK, "lora_alpha": ALPHA, "sora_shrink": shrink, "steps": steps}
        model, _, facts = q.train_one(encoder, "sora", opts, lr, head_lr, train, labels, seed,
                                      f"{tmp}/sora-final-{seed}-{f}-{shrink}", acc)
        tried.append({"shrink": shrink, "kept_gates": facts["kept_gates"], "total_gates": facts["total_gates"]})
        if facts["kept_gates"] <= q.SORA_MAX_KEPT * facts["total_gates"]:
            break
    return {"seed": seed, "fold": f, "gold": [labels.index(r.label) for r in test],
            "pred": q._predict(model, test, labels), "tried": tried}


def _per_seed(got: list[dict], seeds: list[int]) -> list[dict]:
    """``_fold_job`` outputs grouped by seed: the seed's pooled test scores and its final models' gates."""
    per_seed = []
    for s in seeds:
        mine = [g for g in got if g["seed"] == s]
        score = q._score([y for g in mine for y in g["gold"]], [y for g in mine for y in g["pred"]])
        final = [g["tried"][-1] for g in mine]
        per_seed.append({"seed": s, **score, "folds": [{"fold": g["fold"], "tried": g["tried"]} for g in mine],
                         "kept_gates": sum(t["kept_gates"] for t in final),
                         "total_gates": sum(t["total_gates"] for t in final),
                         "first_kept_gates": sum(g["tried"][0]["kept_gates"] for g in mine)})
    return per_seed


def _setup() -> tuple[dict, dict, str, dict, list[float]]:
    """(stored results, task data, encoder key, the starting SoRA point, the shrinks a fold model may use)."""
    stored = json.loads(STORED.read_text(encoding="utf-8"))
    st = stored["setup"]
    qt.use_corpus(st["corpus"])
    _, d, _, key = diag.frozen_setup(RANK, stored["encoder"]["key"])
    sora = next(r for r in stored["rows"] if r["method"] == "sora")
    first = pooled_choice(sora["selection"], st["sora_max_kept"])
    grid = [v["sora_shrink"] for v in sora["selection"]["variants"]]
    return stored, d, key, first, next_shrinks(grid, first["variant"]["sora_shrink"])


def _sora_jobs(pool, d, shrinks, first, head_lr, seeds, tmp) -> list[dict]:
    jobs = [(shrinks, first["lr"], head_lr, first["variant"]["steps"], s, f, tmp)
            for s in seeds for f in range(len(q.folds(d)))]
    return _per_seed(pool.starmap(_fold_job, jobs, chunksize=1), seeds)


def run() -> dict:
    t0, env = time.time(), q.environment()
    stored, d, key, first, shrinks = _setup()
    st, head_lr, seeds = stored["setup"], stored["head_lr"], stored["setup"]["seeds"]
    lora = next(r for r in stored["rows"] if r["method"] == "lora")
    with tempfile.TemporaryDirectory() as tmp, multiprocessing.get_context("fork").Pool(q.WORKERS) as pool:
        per_seed = _sora_jobs(pool, d, shrinks, first, head_lr, seeds, tmp)
    steps, lr = first["variant"]["steps"], first["lr"]
    return {"command": COMMAND, "env": env, "stored": STORED.name, "encoder_key": key, "start": first,
            "shrinks": shrinks, "steps": steps, "lr": lr, "head_lr": head_lr, "seeds": seeds,
            "sora_max_kept": st["sora_max_kept"], "per_seed": per_seed,
            "lora_accuracy_per_seed": lora["accuracy"]["per_seed"], "lora_label": lora["label"],
            "steps_run_kept_gates": _steps_run_kept(), "seconds": time.time() - t0}


def fresh(res: dict, seeds: list[int]) -> dict:
    """``res`` with ``fresh``: the rule and the stored LoRA r=8 point trained at ``seeds`` (none of the stored
    run's), on the same folds."""
    t0 = time.time()
    if set(seeds) & set(res["seeds"]):
        raise SystemExit(f"error: --fresh-seeds must avoid the stored run's seeds {res['seeds']}")
    stored, d, key, first, shrinks = _setup()
    if key != res["encoder_key"] or first != res["start"]:
        raise SystemExit("error: the stored run differs from the one this diagnostic's results came from")
    lora = next(r for r in stored["rows"] if r["method"] == "lora")
    with tempfile.TemporaryDirectory() as tmp, multiprocessing.get_context("fork").Pool(q.WORKERS) as pool:
        per_seed = _sora_jobs(pool, d, shrinks, first, stored["head_lr"], seeds, tmp)
        lo = diag.test_points(pool, [("lora", lora["options"], lora["lr"], stored["head_lr"])], tuple(seeds), [],
                              tmp)[0]
    return {**res, "fresh": {"seeds": list(seeds), "per_seed": per_seed,
                             "lora_accuracy_per_seed": [s["accuracy"] for s in lo["score"]],
                             "env": q.environment(), "seconds": time.time() - t0}}


def _steps_run_kept() -> list[int] | None:
    """SoRA's kept gates per seed in the steps run (whose chosen point is this diagnostic's first shrink)."""
    p = HERE / "results_quality_r8_transductive_steps.json"
    row = next(r for r in json.loads(p.read_text(encoding="utf-8"))["rows"] if r["method"] == "sora")
    return row.get("sora", {}).get("kept_gates_per_seed")


def _table(ps: list[dict], lora_acc: list[float], max_kept: float, lora_label: str) -> tuple[list[str], bool]:
    """Markdown lines of one set of seeds (per-seed table and summary) and whether the target holds there."""
    acc = [100 * p["accuracy"] for p in ps]
    lora = [100 * a for a in lora_acc]
    gaps = [a - b for a, b in zip(acc, lora)]
    gap = statistics.mean(gaps)
    se = statistics.stdev(gaps) / len(gaps) ** 0.5 if len(gaps) > 1 else 0.0
    share = statistics.mean(p["kept_gates"] / p["total_gates"] for p in ps)
    retrained = sum(len(f["tried"]) > 1 for p in ps for f in p["folds"])
    n_models = sum(len(p["folds"]) for p in ps)
    final_shrinks = sorted({f["tried"][-1]["shrink"] for p in ps for f in p["folds"]})
    over = [f for p in ps for f in p["folds"]
            if f["tried"][-1]["kept_gates"] > max_kept * f["tried"][-1]["total_gates"]]
    met = share <= max_kept and not over and gap >= -MARGIN
    lines = ["| seed | accuracy % | LoRA r=8 accuracy % | gap (points) | gates non-zero (final models) "
             "| shrink per fold |", "|---|---|---|---|---|---|"]
    for p, a, b in zip(ps, acc, lora):
        used = ", ".join(f"{f['tried'][-1]['shrink']:g}" for f in p["folds"])
        lines.append(f"| {p['seed']} | {a:.1f} | {b:.1f} | {a - b:+.1f} | {p['kept_gates']} / {p['total_gates']} "
                     f"| {used} |")
    lines += ["", f"{retrained} of {n_models} fold models were trained again (final shrinks used: "
              f"{', '.join(f'{s:g}' for s in final_shrinks)}). Mean over seeds: {statistics.mean(acc):.1f} % "
              f"accuracy against {lora_label}'s {statistics.mean(lora):.1f} %, a gap of {gap:+.1f} points "
              f"(standard error {se:.1f}); {100 * share:.0f} % of gates non-zero"
              + (f"; {len(over)} final model(s) still over {100 * max_kept:.0f} % (the grid ended)" if over else "")
              + f". Target \"half or fewer gates non-zero within {MARGIN:g} points of LoRA\": "
              + ("met." if met else "not met."), ""]
    return lines, met


def markdown(res: dict) -> str:
    ps, s0, mk = res["per_seed"], res["start"], res["sora_max_kept"]
    same_start = res["steps_run_kept_gates"] == [p["first_kept_gates"] for p in ps]
    lines = [
        "## Adapter quality, a diagnostic designed after seeing results: SoRA's gate condition checked on the "
        "tested models", "",
        f"Command: `{res['command']}` ({res['seconds'] / 60:.1f} min). Git commit `{res['env']['git_commit'][:12]}`"
        f"{' with uncommitted changes' if res['env']['git_dirty'] else ''}. Stored run: `{res['stored']}` (its "
        "encoder, folds, seeds, head rate and recorded SoRA selection).", "",
        f"Starting point, picked from the stored selection by the benchmark's default rule (pooled share of gates at "
        f"most {100 * mk:.0f} %, then the best validation macro-F1): shrink "
        f"{s0['variant']['sora_shrink']:g}, rate {s0['lr']:g}, {s0['variant']['steps']} steps (validation macro-F1 "
        f"{100 * s0['macro_f1']:.1f}, {100 * s0['kept_fraction']:.0f} % of gates pooled). Each test-fold model "
        f"over {100 * mk:.0f} % of its gates non-zero is trained again at the next shrink of "
        f"{', '.join(f'{s:g}' for s in res['shrinks'])} (same rate, steps and seed); the gate share is read from "
        "the trained model, never from test labels. The rule was made after seeing the stored runs (their test-fold "
        "models kept more gates than the selection trainings), so it is checked again on fresh seeds below.", "",
        f"At the starting shrink the fold models kept {', '.join(str(p['first_kept_gates']) for p in ps)} of "
        f"{ps[0]['total_gates']} gates per seed"
        + (" -- exactly the steps run's test-fold models (same point, seeds and folds)." if same_start else
           f" (the steps run's: {res['steps_run_kept_gates']})."), "",
        f"### The stored run's seeds ({', '.join(str(p['seed']) for p in ps)})", ""]
    table, met = _table(ps, res["lora_accuracy_per_seed"], mk, res["lora_label"])
    lines += table
    fr = res.get("fresh")
    if fr:
        env = fr["env"]
        lines += [f"### Fresh seeds ({', '.join(str(s) for s in fr['seeds'])}), decided before they ran", "",
                  f"`{res['command']} --fresh-seeds {' '.join(str(s) for s in fr['seeds'])}` "
                  f"({fr['seconds'] / 60:.1f} min, git `{env['git_commit'][:12]}`"
                  f"{' with uncommitted changes' if env['git_dirty'] else ''}): SoRA under the rule and the stored "
                  f"LoRA r=8 point (its rate and steps), both trained at these seeds on the same folds.", ""]
        table, met_fresh = _table(fr["per_seed"], fr["lora_accuracy_per_seed"], mk, res["lora_label"])
        lines += table
        lines += [f"Verdict under this post-hoc rule: the target holds on the stored seeds: {'yes' if met else 'no'}; "
                  f"on the fresh seeds: {'yes' if met_fresh else 'no'}; "
                  + ("both, so it counts as met (as this labelled protocol)." if met and met_fresh
                     else "not both, so it does not count."), ""]
    else:
        lines += ["Not yet checked on fresh seeds (`--fresh-seeds`): it does not count until then.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    diag.main(__doc__.splitlines()[0], OUT, run, markdown,
              {"--fresh-seeds": ({"nargs": "+", "type": int, "metavar": "SEED",
                                  "help": "replicate the rule on these seeds (none of the stored run's)"}, fresh)})
