"""GaLore numerics against explicit references: AdamW with the identity projector, the span of each
update, the projector between refreshes, layerwise == step(), accumulation, resume, fit's refusals."""

import copy
import io
from unittest import mock

import pytest
import torch
from stop_hooks import StopAt as _StopAt
from torch import nn

from adaptome.core.optim import galore as G
from adaptome.core.optim.registry import OPTIMIZERS, make_optimizer_options


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 6), nn.Tanh(), nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 10, generator=g), torch.randn(8, 3, generator=g)) for _ in range(n)]


def _loss(model, xy):
    x, y = xy
    return (model(x) - y).pow(2).mean()


def _train(model, opt, batches, layerwise=False):
    for xy in batches:
        opt.zero_grad()
        _loss(model, xy).backward()
        opt.step()
    return model


def _identity(g, rank, side):
    return torch.eye(g.shape[1] if side == "right" else g.shape[0])


def test_registry_lists_adamw_and_galore_and_checks_options():
    assert OPTIMIZERS.names() == ["adamw", "galore"]
    with pytest.raises(Exception, match="unknown key 'optimizer\\[galore\\].rnak'"):
        make_optimizer_options("galore", {"rnak": 4})
    with pytest.raises(G.GaLoreError, match="moments_on_refresh"):
        G.GaLoreConfig(moments_on_refresh="forget")


@pytest.mark.parametrize("layerwise", [False, True])
def test_full_rank_identity_projector_equals_adamw_step_for_step(layerwise):
    a, b = _net(), _net()
    with mock.patch.object(G, "svd_projector", _identity):
        opt = G.galore_optimizer(a, G.GaLoreConfig(rank=64, scale=1.0, update_proj_gap=1, layerwise=layerwise),
                                 lr=1e-2, weight_decay=0.1)
        ref = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
        for xy in _batches(6):
            for m, o in ((a, opt), (b, ref)):
                o.zero_grad()
                _loss(m, xy).backward()
                o.step()
            for pa, pb in zip(a.parameters(), b.parameters()):
                torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    st = opt.state[a[0].weight]  # (6, 10): projected on the left by the (6, 6) identity, moments (6, 10)
    assert st["proj_side"] == 0 and st["proj"].shape == (6, 6) and st["exp_avg"].shape == (6, 10)


def test_every_update_lies_in_the_projector_span_and_scale_is_linear():
    rank = 2
    deltas = {}
    for scale in (1.0, 0.5):
        m = _net()
        opt = G.galore_optimizer(m, G.GaLoreConfig(rank=rank, scale=scale, update_proj_gap=3), lr=1e-2)
        w = m[2].weight  # (12, 6): M >= N -> right projection, P (R, N)
        steps = []
        for xy in _batches(5):
            before = w.detach().clone()
            _train(m, opt, [xy])
            steps.append(w.detach() - before)
            st = opt.state[w]
            assert st["proj_side"] == 1 and st["proj"].shape == (rank, 6)
            p = st["proj"]
            d = w.detach() - before
            torch.testing.assert_close(d @ p.t() @ p, d, atol=1e-7, rtol=1e-5)  # rows in span(P)
            sv = torch.linalg.svdvals(d)
            assert sv[rank:].max() < 1e-3 * sv[0]  # rank <= R up to float32 rounding of W - W_before
        deltas[scale] = steps
        left = opt.state[m[0].weight]  # (6, 10): M < N -> left, P (M, R)
        assert left["proj_side"] == 0 and left["proj"].shape == (6, rank)
    torch.testing.assert_close(deltas[0.5][0], 0.5 * deltas[1.0][0], atol=1e-7, rtol=1e-5)


def test_projector_is_fixed_between_refreshes_and_refreshed_on_the_gap():
    m = _net()
    opt = G.galore_optimizer(m, G.GaLoreConfig(rank=2, update_proj_gap=3), lr=1e-2)
    w = m[2].weight
    projs = []
    for xy in _batches(7):
        _train(m, opt, [xy])
        projs.append(opt.state[w]["proj"].clone())
    for i in (1, 2, 4, 5):  # steps 2, 3, 5, 6 reuse the projector of steps 1 and 4
        assert torch.equal(projs[i], projs[i - 1])
    assert not torch.equal(projs[3], projs[2]) and not torch.equal(projs[6], projs[5])


