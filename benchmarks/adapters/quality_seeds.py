"""More test seeds for an existing adapter-quality result (``quality.py --add-seeds``).

Every row of a results file keeps its chosen rates (chosen on the validation split with seed 0, never on
test windows), so further seeds are only more samples of the same protocol: this trains each row, DyLoRA's
per-rank scores and the LoRA-per-rank rows at the new seeds and folds them into the per-seed lists.
Before anything is added, seed 0 of the head-only and LoRA rows is retrained and must give exactly the
stored scores: the code and the encoder of this run reproduce the stored run, else nothing is written.

Not covered: new rows or ranks (run the whole benchmark), changing a setting (the same checks as
``--rerun``).
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
import warnings

import torch

#: rows retrained at seed 0 to check that this code and encoder reproduce the stored run
CHECK_METHODS = ("head", "lora")


def _units(res: dict) -> list[tuple[str, str, dict, float, str]]:
    """(where, method, options, adapter rate, label) of every training unit of a result: its rows, then the
    LoRA rows at ranks 1..rank-1 (``where`` is "rows" or "lora_by_rank")."""
    st = res["setup"]
    units = [("rows", r["method"], r["options"], r["lr"], r["label"]) for r in res["rows"]]
    by = res["lora_by_rank"]
    units += [("lora_by_rank", "lora", {"r": k, "lora_alpha": st["alpha"],
                                        **({"steps": by[str(k)]["steps"]} if "steps" in by[str(k)] else {})},
               by[str(k)]["lr"], str(k)) for k in range(1, st["rank"])]
    return units


def _merge_summary(old: dict, new: list[dict]) -> dict:
    """``old`` (a _summary with per-seed lists) extended by the per-seed scores in ``new``."""
    out = {}
    for k in ("accuracy", "macro_f1"):
        vals = list(old[k]["per_seed"]) + [s[k] for s in new]
        out[k] = {"mean": statistics.mean(vals), "sd": statistics.stdev(vals), "per_seed": vals}
    return out


def _check_settings(q, res: dict, d: dict, seeds: list[int]) -> None:
    st = res["setup"]
    now = {"steps": q.STEPS, "batch": q.BATCH, "warmup_steps": q.warmup_steps(), "n_windows": len(d["records"]),
           "alpha": q.ALPHA, "folds": q.FOLDS, "select_folds": q.SELECT_FOLDS, "sora_max_kept": q.SORA_MAX_KEPT,
           "steps_grid": list(q.STEPS_GRID)}
    diff = [k for k, v in now.items() if st.get(k, [] if k == "steps_grid" else None) != v]
    if diff:
        raise SystemExit(f"error: the settings differ from the stored run's ({', '.join(diff)}); rerun the whole "
                         "benchmark instead")
    taken = sorted(set(seeds) & set(st["seeds"]))
    if taken:
        raise SystemExit(f"error: seed(s) {taken} are already in the results")


def add_seeds(res: dict, seeds: list[int], q) -> dict:
    """``res`` with every row trained and scored at ``seeds`` too (see the module docstring); ``q`` is the
    benchmark module whose settings apply (``quality`` as run, ``__main__`` under ``python -m``)."""
    from adaptome.core.train.loop import make_accelerator

    t0, env = time.time(), q.environment()  # the code as it starts (files may be edited while it runs)
    torch.set_num_threads(1)
    acc = make_accelerator("no", cpu=True)
    d = q.data()
    _check_settings(q, res, d, seeds)
    st = res["setup"]
    ranks = list(range(1, st["rank"] + 1))
    units = _units(res)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if q.quality_task.CORPUS != st.get("corpus", "disjoint"):  # a set corpus keeps its settings (--smoke's)
            q.use_corpus(st.get("corpus", "disjoint"))
        encoder, info = q.cached_encoder(q.pretrain_corpus(d), acc)
        if info["key"] != res["encoder"]["key"]:
            raise SystemExit("error: the cached encoder differs from the stored run's")
        for p in encoder.parameters():
            p.requires_grad_(False)
        q._SHARED.update(encoder=encoder, data=d)
        head_lr = res["head_lr"]
        check = [u for u in units if u[0] == "rows" and u[1] in CHECK_METHODS]
        rows = {r["label"]: r for r in res["rows"]}
        with multiprocessing.get_context("fork").Pool(q.WORKERS) as pool:
            checked = pool.starmap(q._eval_job, [(m, o, lr, head_lr, 0, None, tmp) for _, m, o, lr, _ in check],
                                   chunksize=1)
            for (_, m, _, _, label), got in zip(check, checked):
                stored = {k: rows[label][k]["per_seed"][st["seeds"].index(0)] for k in ("accuracy", "macro_f1")}
                if got["score"] != stored:
                    raise SystemExit(f"error: seed 0 of the {label} row gives {got['score']}, the stored run "
                                     f"{stored}: this code or encoder does not reproduce it; rerun the whole benchmark")
            jobs = [(m, o, lr, head_lr, seed, ranks if m == "dylora" else None, tmp)
                    for _, m, o, lr, _ in units for seed in seeds]
            flat = iter(pool.starmap(q._eval_job, jobs, chunksize=1))
            done = [[next(flat) for _ in seeds] for _ in units]
    for (where, m, _, _, label), new in zip(units, done):
        if where == "lora_by_rank":
            row = res["lora_by_rank"][label]
            row.update(_merge_summary(row, [s["score"] for s in new]))
            continue
        row = rows[label]
        row.update(_merge_summary(row, [s["score"] for s in new]))
        if "by_rank" in row:
            for k in row["by_rank"]:
                row["by_rank"][k] = _merge_summary(row["by_rank"][k], [s["by_rank"][int(k)] for s in new])
        if "sora" in row:
            so, models = row["sora"], [f for s in new for f in s["facts"]]
            n_old = len(so["kept_gates_per_seed"]) * st["folds"]
            so["kept_gates_per_seed"] += [sum(f["kept_gates"] for f in s["facts"]) for s in new]
            so["kept_fraction_mean"] = statistics.mean(so["kept_gates_per_seed"]) / so["gates_per_seed"]
            so["pruned_params_mean"] = ((so["pruned_params_mean"] * n_old + sum(f["pruned_params"] for f in models))
                                        / (n_old + len(models)))
    top = res["lora_by_rank"][str(st["rank"])]
    lora = next(r for r in res["rows"] if r["method"] == "lora")
    top.update({k: lora[k] for k in ("accuracy", "macro_f1")})
    st["seeds"] = list(st["seeds"]) + list(seeds)
    order = len(res.get("reruns", [])) + len(res.get("added_seeds", []))  # the report lists steps in this order
    res.setdefault("added_seeds", []).append({"seeds": list(seeds), "env": env, "seconds": time.time() - t0,
                                              "checked_seed0": list(CHECK_METHODS), "order": order})
    return res
