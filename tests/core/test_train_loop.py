"""The core training loop: the loss falls, resume is exact, checkpoints are atomic and guarded."""

import json

import pytest
import tiny_models as tiny
import torch
from stop_hooks import StopAt as _StopAt

from adaptome.core.adapters.api import apply_adapter, make_config
from adaptome.core.train.checkpoint import ResumeError, list_checkpoints
from adaptome.core.train.loop import fit
from adaptome.core.train.metrics import read_metrics
from adaptome.core.train.schedule import make_scheduler

# the tiny LLaMA's sizes (tests/tiny_models.py), built seeded and in train mode as a fresh module is
TINY = dict(vocab_size=16, eval_mode=False)


def _model(dropout=0.1):
    return apply_adapter(tiny.llama(**TINY), make_config("lora_native", {"r": 4, "lora_dropout": dropout}))


def _data(n=40, t=12):
    # a learnable pattern: each sequence counts upward from a random start (mod vocab)
    g = torch.Generator().manual_seed(1)
    starts = torch.randint(0, 16, (n, 1), generator=g)
    seqs = (starts + torch.arange(t)) % 16  # (n, t)
    return [{"input_ids": s, "labels": s} for s in seqs]


def _collate(b):
    return {k: torch.stack([x[k] for x in b]) for k in b[0]}  # (B, T)


KW = dict(collate_fn=_collate, max_steps=20, batch_size=4, grad_accum=2, lr=1e-2, warmup_steps=3,
          progress=False, log_every=5)


class _Record:
    def __init__(self):
        self.losses = []

    def after_optimizer_step(self, state):
        self.losses.append(state.loss)


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_loss_falls_and_metrics_written(tmp_path):
    rec = _Record()
    held = _collate(_data(8))
    calls = []

    def eval_fn(model):
        calls.append(model.training)
        return {"loss": model(**held).loss.item()}

    res = fit(_model(0.0), _data(), output_dir=tmp_path, hooks=[rec], eval_fn=eval_fn, eval_every=10,
              **{**KW, "max_steps": 40, "lr": 1e-2, "schedule": "constant"})
    assert sum(rec.losses[-5:]) / 5 < 0.85 * sum(rec.losses[:5]) / 5, rec.losses
    lines = read_metrics(tmp_path / "metrics.jsonl")
    train_lines = [ln for ln in lines if "loss" in ln]
    assert [ln["step"] for ln in train_lines] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert all({"loss", "lr", "epoch"} <= set(ln) for ln in train_lines)
    evals = [ln for ln in lines if "eval/loss" in ln]
    assert [ln["step"] for ln in evals] == [10, 20, 30, 40] and calls == [False] * 4  # eval mode inside
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert res.step == 40


