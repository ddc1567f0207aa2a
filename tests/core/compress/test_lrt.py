"""Low-rank transformer: SVD init at full rank reproduces the model, the break-even rule skips a
layer (saying so), the parameter count is r(in+out)+out, and random init differs from SVD."""

from __future__ import annotations

import torch

from adaptome.core.adapters.targets import resolve_targets
from adaptome.core.compress import COMPRESSORS
from adaptome.core.compress.layers import LowRankLinear
from adaptome.core.compress.lrt import LRTConfig, factorize

LRT = COMPRESSORS.get("lrt")


def test_svd_at_full_rank_equals_the_original(llama, batch):
    ref = llama(batch).logits
    # hidden 32, intermediate 64: every target has min(in, out) = 32 or 16 (k/v with 2 kv heads)
    targets = [p for p in resolve_targets(llama, "all-linear") if min(llama.get_submodule(p).weight.shape) == 32]
    rows = LRT.compress(llama, targets, LRTConfig(rank=32, skip_at_break_even=False))
    assert all(isinstance(llama.get_submodule(r["path"]), LowRankLinear) for r in rows)
    assert torch.allclose(llama(batch).logits, ref, atol=1e-4)


def test_break_even_rule_skips_and_says_so(llama):
    path = "model.layers.0.mlp.up_proj"  # (64, 32): r* = 64*32/96 = 21
    rows = LRT.compress(llama, [path], LRTConfig(rank=21))
    assert rows[0]["break_even_rank"] == 21 and "break-even" in rows[0]["skipped"]
    assert isinstance(llama.get_submodule(path), torch.nn.Linear)
    rows = LRT.compress(llama, [path], LRTConfig(rank=20))
    assert "skipped" not in rows[0] and rows[0]["params_after"] == 20 * 96


def test_parameter_count_and_random_init():
    lin = torch.nn.Linear(30, 50)
    a = factorize(lin.weight.detach(), lin.bias.detach(), 7, "svd")
    b = factorize(lin.weight.detach(), lin.bias.detach(), 7, "random", torch.Generator().manual_seed(0))
    assert sum(p.numel() for p in a.parameters()) == 7 * (30 + 50) + 50
    assert not torch.allclose(a.weight_product(), b.weight_product())
    # SVD init is the best rank-7 approximation (Eckart–Young)
    s = torch.linalg.svdvals(lin.weight.detach())
    assert torch.isclose((lin.weight - a.weight_product()).norm() ** 2, (s[7:] ** 2).sum(), rtol=1e-4)


def test_keep_fraction_sets_the_rank(llama):
    rows = LRT.compress(llama, resolve_targets(llama, "all-linear"), LRTConfig(keep_fraction=0.5))
    for r in rows:
        o, i = r["shape"]
        assert r["rank"] == int(0.5 * o * i / (o + i)) and r["params_after"] <= 0.5 * o * i
