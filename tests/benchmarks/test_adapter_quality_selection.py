"""The adapter-quality benchmark's selection rule (benchmarks/adapters/quality.py, quality_select.py): the
selection folds are a grouped partition of fold 0's training part, a grid point's score is pooled over them
(DyLoRA: the mean over ranks), the default rule picks the best macro-F1 and the ``nll`` rule the lowest
class-balanced validation cross-entropy, and SoRA is chosen only among points with at most half of its gates
non-zero."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest

from adaptome.core.evaluation import accuracy, macro_f1

ROOT = str(Path(__file__).resolve().parents[2])  # the repository root: benchmarks/ is not an installed package
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
q = importlib.import_module("benchmarks.adapters.quality")


def _job(gold, pred, by_rank=None, kept=None, total=None, nll=None, by_rank_nll=None):
    facts = {"trainable_encoder": 1}
    if kept is not None:
        facts.update(kept_gates=kept, total_gates=total)
    out = {"gold": gold, "pred": pred, "by_rank": by_rank or {}, "facts": facts}
    if nll is not None:
        out.update(nll=nll, by_rank_nll=by_rank_nll or {})
    return out


@pytest.fixture
def by_macro_f1():
    assert q.SELECT_BY == "macro_f1"  # the default


@pytest.fixture
def by_nll(monkeypatch):
    monkeypatch.setattr(q, "SELECT_BY", "nll")


def test_selection_folds_partition_fold0_training_part_by_sequence():
    d = q.data()
    sel_ids = {r.id for r in d["records"] if d["fold_of"][r.id] != 0}
    vals = [{r.id for r in val} for _, val in d["select"]]
    assert set().union(*vals) == sel_ids  # every selection window is validated once, no fold-0 test window
    assert sum(len(v) for v in vals) == len(sel_ids)
    for j, (train, val) in enumerate(d["select"]):
        assert {r.id for r in train} == sel_ids - vals[j]
        seqs_val = {r.id.rsplit("@", 1)[0] for r in val}
        assert not seqs_val & {r.id.rsplit("@", 1)[0] for r in train}  # grouped by sequence
        assert {r.label for r in val} == set(d["labels"])  # stratified: every family validated in every fold


def test_point_score_pools_windows_over_folds():
    outs = [_job([0, 0, 1], [0, 1, 1]), _job([1, 2], [1, 0]), _job([2, 2, 0], [2, 2, 0])]
    gold, pred = [0, 0, 1, 1, 2, 2, 2, 0], [0, 1, 1, 1, 0, 2, 2, 0]
    got = q._point_score(outs)
    assert got == {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred)}


def test_dylora_point_is_scored_by_the_mean_over_ranks(by_macro_f1):
    gold = [0, 1, 0, 1]
    full_good = [_job(gold, gold, {1: [1, 1, 1, 1], 2: gold}) for _ in range(q.SELECT_FOLDS)]  # rank 1 collapses
    even = [_job(gold, [0, 1, 0, 0], {1: [0, 1, 0, 0], 2: [0, 1, 0, 0]}) for _ in range(q.SELECT_FOLDS)]
    sel = q._choose("dylora", [1e-3], full_good + even)  # grid points: (frozen, 1e-3), (nested, 1e-3)
    a, b = sel["points"]
    pooled = gold * q.SELECT_FOLDS
    assert a["macro_f1"] == pytest.approx((macro_f1(pooled, [1] * len(pooled)) + 1.0) / 2)
    assert a["full_rank"]["macro_f1"] == 1.0 > b["full_rank"]["macro_f1"]
    assert b["macro_f1"] > a["macro_f1"]
    assert sel["chosen_variant"] == {"mode": "nested"} and sel["chosen"] == 1e-3


def test_sora_is_chosen_among_points_with_at_most_half_the_gates(by_macro_f1):
    gold = [0, 1, 0, 1]
    best = _job(gold, gold, kept=7, total=10)  # the best score, 70 % of the gates
    ok = _job(gold, [0, 1, 0, 0], kept=5, total=10)  # 50 %: eligible
    worse_ok = _job(gold, [1, 1, 1, 1], kept=1, total=10)
    per_point = [best, ok, worse_ok]  # one point per shrink variant, one rate
    sel = q._choose("sora", [3e-3], [p for p in per_point for _ in range(q.SELECT_FOLDS)])
    assert [p["kept_fraction"] for p in sel["points"]] == [0.7, 0.5, 0.1]
    assert sel["chosen_variant"] == q.VARIANTS["sora"][1] and sel["constraint_met"]
    none_ok = _job(gold, gold, kept=9, total=10)
    sel = q._choose("sora", [3e-3], [none_ok] * (3 * q.SELECT_FOLDS))
    assert not sel["constraint_met"] and sel["chosen"] == 3e-3


def test_sora_gate_condition_on_each_training_with_the_max_rule(by_macro_f1, monkeypatch):
    """Pooled, a point whose trainings keep 40 % and 60 % of the gates qualifies (50 %); checked on each training
    (``--sora-kept max``) it does not, and the next eligible point is chosen."""
    gold = [0, 1, 0, 1]
    folds = q.SELECT_FOLDS
    mixed = [_job(gold, gold, kept=4 if j % 2 else 6, total=10) for j in range(folds - 1)]
    mixed.append(_job(gold, gold, kept=10 * folds // 2 - sum(m["facts"]["kept_gates"] for m in mixed), total=10))
    low = [_job(gold, [0, 1, 0, 0], kept=3, total=10) for _ in range(folds)]
    never = [_job(gold, [1, 1, 1, 1], kept=9, total=10) for _ in range(folds)]
    results = mixed + low + never  # one point per shrink variant, one rate
    sel = q._choose("sora", [3e-3], results)
    assert sel["points"][0]["kept_fraction"] == pytest.approx(0.5) and sel["points"][0]["kept_fraction_max"] == 0.6
    assert sel["chosen_variant"] == q.VARIANTS["sora"][0]  # pooled: the mixed point qualifies and scores best
    monkeypatch.setattr(q, "SORA_KEPT_RULE", "max")
    sel = q._choose("sora", [3e-3], results)
    assert sel["chosen_variant"] == q.VARIANTS["sora"][1] and sel["constraint_met"]


def test_balanced_nll_is_the_mean_over_classes_of_the_class_means():
    from benchmarks.adapters.quality_select import balanced_nll

    gold, nll = [0, 0, 0, 1], [0.1, 0.2, 0.3, 2.0]
    assert balanced_nll(gold, nll) == pytest.approx((0.2 + 2.0) / 2)  # not the window mean 0.65


def test_point_score_pools_the_balanced_nll_and_dylora_averages_it_over_ranks():
    gold = [0, 1, 1]
    p_true = {1: [0.5, 0.5, 0.25], 2: [0.9, 0.8, 0.6]}  # p(true class) of each window, per rank
    nll = {k: [-math.log(p) for p in v] for k, v in p_true.items()}
    jobs = [_job(gold, gold, {1: gold, 2: gold}, nll=nll[2], by_rank_nll=nll) for _ in range(q.SELECT_FOLDS)]
    got = q._point_score(jobs)

    def bal(v):  # class 0: one window; class 1: two windows
        return (v[0] + (v[1] + v[2]) / 2) / 2

    assert got["by_rank_nll"] == {"1": pytest.approx(bal(nll[1])), "2": pytest.approx(bal(nll[2]))}
    assert got["nll"] == pytest.approx((bal(nll[1]) + bal(nll[2])) / 2)
    assert got["full_rank"]["nll"] == pytest.approx(bal(nll[2]))


def test_nll_rule_picks_the_lowest_validation_nll_not_the_best_macro_f1(by_nll):
    """A hand-made grid: the point with the best macro-F1 (one lucky argmax) is confidently wrong elsewhere; the
    rule picks the point whose held-out cross-entropy is lowest, here the middle rate."""
    gold = [0, 1, 0, 1]
    grid = [1e-3, 3e-3, 1e-2]
    per_point = [
        _job(gold, [0, 1, 0, 1], nll=[0.1, 0.1, 3.0, 3.0]),  # every argmax right, two windows near-certain wrong
        _job(gold, [0, 1, 0, 0], nll=[0.3, 0.3, 0.4, 0.8]),  # one argmax wrong, calibrated: lowest NLL
        _job(gold, [1, 1, 1, 1], nll=[0.7, 0.7, 0.7, 0.7]),
    ]
    sel = q._choose("lora", grid, [p for p in per_point for _ in range(q.SELECT_FOLDS)])
    assert sel["rule"] == "nll" and sel["chosen"] == 3e-3
    nlls = [p["nll"] for p in sel["points"]]
    assert nlls == pytest.approx([(0.1 + 3.0) / 2, ((0.3 + 0.4) / 2 + (0.3 + 0.8) / 2) / 2, 0.7])  # mean of class means
    assert max(sel["points"], key=lambda p: p["macro_f1"])["lr"] == 1e-3  # the old rule would have taken 1e-3


def test_nll_rule_keeps_sora_s_gate_condition_and_dylora_s_mean_over_ranks(by_nll):
    gold = [0, 1]
    lo, hi = [0.1, 0.1], [1.0, 1.0]
    best_dense = _job(gold, gold, kept=8, total=10, nll=lo)  # lowest NLL, 80 % of the gates
    sparse = _job(gold, gold, kept=4, total=10, nll=hi)
    sparser = _job(gold, gold, kept=1, total=10, nll=[2.0, 2.0])
    sel = q._choose("sora", [1e-3], [p for p in (best_dense, sparse, sparser) for _ in range(q.SELECT_FOLDS)])
    assert sel["chosen_variant"] == q.VARIANTS["sora"][1] and sel["constraint_met"]
    # DyLoRA: full rank best, rank 1 poor, vs. an even point: the mean over ranks decides
    full_good = _job(gold, gold, {1: gold, 2: gold}, nll=lo, by_rank_nll={1: [3.0, 3.0], 2: lo})
    even = _job(gold, gold, {1: gold, 2: gold}, nll=[0.5, 0.5], by_rank_nll={1: [0.5, 0.5], 2: [0.5, 0.5]})
    sel = q._choose("dylora", [1e-3], [full_good] * q.SELECT_FOLDS + [even] * q.SELECT_FOLDS)
    assert sel["chosen_variant"] == {"mode": "nested"}
    assert sel["points"][0]["full_rank"]["nll"] < sel["points"][1]["full_rank"]["nll"]


def test_unknown_rule_is_refused():
    from benchmarks.adapters.quality_select import rank_key

    with pytest.raises(ValueError, match="unknown selection rule"):
        rank_key("accuracy")


def test_default_rule_is_macro_f1_and_takes_the_other_point_of_the_same_grid(by_macro_f1):
    gold = [0, 1, 0, 1]
    per_point = [_job(gold, [0, 1, 0, 1], nll=[0.1, 0.1, 3.0, 3.0]), _job(gold, [0, 1, 0, 0], nll=[0.3, 0.3, 0.4, 0.8])]
    sel = q._choose("lora", [1e-3, 3e-3], [p for p in per_point for _ in range(q.SELECT_FOLDS)])
    assert sel["rule"] == "macro_f1" and sel["chosen"] == 1e-3


def test_select_seeds_train_every_point_with_distinct_seeds_and_pool_them(monkeypatch, by_macro_f1):
    """``--select-seeds 2``: every grid point is trained on every selection fold at seeds j and j + SELECT_FOLDS,
    and ``_choose`` scores a point on all of its 2 x SELECT_FOLDS trainings, not on the first SELECT_FOLDS."""
    monkeypatch.setattr(q, "SELECT_SEEDS", 2)
    jobs = q._select_jobs("lora", {"r": 2}, [1e-3, 3e-3], 0.1, "tmp")
    n = q.SELECT_FOLDS
    assert len(jobs) == 2 * 2 * n
    first = jobs[:2 * n]  # the first grid point's jobs
    assert {j[1]["r"] for j in jobs} == {2} and {j[2] for j in first} == {1e-3}
    assert sorted((j[4], j[7]) for j in first) == sorted((f, f + n * s) for s in range(2) for f in range(n))
    # point 1: right on its first-seed trainings only; point 2: right on all of them -> point 2 wins
    right, wrong = _job([0, 1], [0, 1]), _job([0, 1], [1, 0])
    results = [right] * n + [wrong] * n + [right] * (2 * n)
    sel = q._choose("lora", [1e-3, 3e-3], results)
    assert sel["chosen"] == 3e-3
    assert [p["macro_f1"] for p in sel["points"]] == pytest.approx([0.5, 1.0])


def test_report_lists_reruns_and_added_seeds_in_the_order_they_were_made():
    """A results file's later steps are told in the order they happened: files from before the ``order`` field
    by the order in which their lists were first written, newer ones by ``order`` (here interleaved)."""
    report = importlib.import_module("benchmarks.adapters.quality_report")
    env = {"git_commit": "0" * 40, "git_dirty": False}
    seeds = {"seeds": [3, 4], "env": env, "seconds": 60.0, "checked_seed0": ["head", "lora"]}
    rerun = {"methods": ["sora"], "env": env, "seconds": 60.0}
    old = {"added_seeds": [seeds], "reruns": [rerun]}  # seeds were added first: their list was written first
    text = "".join(report._event_text(k, x) for k, x in report._history(old))
    assert text.index("Seeds 3, 4 added") < text.index("Rerun afterwards")
    new = {"reruns": [{**rerun, "order": 0}, {**rerun, "methods": ["dylora"], "order": 2}],
           "added_seeds": [{**seeds, "order": 1}]}
    text = "".join(report._event_text(k, x) for k, x in report._history(new))
    assert text.index("--rerun sora") < text.index("Seeds 3, 4 added") < text.index("--rerun dylora")


def test_sora_target_is_judged_per_set_of_seeds_since_the_rows_last_training():
    """A rerun of SoRA retrains every seed then present, so those seeds are one set; each set added after it is
    another, and the verdict per set is computed from the per-seed numbers (at most half of the gates, at least
    -2 points from LoRA)."""
    report = importlib.import_module("benchmarks.adapters.quality_report")
    res = {"setup": {"seeds": [0, 1, 2, 3, 4, 5, 6]},
           "added_seeds": [{"seeds": [3, 4], "order": 0}, {"seeds": [5, 6], "order": 2}],
           "reruns": [{"methods": ["sora"], "order": 1}]}
    assert report.seed_sets(res) == [[0, 1, 2, 3, 4], [5, 6]]
    assert report.seed_sets(res, "dylora") == [[0, 1, 2], [3, 4], [5, 6]]  # never rerun: the first run's, then each
    so = {"accuracy": {"per_seed": [0.80, 0.80, 0.80, 0.80, 0.80, 0.70, 0.72]},
          "sora": {"kept_gates_per_seed": [100, 100, 100, 100, 100, 100, 200], "gates_per_seed": 288}}
    lo = {"accuracy": {"per_seed": [0.81] * 7}}
    first, added = report.sora_target_by_seed_set(res, so, lo)
    assert first["met"] and first["gap"] == pytest.approx(-1.0) and first["kept"] == pytest.approx(100 / 288)
    assert not added["met"] and added["gap"] == pytest.approx(-10.0) and added["kept"] == pytest.approx(150 / 288)