def test_exact_resume_matches_uninterrupted_run(tmp_path):
    full = fit(_model(), _data(), output_dir=tmp_path / "full", **KW)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), _data(), output_dir=tmp_path / "cut", save_every=7, hooks=[_StopAt(9)], **KW)
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [7]
    resumed = fit(_model(), _data(), output_dir=tmp_path / "cut", save_every=7, hooks=[_Record()], **KW)
    assert resumed.resumed_from == 7
    a, b = _trainable(full.model), _trainable(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the log reads as one run: no step logged twice
    steps = [ln["step"] for ln in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert steps == sorted(set(steps))


def test_keep_last_and_atomic_folders(tmp_path):
    fit(_model(), _data(), output_dir=tmp_path, save_every=4, keep_last=2, **KW)
    root = tmp_path / "checkpoints"
    assert [s for s, _ in list_checkpoints(root)] == [16, 20]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_resume_refuses_checkpoint_from_other_config(tmp_path):
    fit(_model(), _data(), output_dir=tmp_path, save_every=10, **KW)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ResumeError, match="trainer_state.json.*another configuration"):
        fit(_model(), _data(), output_dir=tmp_path, save_every=10, **{**KW, "lr": 5e-3})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_incomplete_checkpoint_is_named(tmp_path):
    fit(_model(), _data(), output_dir=tmp_path, save_every=10, **{**KW, "max_steps": 10})
    (tmp_path / "checkpoints" / "step-10" / "optimizer.pt").unlink()
    with pytest.raises(ResumeError, match=r"step-10: incomplete checkpoint, optimizer.pt is missing"):
        fit(_model(), _data(), output_dir=tmp_path, save_every=10, **KW)


def test_fresh_run_does_not_clobber_existing_checkpoints(tmp_path):
    fit(_model(), _data(), output_dir=tmp_path, save_every=10, **{**KW, "max_steps": 10})
    state = json.loads((tmp_path / "checkpoints" / "step-10" / "trainer_state.json").read_text())
    with pytest.raises(ResumeError, match="earlier run"):
        fit(_model(), _data(), output_dir=tmp_path, save_every=10, resume=False, **KW)
    assert json.loads((tmp_path / "checkpoints" / "step-10" / "trainer_state.json").read_text()) == state


def test_grad_accum_equals_larger_batch(tmp_path):
    a = fit(_model(0.0), _data(), output_dir=tmp_path / "a", **{**KW, "batch_size": 8, "grad_accum": 1,
                                                               "max_steps": 5})
    b = fit(_model(0.0), _data(), output_dir=tmp_path / "b", **{**KW, "batch_size": 4, "grad_accum": 2,
                                                               "max_steps": 5})
    for k, v in _trainable(a.model).items():
        torch.testing.assert_close(v, _trainable(b.model)[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_schedules_warmup_then_decay(kind):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sch = make_scheduler(opt, kind, warmup_steps=4, max_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(sch.get_last_lr()[0])
        opt.step()
        sch.step()
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4] == pytest.approx(1.0)
    if kind == "constant":
        assert lrs[-1] == pytest.approx(1.0)
    elif kind == "linear":
        assert lrs[9] == pytest.approx(0.5)
    else:
        assert lrs[9] == pytest.approx(0.5) and lrs[-1] < 0.03


def test_non_finite_loss_stops_before_the_update(tmp_path):
    model = _model(0.0)
    before = _trainable(model)

    def nan_loss(m, batch):
        return m(**batch).loss * float("nan")

    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        fit(model, _data(), loss_fn=nan_loss, output_dir=tmp_path, **KW)
    after = _trainable(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bf16_autocast_on_cpu_trains(tmp_path):
    rec, dtypes = _Record(), set()

    def loss_fn(model, batch):
        out = model(**batch)
        dtypes.add((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return out.loss

    fit(_model(0.0), _data(), output_dir=tmp_path, hooks=[rec], mixed_precision="bf16", cpu=True, loss_fn=loss_fn,
        **{**KW, "max_steps": 40, "schedule": "constant"})
    assert dtypes == {(True, torch.bfloat16)}, dtypes
    assert sum(rec.losses[-5:]) / 5 < 0.85 * sum(rec.losses[:5]) / 5, rec.losses


def test_one_config_or_keywords_give_the_same_run(tmp_path):
    from adaptome.core.train.config import TrainConfig

    opts = {k: v for k, v in KW.items() if k != "collate_fn"}
    cfg = TrainConfig(**{**opts, "max_steps": 5, "output_dir": str(tmp_path / "a")})
    a = fit(_model(), _data(), cfg, collate_fn=_collate)
    b = fit(_model(), _data(), output_dir=tmp_path / "b", **{**KW, "max_steps": 5})
    for k, v in _trainable(a.model).items():
        assert torch.equal(v, _trainable(b.model)[k]), k


def test_evaluation_does_not_change_the_training_trajectory(tmp_path):
    import random

    import numpy as np

    def noisy_eval(model):  # draws from every global RNG, as a masked-LM collator does
        return {"x": torch.rand(1).item() + random.random() + float(np.random.rand())}

    plain = fit(_model(), _data(), output_dir=tmp_path / "plain", **{**KW, "max_steps": 6})
    evald = fit(_model(), _data(), output_dir=tmp_path / "eval", eval_fn=noisy_eval, eval_every=2,
                **{**KW, "max_steps": 6})
    assert [r["step"] for r in evald.history if "eval/x" in r] == [2, 4, 6]
    for k, v in _trainable(plain.model).items():  # dropout is on: an RNG draw would show
        assert torch.equal(v, _trainable(evald.model)[k]), k


def test_every_training_option_is_documented_and_listed_in_help():
    import dataclasses

    from typer.testing import CliRunner

    from adaptome.core import cli
    from adaptome.core.train.config import TrainConfig, options_help

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    lines = options_help().splitlines()
    assert [ln.split(":")[0] for ln in lines] == [f"train.{n}" for n in names]
    assert all(len(ln.split(": ", 1)[1].split(" (default")[0]) > 15 for ln in lines), lines
    res = CliRunner().invoke(cli.app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for n in names:
        assert f"train.{n}:" in res.output, n
    assert TrainConfig().save_every > 0  # a run of any length keeps a checkpoint
