"""The adapter-quality benchmark's ``--steps-grid`` (benchmarks/adapters/quality.py): the number of training steps is
part of every row's grid, a training runs the number its grid point names (schedule and SoRA's lambda follow it),
and without the option every point and training is what it was."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import tiny_models as tiny

ROOT = str(Path(__file__).resolve().parents[2])  # the repository root: benchmarks/ is not an installed package
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
q = importlib.import_module("benchmarks.adapters.quality")


@pytest.fixture
def steps_grid(monkeypatch):
    monkeypatch.setattr(q, "STEPS_GRID", (120, 480))


def test_without_a_grid_points_carry_no_steps():
    assert q.STEPS_GRID == ()
    assert q._points("dylora", (1e-3, 3e-3)) == [({"mode": "frozen"}, 1e-3), ({"mode": "frozen"}, 3e-3),
                                                 ({"mode": "nested"}, 1e-3), ({"mode": "nested"}, 3e-3)]
    assert q._points("lora", (1e-3,)) == [({}, 1e-3)]


def test_steps_grid_is_crossed_with_every_variant_and_rate(steps_grid):
    pts = q._points("dylora", (1e-3, 3e-3))
    assert len(pts) == 2 * 2 * 2
    assert {(v["mode"], v["steps"], lr) for v, lr in pts} == {(m, n, lr) for m in ("frozen", "nested")
                                                              for n in (120, 480) for lr in (1e-3, 3e-3)}
    assert {v["steps"] for v, _ in q._points("head", q.HEAD_GRID)} == {120, 480}
    # every job of a row names its point's steps, so the chosen variant carries them into the test-fold trainings
    jobs = q._select_jobs("lora", {"r": 2, "lora_alpha": 16.0}, (1e-3,), 0.1, "/tmp")
    assert sorted(j[1]["steps"] for j in jobs) == [120] * q.SELECT_FOLDS + [480] * q.SELECT_FOLDS


def _schedule_sum(lr: float, n: int) -> float:
    """Sum of the per-step rates of core's linear schedule, written out: warm-up (t + 1) / (w + 1) for t < w, then
    1 - (t - w) / (n - w)."""
    w = max(1, round(q.WARMUP * n))
    return lr * sum((t + 1) / (w + 1) if t < w else max(0.0, 1 - (t - w) / (n - w)) for t in range(n))


@pytest.mark.parametrize("n", [6, 120, 480])
def test_rate_sum_and_sora_lambda_follow_the_training_length(n):
    assert q.warmup_steps(n) == max(1, round(0.06 * n))
    assert q.rate_sum(3e-3, n) == pytest.approx(_schedule_sum(3e-3, n), rel=1e-9)
    assert q.sora_lambda(3e-3, 0.8, n) == pytest.approx(0.8 / _schedule_sum(3e-3, n), rel=1e-9)
    assert q.rate_sum(3e-3) == pytest.approx(_schedule_sum(3e-3, q.STEPS), rel=1e-9)  # default: STEPS


def test_train_one_runs_the_steps_its_options_name(tmp_path):
    from adaptome.core.train.loop import make_accelerator

    d = q.data()
    enc = tiny.bert(head=None, vocab_size=len(q.AA) + 3, max_position_embeddings=q.WINDOW + 2, pad_token_id=q.PAD,
                    hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    for p in enc.parameters():
        p.requires_grad_(False)
    train = d["records"][:16]
    acc = make_accelerator("no", cpu=True)
    for n in (3, 5):
        _, _, facts = q.train_one(enc, "lora", {"r": 2, "lora_alpha": 4.0, "steps": n}, 1e-3, 0.1, train,
                                  d["labels"], 0, str(tmp_path / f"s{n}"), acc, log_every=1)
        assert len(facts["losses"]) == n and facts["steps"] == n
    _, _, facts = q.train_one(enc, "sora", {"r": 2, "lora_alpha": 4.0, "steps": 4, "sora_shrink": 0.8}, 1e-3, 0.1,
                              train, d["labels"], 0, str(tmp_path / "sora"), acc, log_every=1)
    assert len(facts["losses"]) == 4
    assert facts["sparse_lambda"] == pytest.approx(q.sora_lambda(1e-3, 0.8, 4), rel=1e-12)


def test_sora_shrink_grid_replaces_soras_variants(monkeypatch):
    monkeypatch.setattr(q, "VARIANTS", dict(q.VARIANTS))
    assert [v["sora_shrink"] for v in q.VARIANTS["sora"]] == [0.4, 0.8, 1.6]  # the default grid
    q.set_sora_shrinks([0.4, 0.8, 1.2, 1.6])
    assert q._points("sora", (1e-3,)) == [({"sora_shrink": s}, 1e-3) for s in (0.4, 0.8, 1.2, 1.6)]
    assert q.VARIANTS["dylora"] == ({"mode": "frozen"}, {"mode": "nested"})
    for bad in ([0.4, 0.4], [0.0, 1.0], []):
        with pytest.raises(SystemExit, match="distinct positive shrinks"):
            q.set_sora_shrinks(bad)


def test_sora_final_diagnostic_starts_at_the_default_rules_choice_and_climbs_the_grid():
    """``quality_sora_final``: the starting point is the best validation macro-F1 among points whose pooled gate
    share is at most the limit (a better point over it is passed over), and a fold model may then climb only to
    larger shrinks of the grid, in order."""
    m = importlib.import_module("benchmarks.adapters.quality_sora_final")
    pt = lambda s, f, k: {"variant": {"sora_shrink": s, "steps": 480}, "lr": 0.01, "macro_f1": f,  # noqa: E731
                          "accuracy": f, "kept_fraction": k}
    sel = {"points": [pt(0.4, 0.70, 0.71), pt(0.8, 0.68, 0.48), pt(1.2, 0.64, 0.28), pt(1.6, 0.66, 0.12)]}
    assert m.pooled_choice(sel, 0.5)["variant"]["sora_shrink"] == 0.8
    assert m.pooled_choice(sel, 0.3)["variant"]["sora_shrink"] == 1.6
    assert m.next_shrinks([1.6, 0.4, 1.2, 0.8], 0.8) == [0.8, 1.2, 1.6]


def test_sora_ones_grid_adds_variants_with_every_gate_starting_at_one(monkeypatch):
    """``--sora-ones-shrink-grid`` adds SoRA points whose gates start at 1 beside the official N(0, 1) ones, and
    ``--sora-shrink-grid`` then replaces only the N(0, 1) ones."""
    monkeypatch.setattr(q, "VARIANTS", dict(q.VARIANTS))
    q.set_sora_ones_shrinks([1.2, 2.4])
    assert q.VARIANTS["sora"] == ({"sora_shrink": 0.4}, {"sora_shrink": 0.8}, {"sora_shrink": 1.6},
                                  {"sora_shrink": 1.2, "gate_init": "ones"}, {"sora_shrink": 2.4, "gate_init": "ones"})
    q.set_sora_shrinks([0.8])
    assert q.VARIANTS["sora"] == ({"sora_shrink": 0.8}, {"sora_shrink": 1.2, "gate_init": "ones"},
                                  {"sora_shrink": 2.4, "gate_init": "ones"})
    for bad in ([1.0, 1.0], [-1.0], []):
        with pytest.raises(SystemExit, match="distinct positive shrinks"):
            q.set_sora_ones_shrinks(bad)


def test_gate_init_ones_reaches_the_trained_sora_layers(tmp_path):
    """A ``gate_init`` option of a grid point is the adapter's: every gate is 1 when training starts (and N(0, 1)
    draws otherwise), read by the init diagnostic's hook."""
    from adaptome.core.train.loop import make_accelerator
    from benchmarks.adapters.quality_sora_init import GateRecorder

    d = q.data()
    enc = tiny.bert(head=None, vocab_size=len(q.AA) + 3, max_position_embeddings=q.WINDOW + 2, pad_token_id=q.PAD,
                    hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    for p in enc.parameters():
        p.requires_grad_(False)
    acc = make_accelerator("no", cpu=True)
    starts = {}
    for init in ("ones", "normal"):
        rec = GateRecorder()
        q.train_one(enc, "sora", {"r": 4, "lora_alpha": 4.0, "steps": 2, "sora_shrink": 0.8, "gate_init": init},
                    1e-3, 0.1, d["records"][:8], d["labels"], 0, str(tmp_path / init), acc, hooks=[rec])
        starts[init] = [v for g in rec.start for v in g.tolist()]
    assert starts["ones"] and all(v == 1.0 for v in starts["ones"])
    assert len(set(starts["normal"])) == len(starts["normal"]) and min(starts["normal"]) < 0


class _Pool:
    """A stand-in for the worker pool: runs every job here, in order."""

    def __init__(self):
        self.jobs: list[tuple] = []

    def starmap(self, fn, jobs, chunksize=1):
        self.jobs += list(jobs)
        return [fn(*j) for j in jobs]


def _fake_select_job(f1: dict):
    """A ``_select_job`` whose validation predictions depend only on the point's shrink and rate: ``f1`` maps
    (shrink, lr) to the share of correct predictions over 10 windows."""
    def job(method, opts, lr, head_lr, j, ranks, tmp, seed=None):
        right = round(10 * f1[(opts["sora_shrink"], lr)])
        gold = list(range(2)) * 5
        pred = gold[:right] + [1 - g for g in gold[right:]]
        return {"gold": gold, "pred": pred, "nll": [0.5] * 10, "by_rank": {}, "by_rank_nll": {},
                "facts": {"kept_gates": 4, "total_gates": 16}}
    return job


def _stored_selection(monkeypatch, f1):
    monkeypatch.setattr(q, "VARIANTS", dict(q.VARIANTS))
    q.set_sora_shrinks([0.8])
    monkeypatch.setattr(q, "_select_job", _fake_select_job(f1))
    return q._select_rows(_Pool(), [("sora", "sora", {"r": 4}, (1e-3, 1e-2))], 0.1, "/tmp")[0]


def test_reuse_selection_trains_only_new_points_and_one_stored_point_again(monkeypatch):
    f1 = {(0.8, 1e-3): 0.6, (0.8, 1e-2): 0.8, (1.2, 1e-3): 0.9, (1.2, 1e-2): 0.7}
    stored = _stored_selection(monkeypatch, f1)
    assert stored["chosen"] == 1e-2 and stored["chosen_variant"] == {"sora_shrink": 0.8}
    q.set_sora_ones_shrinks([1.2])
    pool = _Pool()
    sel = q._select_rows(pool, [("sora", "sora", {"r": 4}, (1e-3, 1e-2))], 0.1, "/tmp", {"sora": stored})[0]
    trained = [(j[1]["sora_shrink"], j[1].get("gate_init", "normal"), j[2]) for j in pool.jobs]
    # the stored chosen point first (the check), then the two new (ones) points; each on every selection fold
    assert trained == ([(0.8, "normal", 1e-2)] * q.SELECT_FOLDS + [(1.2, "ones", 1e-3)] * q.SELECT_FOLDS
                       + [(1.2, "ones", 1e-2)] * q.SELECT_FOLDS)
    assert sel["reused_points"] == 2 and sel["reuse_check"] == {"variant": {"sora_shrink": 0.8}, "lr": 1e-2}
    assert len(sel["points"]) == 4
    assert sel["chosen"] == 1e-3 and sel["chosen_variant"] == {"sora_shrink": 1.2, "gate_init": "ones"}
    # the same choice as training every point
    full = q._select_rows(_Pool(), [("sora", "sora", {"r": 4}, (1e-3, 1e-2))], 0.1, "/tmp")[0]
    assert (full["chosen"], full["chosen_variant"]) == (sel["chosen"], sel["chosen_variant"])


def test_reuse_selection_refuses_when_the_stored_point_is_not_reproduced(monkeypatch):
    f1 = {(0.8, 1e-3): 0.6, (0.8, 1e-2): 0.8, (1.2, 1e-3): 0.9, (1.2, 1e-2): 0.7}
    stored = _stored_selection(monkeypatch, f1)
    q.set_sora_ones_shrinks([1.2])
    monkeypatch.setattr(q, "_select_job", _fake_select_job({**f1, (0.8, 1e-2): 0.7}))  # the code changed since
    with pytest.raises(SystemExit, match="does not reproduce it"):
        q._select_rows(_Pool(), [("sora", "sora", {"r": 4}, (1e-3, 1e-2))], 0.1, "/tmp", {"sora": stored})
