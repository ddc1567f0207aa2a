"""pass@k over executed runs, and McNemar's test between two runs on the same problems.

A run is a folder of MultiPL-E ``<name>.results.json`` files. A sample passes when its status
is ``OK`` and its exit code is 0 (MultiPL-E's ``pass_k.py`` rule). Per problem, n samples of
which c pass; pass@k is ``adaptome.core.evaluation.pass_at_k`` (Chen et al. 2021, eq. 1) and the
score is the mean over problems. n may differ per problem: a problem with n < k has no unbiased
estimate and is left out of that k's mean (the table says how many were used).

Beside each estimate the table reports the majority outcome of single samples (pass or fail)
and its rate, the trivial baseline any pass@1 should be read against.

McNemar's test (the comparison of "No Silver Bullet", Giagnorio et al. 2025): each problem gets
one binary outcome per run (``first``: its first sample passes; ``any``: some sample passes;
``majority``: more than half pass). With b = problems only run A solves and c = problems only
run B solves, the exact two-sided p-value is ``min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)])``
and the odds ratio is b / c (null in the JSON when c = 0, with ``odds_ratio_text`` saying why); the
chi-square statistic with continuity correction
``(|b - c| - 1)^2 / (b + c)`` is given too.

Not covered: confidence intervals, stratification by problem difficulty.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from adaptome.core.errors import AdaptomeError
from adaptome.core.evaluation import pass_at_k

KS = (1, 10, 100)


class ResultsError(AdaptomeError, ValueError):
    """A results folder is missing, empty or holds malformed files."""


def read_run(run_dir: str | os.PathLike) -> dict[str, list[bool]]:
    """``{problem name: [sample passed, ...]}`` from a folder of ``*.results.json``.

    A folder whose results files name (``run_problems``, written by ``execute``) problems of their run that
    have no results file is an unfinished run and is refused: its score would be over the problems that
    happened to finish.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsError(f"{run_dir}: not a folder of .results.json files")
    out: dict[str, list[bool]] = {}
    asked: set[str] = set()
    for f in sorted(run_dir.glob("*.results.json")):
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
            out[doc["name"]] = [r["status"] == "OK" and r["exit_code"] == 0 for r in doc["results"]]
            asked.update(doc.get("run_problems") or [])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise ResultsError(f"{f}: not a MultiPL-E results file ({type(e).__name__}: {e})") from None
    if not out:
        raise ResultsError(f"{run_dir}: holds no .results.json files")
    missing = sorted(asked - set(out))
    if missing:
        raise ResultsError(f"{run_dir}: an unfinished execute run: {len(missing)} of {len(asked)} problems have "
                           f"no results (e.g. {', '.join(missing[:3])}); run `adaptome codegen execute` again "
                           "to finish it (finished problems are reused)")
    return out


def pass_at_k_rows(dataset: str, run: dict[str, list[bool]], ks=KS) -> list[dict]:
    """One row per k: the estimate over problems with n >= k, and the sample-level majority baseline.

    A k that no problem has n >= k for keeps its row, with ``estimate`` None (no unbiased estimate) and
    every problem counted in ``skipped_problems``, so the table says why it has no number.
    """
    if any(int(k) < 1 for k in ks):
        raise ResultsError(f"k must be >= 1 (got {', '.join(str(k) for k in ks)})")
    ns = {name: len(v) for name, v in run.items()}
    cs = {name: sum(v) for name, v in run.items()}
    total_n, total_c = sum(ns.values()), sum(cs.values())
    maj = "pass" if total_c * 2 > total_n else "fail"
    rows = []
    for k in ks:
        used = [name for name in run if ns[name] >= k]
        est = sum(pass_at_k(ns[p], cs[p], k) for p in used) / len(used) if used else None
        counted = used or list(run)  # n min / max of the problems used (of all, when none has n >= k)
        rows.append({"dataset": dataset, "k": k, "estimate": None if est is None else round(est, 6),
                     "num_problems": len(used), "skipped_problems": len(run) - len(used),
                     "min_completions": min(ns[p] for p in counted), "max_completions": max(ns[p] for p in counted),
                     "majority_outcome": maj,
                     "majority_rate": round(max(total_c, total_n - total_c) / total_n, 6) if total_n else 0.0})
    return rows


def write_tables(rows: list[dict], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``pass_at_k.csv`` and ``pass_at_k.md`` in ``out_dir``."""
    from adaptome.core.atomic import atomic_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = ["dataset", "k", "estimate", "num_problems", "skipped_problems", "min_completions", "max_completions",
              "majority_outcome", "majority_rate"]
    csv_path, md_path = out_dir / "pass_at_k.csv", out_dir / "pass_at_k.md"
    with atomic_file(csv_path) as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    lines = ["| dataset | k | pass@k | problems | skipped (n < k) | n min | n max | single-sample majority |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        est = "n/a (n < k)" if r["estimate"] is None else f"{100 * r['estimate']:.1f}%"
        lines.append(f"| {r['dataset']} | {r['k']} | {est} | {r['num_problems']} | "
                     f"{r['skipped_problems']} | {r['min_completions']} | {r['max_completions']} | "
                     f"{r['majority_outcome']} ({100 * r['majority_rate']:.1f}%) |")
    with atomic_file(md_path) as f:
        f.write("\n".join(lines) + "\n")
    return csv_path, md_path


def _outcome(samples: list[bool], rule: str) -> bool:
    if rule == "first":
        return bool(samples) and samples[0]
    if rule == "any":
        return any(samples)
    if rule == "majority":
        return sum(samples) * 2 > len(samples)
    raise ResultsError(f"McNemar outcome {rule!r}: choose first, any or majority")


def mcnemar(run_a: dict[str, list[bool]], run_b: dict[str, list[bool]], outcome: str = "first") -> dict:
    """Exact McNemar test on the problems both runs hold (see the module docstring)."""
    from scipy.stats import binom

    common = sorted(set(run_a) & set(run_b))
    if not common:
        raise ResultsError("the two runs share no problem; McNemar's test needs paired outcomes")
    a = {p: _outcome(run_a[p], outcome) for p in common}
    b_ = {p: _outcome(run_b[p], outcome) for p in common}
    only_a = sum(a[p] and not b_[p] for p in common)
    only_b = sum(b_[p] and not a[p] for p in common)
    both = sum(a[p] and b_[p] for p in common)
    neither = len(common) - only_a - only_b - both
    d = only_a + only_b
    p_exact = 1.0 if d == 0 else min(1.0, 2.0 * float(binom.cdf(min(only_a, only_b), d, 0.5)))
    chi2 = 0.0 if d == 0 else (abs(only_a - only_b) - 1) ** 2 / d
    # strict JSON has no Infinity / NaN: an odds ratio that is not finite is null, and odds_ratio_text says why
    odds = only_a / only_b if only_b else None
    odds_text = f"{odds:.4g}" if odds is not None else ("inf (B never passes alone)" if only_a else
                                                         "undefined (no problem passed by one run alone)")
    return {"problems": len(common), "outcome": outcome, "both": both, "only_a": only_a, "only_b": only_b,
            "neither": neither, "p_value": p_exact, "chi2_cc": chi2, "odds_ratio": odds, "odds_ratio_text": odds_text,
            "only_in_a": sorted(set(run_a) - set(run_b)), "only_in_b": sorted(set(run_b) - set(run_a))}
