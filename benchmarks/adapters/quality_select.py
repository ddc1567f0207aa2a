"""The adapter-quality benchmark's selection rule (``quality.py``): how a grid point is scored on the selection
folds and which point wins. The same rule for every row.

A grid point is trained once per selection fold (``--select-seeds N``: N times, with distinct seeds) and predicts
that fold's validation windows; its score is pooled over every validation prediction of every selection fold:

* ``"macro_f1"`` (the default): the pooled macro-F1; the highest wins (ties: accuracy, then the smaller rate).
* ``"nll"`` (``--select-by nll``): the class-balanced cross-entropy of the validation windows,
  mean over families of the mean negative log-likelihood of the true family,
  ``(1 / C) sum_c (1 / n_c) sum_{i: y_i = c} -log p(y_i | x_i)`` (natural log). The training loss is
  cross-entropy weighted by inverse class frequency; this is that loss, on held-out windows (with the validation
  windows' own class frequencies). A proper score of the predicted probabilities: it moves with every window's
  confidence, where a macro-F1 over 170 windows moves only when an argmax flips. The lowest wins (ties: the
  better macro-F1, then the smaller rate). Tried at rank 8 (results_quality_r8_nll.md): it chose the smallest
  rate of LoRA r=8 and DyLoRA alike, so LoRA r=8 no longer separated from the head-only row on the test folds;
  not the default.

DyLoRA's point is scored by the mean over its ranks 1..r of the pooled score at each rank (its claim: one
training serves every rank). SoRA is chosen only among the points with at most ``max_kept`` of its gates non-zero
at the end of the selection trainings (the target's own condition; all points when none qualifies, recorded as
``constraint_met`` False): by default the share pooled over the point's trainings (``"pooled"``), or, with
``kept_rule="max"``, the largest share of any one of them (every trained model meets the condition).

Not covered: a head rate chosen per row.
"""

from __future__ import annotations

import statistics

from adaptome.core.evaluation import accuracy, macro_f1

RULES = ("nll", "macro_f1")
KEPT_RULES = ("pooled", "max")  # SoRA's gate condition on the share pooled over a point's trainings, or on each


def balanced_nll(gold: list[int], nll: list[float]) -> float:
    """Mean over the classes present in ``gold`` of the mean of ``nll`` over that class' windows."""
    per: dict[int, list[float]] = {}
    for g, v in zip(gold, nll, strict=True):
        per.setdefault(g, []).append(v)
    return statistics.mean(statistics.mean(v) for v in per.values())


def _scores(gold: list[int], pred: list[int], nll: list[float] | None) -> dict:
    out = {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred)}
    if nll is not None:
        out["nll"] = balanced_nll(gold, nll)
    return out


def point_score(folds_out: list[dict]) -> dict:
    """A grid point's validation scores pooled over the selection folds (``_select_job`` outputs): accuracy,
    macro-F1 and, when the jobs recorded it, the class-balanced NLL over every validation window; for DyLoRA, the
    mean over ranks 1..r of the pooled scores at each rank, with the full-rank scores and the per-rank macro-F1 and
    NLL; for SoRA, the share of gates non-zero."""
    gold = [g for o in folds_out for g in o["gold"]]
    has_nll = all("nll" in o for o in folds_out)

    def pooled(key: str, nll_key: str, k=None) -> dict:
        pick = (lambda o, f: o[f]) if k is None else (lambda o, f: o[f][k])
        return _scores(gold, [p for o in folds_out for p in pick(o, key)],
                       [v for o in folds_out for v in pick(o, nll_key)] if has_nll else None)

    out = pooled("pred", "nll")
    if folds_out[0]["by_rank"]:
        per = {k: pooled("by_rank", "by_rank_nll", k) for k in folds_out[0]["by_rank"]}
        out = {m: statistics.mean(v[m] for v in per.values()) for m in per[next(iter(per))]}
        out["full_rank"] = pooled("pred", "nll")
        out["by_rank_macro_f1"] = {str(k): v["macro_f1"] for k, v in per.items()}
        if has_nll:
            out["by_rank_nll"] = {str(k): v["nll"] for k, v in per.items()}
    if "kept_gates" in folds_out[0]["facts"]:
        out["kept_fraction"] = (sum(o["facts"]["kept_gates"] for o in folds_out)
                                / sum(o["facts"]["total_gates"] for o in folds_out))
        out["kept_fraction_max"] = max(o["facts"]["kept_gates"] / o["facts"]["total_gates"] for o in folds_out)
    return out


def rank_key(rule: str):
    """Sort key of a scored point under ``rule``: the largest key wins."""
    if rule == "nll":
        return lambda p: (-p["nll"], p["macro_f1"], -p["lr"])
    if rule == "macro_f1":
        return lambda p: (p["macro_f1"], p["accuracy"], -p["lr"])
    raise ValueError(f"unknown selection rule {rule!r}; known: {', '.join(RULES)}")


def choose(method: str, points_in: list[tuple[dict, float]], results: list[dict], select_folds: int,
           max_kept: float, rule: str, kept_rule: str = "pooled") -> dict:
    """The winning grid point of a row. ``points_in``: (option variant, rate) of every grid point in job order;
    ``results``: the ``_select_job`` outputs, ``select_folds`` per point in that order."""
    it = iter(results)
    points = [{"variant": v, "lr": lr, **point_score([next(it) for _ in range(select_folds)])}
              for v, lr in points_in]
    return pick(method, points, max_kept, rule, kept_rule)


def pick(method: str, points: list[dict], max_kept: float, rule: str, kept_rule: str = "pooled") -> dict:
    """The winning point among scored ``points`` (each with its ``variant``, ``lr`` and ``point_score``) under
    ``rule``; SoRA only among those meeting the gate condition (all of them when none does)."""
    if kept_rule not in KEPT_RULES:
        raise ValueError(f"unknown gate-share rule {kept_rule!r}; known: {', '.join(KEPT_RULES)}")
    key = "kept_fraction" if kept_rule == "pooled" else "kept_fraction_max"
    ok = [p for p in points if p.get(key, 0.0) <= max_kept]
    best = max(ok or points, key=rank_key(rule))
    out = {"rule": rule, "points": points, "chosen": best["lr"], "chosen_variant": best["variant"]}
    if method == "sora":
        out["constraint_met"] = bool(ok)
    return out
