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
