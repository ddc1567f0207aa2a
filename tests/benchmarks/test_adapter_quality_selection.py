"""The adapter-quality benchmark's selection rule (benchmarks/adapters/quality.py): the selection folds are a
grouped partition of fold 0's training part, a grid point's score is pooled over them (DyLoRA: the mean over
ranks), and SoRA is chosen only among points with at most half of its gates non-zero."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from adaptome.core.evaluation import accuracy, macro_f1

ROOT = str(Path(__file__).resolve().parents[2])  # the repository root: benchmarks/ is not an installed package
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
q = importlib.import_module("benchmarks.adapters.quality")


def _job(gold, pred, by_rank=None, kept=None, total=None):
    facts = {"trainable_encoder": 1}
    if kept is not None:
        facts.update(kept_gates=kept, total_gates=total)
    return {"gold": gold, "pred": pred, "by_rank": by_rank or {}, "facts": facts}


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


def test_dylora_point_is_scored_by_the_mean_over_ranks():
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


def test_sora_is_chosen_among_points_with_at_most_half_the_gates():
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
