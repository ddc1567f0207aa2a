"""DSFormer: exactly k non-zeros per column of S in the forward pass, the straight-through gradient
reaches the dense latent S̃ (equal to Dᵀ·∂L/∂W everywhere, also off the support), the support moves
under training, and the budget is met per matrix."""

from __future__ import annotations

import torch

from adaptome.core.adapters.targets import resolve_targets
from adaptome.core.compress import COMPRESSORS
from adaptome.core.compress.dsformer import DSFormerConfig, DSLinear, init_factors

DS = COMPRESSORS.get("dsformer")


def _layer(o=24, i=20, r=10, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(o, i, generator=g)
    d, lat = init_factors(w, r, k, 2, g)
    return DSLinear(d, lat, k, torch.zeros(o)), w


def test_exactly_k_nonzeros_per_column_in_forward():
    layer, _ = _layer()
    s = layer.sparse_s()
    assert ((s != 0).sum(dim=0) == 3).all()
    kept = s != 0
    lat = layer.S_latent.detach()
    # the kept entries are the k largest by magnitude of each column, with their latent values
    assert torch.equal(s[kept], lat[kept])
    assert (lat.abs().masked_fill(kept, 0).amax(0) <= lat.abs().masked_fill(~kept, float("inf")).amin(0)).all()
    x = torch.randn(4, 20)
    assert torch.allclose(layer(x), x @ (layer.D @ s).t(), atol=1e-5)  # (4, i) @ ((o, r) @ (r, i))ᵀ


def test_gradient_reaches_the_dense_latent_copy():
    layer, _ = _layer()
    x, target = torch.randn(8, 20), torch.randn(8, 24)
    ((layer(x) - target) ** 2).sum().backward()
    w = (layer.D @ layer.sparse_s()).detach().requires_grad_(True)  # (o, r) @ (r, i)
    ((x @ w.t() - target) ** 2).sum().backward()
    expected = layer.D.detach().t() @ w.grad  # ∂L/∂S = Dᵀ ∂L/∂W, passed straight through to S̃
    assert torch.allclose(layer.S_latent.grad, expected, atol=1e-4)
    off_support = layer.sparse_s().detach() == 0
    assert layer.S_latent.grad[off_support].abs().sum() > 0  # entries outside the support get gradients too


def test_support_moves_during_training():
    layer, w = _layer(seed=1)
    before = layer.sparse_s().detach() != 0
    opt = torch.optim.SGD([layer.D, layer.S_latent], lr=0.05)
    g = torch.Generator().manual_seed(2)
    new_w = torch.randn(24, 20, generator=g)  # a different task: a different sparse code fits best
    x = torch.randn(64, 20, generator=g)
    for _ in range(30):
        opt.zero_grad()
        ((layer(x) - x @ new_w.t()) ** 2).mean().backward()
        opt.step()
    after = layer.sparse_s().detach() != 0
    assert (after != before).any() and ((after.sum(0)) == 3).all()


def test_budget_met_per_matrix(llama):
    rows = DS.compress(llama, resolve_targets(llama, "all-linear"), DSFormerConfig(keep_fraction=0.6, nnz_per_column=4))
    for r in rows:
        o, i = r["shape"]
        assert r["params_after"] == o * r["rank"] + 4 * i <= 0.6 * o * i
        assert o * (r["rank"] + 1) + 4 * i > 0.6 * o * i  # the largest dictionary that fits
        assert r["nnz"] == 4 * i
    assert len(DS.mark_trainable(llama)) == 2 * len(rows)