def test_projector_is_the_top_singular_subspace_of_the_gradient():
    g = torch.randn(9, 5)
    p = G.svd_projector(g, 2, "right")  # (2, 5)
    u, s, vh = torch.linalg.svd(g)
    torch.testing.assert_close(p.t() @ p, vh[:2].t() @ vh[:2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["keep", "reset", "reproject"])
def test_moments_on_refresh(mode):
    m = _net()
    opt = G.galore_optimizer(m, G.GaLoreConfig(rank=2, update_proj_gap=2, moments_on_refresh=mode), lr=1e-2)
    w = m[2].weight
    bs = _batches(3)
    _train(m, opt, bs[:2])
    st = opt.state[w]
    old_m, old_p = st["exp_avg"].clone(), st["proj"].clone()
    beta1 = 0.9
    w.grad = None
    _loss(m, bs[2]).backward()
    grad = w.grad.clone()
    opt.step()
    new_p = st["proj"]
    r = grad @ new_p.t()  # (M, R) the projected gradient in the new basis
    base = {"keep": old_m, "reset": torch.zeros_like(old_m), "reproject": old_m @ (old_p @ new_p.t())}[mode]
    torch.testing.assert_close(st["exp_avg"], beta1 * base + (1 - beta1) * r, atol=1e-7, rtol=1e-5)
    assert st["adam_step"] == (1 if mode == "reset" else 3)


def test_layerwise_equals_step_and_frees_gradients_during_backward():
    a, b = _net(), _net()
    cfg = dict(rank=2, update_proj_gap=2)
    oa = G.galore_optimizer(a, G.GaLoreConfig(**cfg), lr=1e-2, weight_decay=0.01)
    ob = G.galore_optimizer(b, G.GaLoreConfig(layerwise=True, **cfg), lr=1e-2, weight_decay=0.01)
    assert ob.updates_in_backward and not oa.updates_in_backward
    bs = _batches(5)
    _train(a, oa, bs)
    for xy in bs:
        _loss(b, xy).backward()
        assert all(p.grad is None for p in b.parameters())  # updated and freed inside backward
        ob.step()  # nothing left to do
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_layerwise_with_accumulation_equals_one_big_batch():
    a, b = _net(), _net()
    cfg = dict(rank=2, update_proj_gap=2, layerwise=True)
    oa = G.galore_optimizer(a, G.GaLoreConfig(**cfg), lr=1e-2)
    ob = G.galore_optimizer(b, G.GaLoreConfig(**cfg), lr=1e-2)
    assert oa.updates_in_backward  # ``a`` trains in its hooks: one micro-batch of 8 per step
    for x, y in _batches(4):
        _loss(a, (x, y)).backward()
        for i in range(2):  # two micro-batches of 4, loss / 2 each
            ob.set_micro_batch(i, 2)
            (_loss(b, (x[4 * i:4 * i + 4], y[4 * i:4 * i + 4])) / 2).backward()
            assert (all(p.grad is not None for p in b.parameters()) if i == 0
                    else all(p.grad is None for p in b.parameters()))
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layerwise", [False, True])
def test_resume_from_state_dict_is_bit_identical(layerwise):
    cfg = G.GaLoreConfig(rank=2, update_proj_gap=3, layerwise=layerwise)
    bs = _batches(8)
    full = _net()
    _train(full, G.galore_optimizer(full, cfg, lr=1e-2), bs)

    half = _net()
    o1 = G.galore_optimizer(half, cfg, lr=1e-2)
    _train(half, o1, bs[:4])
    buf = io.BytesIO()
    torch.save({"model": half.state_dict(), "opt": o1.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # as checkpoints are read
    again = _net(seed=5)
    again.load_state_dict(saved["model"])
    o2 = G.galore_optimizer(again, cfg, lr=1e-2)
    o2.load_state_dict(saved["opt"])
    _train(again, o2, bs[4:])
    for pa, pb in zip(full.parameters(), again.parameters()):
        assert torch.equal(pa, pb)


def test_targets_by_pattern_and_others_plain_adamw():
    m = _net()
    opt = G.galore_optimizer(m, G.GaLoreConfig(rank=2, target_modules=["2"]), lr=1e-2)
    galore_ids = {id(p) for g in opt.param_groups if g["galore"] for p in g["params"]}
    assert galore_ids == {id(m[2].weight)}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(m.parameters()))
    with pytest.raises(Exception, match="matched no"):
        G.galore_optimizer(m, G.GaLoreConfig(target_modules=["nope"]), lr=1e-2)


def test_state_bytes_shrink_with_the_rank():
    m = _net()
    opt = G.galore_optimizer(m, G.GaLoreConfig(rank=2), lr=1e-2)
    _train(m, opt, _batches(1))
    ref = torch.optim.AdamW(copy.deepcopy(m).parameters())
    ref_m = copy.deepcopy(m)
    ref = torch.optim.AdamW(ref_m.parameters())
    _train(ref_m, ref, _batches(1))
    # (12, 6) weight: moments 2 * 12 * 2 + projector 2 * 6 instead of 2 * 72
    w_state = opt.state[m[2].weight]
    assert w_state["exp_avg"].numel() == 24 and w_state["proj"].numel() == 12
    assert G.state_bytes(opt) < G.state_bytes(ref)


def test_fit_refuses_clipping_and_fp16_with_layerwise(tmp_path):
    from adaptome.core.train.loop import fit

    m = _net()
    data = [{"x": x, "y": y} for x, y in _batches(4)]

    def make(model):
        return G.galore_optimizer(model, G.GaLoreConfig(rank=2, layerwise=True), lr=1e-2)

    with pytest.raises(ValueError, match="max_grad_norm"):
        fit(m, data, loss_fn=lambda mod, b: _loss(mod, (b["x"], b["y"])), make_optimizer=make, cpu=True,
            output_dir=tmp_path, max_steps=1, batch_size=1, progress=False, collate_fn=lambda b: b[0])


@pytest.mark.skipif(__import__("importlib").util.find_spec("bitsandbytes") is None,
                    reason="bitsandbytes (the galore8bit extra) is not installed")
def test_eight_bit_moments_track_fp32_moments():
    a, b = _net(), _net()
    oa = G.galore_optimizer(a, G.GaLoreConfig(rank=2), lr=1e-3)
    ob = G.galore_optimizer(b, G.GaLoreConfig(rank=2, eight_bit=True), lr=1e-3)
    bs = _batches(3)
    _train(a, oa, bs)
    _train(b, ob, bs)
    assert ob.state[b[2].weight]["exp_avg_q"].dtype == torch.uint8
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-3)


def test_eight_bit_without_bitsandbytes_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)
    with pytest.raises(G.GaLoreError, match="galore8bit"):
        G.galore_optimizer(_net(), G.GaLoreConfig(rank=2, eight_bit=True), lr=1e-3)


