"""LESS (``adaptome select-data``): projection determinism, scale invariance of the scores, exact
selection size, batched per-example gradients equal to one-at-a-time gradients, the Adam direction and
epoch weights by formula, and an end-to-end run through the CLI on a pool with a planted shift
(the target looks like one half of the pool; LESS must pick from that half)."""

from __future__ import annotations

import json
import math
import random

import pytest
import tiny_models as tiny
import torch
from typer.testing import CliRunner

from adaptome.core import cli, text
from adaptome.core.adapters.api import apply_adapter, make_config
from adaptome.core.select import less
from adaptome.core.select.grads import per_example_grads, trainable, trim
from adaptome.core.select.projection import RademacherProjector

runner = CliRunner()


@pytest.fixture(scope="module")
def lm():
    tok = text.char_tokenizer()
    model = tiny.text_causal_lm(len(tok), hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    model = apply_adapter(model, make_config("lora", {"r": 4, "target_modules": "attention",
                                                      "init_lora_weights": False}))
    return tok, model.eval()


def test_same_seed_same_features_other_seed_other_features(lm):
    tok, model = lm
    x, y = less.encode(tok, ["hello there", "MKV", "ACDEFG12"], 32)
    cfg = less.LessConfig(proj_dim=64, proj_chunk=100, grad_batch=2)
    d = sum(p.numel() for p in trainable(model).values())
    one, _ = less.features(model, x, y, RademacherProjector(d, 64, seed=3, chunk=100), cfg)
    two, _ = less.features(model, x, y, RademacherProjector(d, 64, seed=3, chunk=100), cfg)
    other, _ = less.features(model, x, y, RademacherProjector(d, 64, seed=4, chunk=100), cfg)
    assert torch.equal(one, two)
    assert not torch.allclose(one, other)
    torch.testing.assert_close(one.norm(dim=1), torch.ones(3))
    # the chunked projection is x @ R with R assembled from its blocks
    proj = RademacherProjector(250, 16, seed=1, chunk=100)
    r = torch.cat([proj.block(c) for c in range(3)])  # (250, 16)
    assert set(r.unique().tolist()) == {-0.25, 0.25}
    v = torch.randn(5, 250)
    torch.testing.assert_close(proj.project(v), v @ r)


def test_scores_invariant_to_rescaling_a_gradient():
    g = torch.Generator().manual_seed(0)
    train, target = torch.randn(6, 300, generator=g), torch.randn(4, 300, generator=g)
    proj = RademacherProjector(300, 128, seed=0, chunk=64)

    def feats(m):
        return torch.nn.functional.normalize(proj.project(m), dim=1)

    subtasks = ["a", "a", "b", "b"]
    base = less.scores([feats(train)], [feats(target)], [1.0], subtasks)
    scale_tr = torch.tensor([0.01, 3.0, 1.0, 50.0, 0.5, 7.0])[:, None]
    scale_tg = torch.tensor([2.0, 0.1, 9.0, 1.0])[:, None]
    torch.testing.assert_close(less.scores([feats(train * scale_tr)], [feats(target * scale_tg)], [1.0], subtasks),
                               base, atol=1e-5, rtol=0)
    # by formula: the mean cosine per subtask, then the max over subtasks
    cos = feats(train) @ feats(target).T
    torch.testing.assert_close(base, torch.maximum(cos[:, :2].mean(1), cos[:, 2:].mean(1)))


@pytest.mark.parametrize("p,n", [(0.05, 100), (0.29, 100), (0.1, 37), (0.5, 3), (1.0, 7)])
def test_exactly_floor_p_n_selected(p, n):
    score = torch.randn(n, generator=torch.Generator().manual_seed(n))
    chosen = less.top_k(score, p)
    assert len(chosen) == math.floor(round(p * n, 9)) == len(set(chosen))
    assert min(score[chosen]) >= max(score[[i for i in range(n) if i not in chosen]], default=-math.inf)
    with pytest.raises(less.SelectError, match="selects none"):
        less.top_k(score, 0.5 / n)


def test_batched_per_example_grads_equal_one_at_a_time(lm):
    tok, model = lm
    texts = ["a short one", "MKVLAAGIVALLLAAGCSS", "xyz", "0123456789 abc"]
    x, y = less.encode(tok, texts, 64)
    batched, used = per_example_grads(model, x, y, batched=True)
    assert used
    looped, _ = per_example_grads(model, x, y, batched=False)
    torch.testing.assert_close(batched, looped, atol=1e-6, rtol=1e-5)
    # reference: plain autograd on each unpadded example
    params = [p for p in model.parameters() if p.requires_grad]
    for row, t in enumerate(texts):
        n = int((y[row] != -100).sum())
        model.zero_grad()
        model(input_ids=x[row:row + 1, :n], labels=y[row:row + 1, :n]).loss.backward()
        ref = torch.cat([p.grad.reshape(-1) for p in params])
        torch.testing.assert_close(batched[row], ref, atol=1e-6, rtol=1e-5)
    model.zero_grad()


def test_adam_direction_and_epoch_weights_by_formula():
    g, m, v = torch.tensor([[0.5, -2.0]]), torch.tensor([0.1, 0.2]), torch.tensor([0.01, 0.04])
    d = less.adam_direction(g, m, v, (0.9, 0.999), 1e-8)
    m2 = 0.9 * m + 0.1 * g
    v2 = 0.999 * v + 0.001 * g ** 2
    torch.testing.assert_close(d, m2 / (v2 + 1e-8).sqrt())
    w = less.epoch_lr_weights(1.0, warmup_steps=0, steps_per_epoch=2, epochs=2)
    # linear decay over 4 steps: rates 1, 0.75 | 0.5, 0.25 -> means 0.875, 0.375
    assert w == pytest.approx([0.875 / 1.25, 0.375 / 1.25])


def _write(path, texts, **extra):
    path.write_text("".join(json.dumps({"text": t, **extra}) + "\n" for t in texts))


def test_select_data_cli_picks_the_target_like_half(tmp_path):
    tok = text.char_tokenizer()
    model = tiny.text_causal_lm(len(tok), hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rng = random.Random(0)
    digits = ["".join(rng.choice("0123456789") for _ in range(16)) for _ in range(20)]
    letters = [" ".join(rng.choice(["the cat", "a dog", "sat on", "the mat"]) for _ in range(4)) for _ in range(20)]
    pool = [t for pair in zip(digits, letters) for t in pair]  # 40, alternating
    _write(tmp_path / "pool.jsonl", pool, source="x")
    _write(tmp_path / "target.jsonl", ["".join(rng.choice("0123456789") for _ in range(16)) for _ in range(4)])
    args = ["select-data", "--model", tmp_path / "model", "--train", tmp_path / "pool.jsonl", "--target",
            tmp_path / "target.jsonl", "--out", tmp_path / "sel.jsonl", "--percentage", 0.25, "--warmup-fraction", 0.5,
            "--epochs", 2, "--lr", 0.01, "--batch-size", 4, "--lora-r", 4, "--lora-alpha", 8, "--proj-dim", 256]
    res = runner.invoke(cli.app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["selected"] == 10 and summary["batched_gradients"] is True
    assert len(summary["checkpoints"]) == 2 and sum(summary["epoch_weights"]) == pytest.approx(1.0)
    rows = [json.loads(line) for line in (tmp_path / "sel.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all(r["source"] == "x" for r in rows)
    assert [r["less_score"] for r in rows] == sorted((r["less_score"] for r in rows), reverse=True)
    picked_digits = sum(r["text"] in digits for r in rows)
    assert picked_digits >= 9, [r["text"] for r in rows]  # random choice: 5 of 10 expected
    # a warm-up is never reused: a named work folder of an earlier run is refused; --overwrite replaces the output
    # and its own default work folder (before, it was refused too, so no rerun into one --out could succeed)
    work = str(tmp_path / "sel.jsonl.less-work")
    res = runner.invoke(cli.app, [str(a) for a in args] + ["--overwrite", "--work-dir", work])
    assert res.exit_code == 2 and "holds a warm-up from an earlier run" in res.output
    res = runner.invoke(cli.app, [str(a) for a in args] + ["--overwrite"])
    assert res.exit_code == 0, res.output
    assert [json.loads(line) for line in (tmp_path / "sel.jsonl").read_text().splitlines()] == rows  # same seed
    # a share that selects nothing is refused before the warm-up, not after it
    small = [str(a) for a in args[:7]] + ["--out", str(tmp_path / "none.jsonl"), "--percentage", "0.01"]
    small += [str(a) for a in args[-14:]]
    res = runner.invoke(cli.app, small)
    assert res.exit_code == 2 and "percentage 0.01 of 40 examples selects none" in res.output
    assert not (tmp_path / "none.jsonl.less-work").exists()


def test_bad_jsonl_names_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(less.SelectError, match=r"bad.jsonl:2: a record needs a non-empty string field 'text'"):
        less.read_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"\n')
    with pytest.raises(less.SelectError, match=r"broken.jsonl:1: not valid JSON"):
        less.read_jsonl(tmp_path / "broken.jsonl")
    # bytes that are not UTF-8 (a Latin-1 export) were a UnicodeDecodeError traceback; a byte-order mark is read
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(less.SelectError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9 at column 14\)"):
        less.read_jsonl(tmp_path / "latin1.jsonl")
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "ok"}\r\n{"text": "two"}\r\n')
    assert [r["text"] for r in less.read_jsonl(tmp_path / "bom.jsonl")] == ["ok", "two"]


def test_load_epoch_moments_line_up_with_the_saved_update(tmp_path):
    """One AdamW step from W0: W1 - W0 = -lr m_hat / (sqrt(v_hat) + eps) entry by entry, so the moments
    that ``load_epoch`` flattens are in the same order as the trainable parameters."""
    from adaptome.core.train.loop import fit

    tok = text.char_tokenizer()
    model = tiny.text_causal_lm(len(tok), hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64)
    model = apply_adapter(model, make_config("lora", {"r": 2, "target_modules": "attention",
                                                      "init_lora_weights": False}))
    x, y = less.encode(tok, ["MKVLA", "GGSA", "PPLKW", "AAAT"], 16)
    w0 = torch.cat([p.detach().reshape(-1).clone() for p in trainable(model).values()])
    data = [{"input_ids": a, "labels": b} for a, b in zip(x, y)]
    fit(model, data, collate_fn=lambda b: {k: torch.stack([e[k] for e in b]) for k in b[0]}, output_dir=tmp_path,
        max_steps=1, batch_size=4, lr=0.01, max_grad_norm=None, save_every=1, progress=False, log_every=0)
    ckpt = tmp_path / "checkpoints" / "step-1"
    m, v = less.load_epoch(model, ckpt)
    w1 = torch.cat([p.detach().reshape(-1) for p in trainable(model).values()])
    step = -0.01 * (m / 0.1) / ((v / 0.001).sqrt() + 1e-8)  # bias-corrected first Adam step
    assert m.abs().sum() > 0
    torch.testing.assert_close(w1 - w0, step, atol=1e-6, rtol=1e-4)


def test_trailing_padding_is_cut_and_changes_no_gradient(lm):
    """Columns after the last labelled token are cut (grads.trim); the gradients equal those of the
    uncut rows, in both modes."""
    tok, model = lm
    x, y = less.encode(tok, ["a short one", "xyz", "0123 abc"], 64)  # (3, 12)
    wide_x = torch.cat([x, torch.full((3, 9), tok.pad_token_id)], dim=1)  # (3, 21)
    wide_y = torch.cat([y, torch.full((3, 9), -100)], dim=1)
    tx, ty = trim(wide_x, wide_y)
    assert tx.shape == (3, int((y != -100).sum(dim=1).max())) and torch.equal(tx, x) and torch.equal(ty, y)
    for batched in (True, False):
        torch.testing.assert_close(per_example_grads(model, wide_x, wide_y, batched=batched)[0],
                                   per_example_grads(model, x, y, batched=False)[0], atol=1e-6, rtol=1e-5)


def test_features_come_back_in_input_order(lm):
    """features() groups examples by length; row i is still example i: normalize(g_i R) with g_i the
    example's own gradient (one at a time) and R the projection."""
    tok, model = lm
    texts = ["xyz", "a much longer example here", "mid size", "ab", "0123456789"]
    x, y = less.encode(tok, texts, 64)
    d = sum(p.numel() for p in trainable(model).values())
    proj = RademacherProjector(d, 32, seed=0, chunk=100)
    got, _ = less.features(model, x, y, proj, less.LessConfig(proj_dim=32, proj_chunk=100, grad_batch=2))
    for i in range(len(texts)):
        n = int((y[i] != -100).sum())
        g, _ = per_example_grads(model, x[i:i + 1, :n], y[i:i + 1, :n], batched=False)  # (1, D)
        want = torch.nn.functional.normalize(proj.project(g), dim=1)[0]  # (1, D) @ (D, 32) -> (32,)
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-4)