def test_fit_resume_with_layerwise_galore_and_accumulation_is_bit_identical(tmp_path):
    from adaptome.core.train.loop import fit

    xs, ys = zip(*_batches(4))
    data = [{"x": x, "y": y} for x, y in zip(torch.cat(xs), torch.cat(ys))]  # 32 examples

    def make(model):
        return G.galore_optimizer(model, G.GaLoreConfig(rank=2, update_proj_gap=3, layerwise=True), lr=1e-2)

    kw = dict(loss_fn=lambda m, b: _loss(m, (b["x"], b["y"])), make_optimizer=make, cpu=True, max_steps=8,
              batch_size=4, grad_accum=2, max_grad_norm=None, progress=False, log_every=0,
              collate_fn=lambda b: {k: torch.stack([e[k] for e in b]) for k in b[0]})
    full = fit(_net(), data, output_dir=tmp_path / "full", **kw)
    with pytest.raises(KeyboardInterrupt):
        fit(_net(), data, output_dir=tmp_path / "cut", save_every=4, hooks=[_StopAt(6)], **kw)
    resumed = fit(_net(), data, output_dir=tmp_path / "cut", save_every=4, hooks=[_StopAt(-1)], **kw)
    assert resumed.resumed_from == 4
    for (n, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), n
    assert not torch.equal(full.model[2].weight, _net()[2].weight)
