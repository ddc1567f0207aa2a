"""LoRA-XS / LoRA-SB numerics: B A is the rank-r SVD truncation of W0; R = 0 is the base model;
only R gets gradients and dL/dR = s B^T (dL/dW) A^T; the SB init makes s B R A equal the rank-r
truncation of -eta sign(sum of full-FT gradients) computed independently on a plain copy."""

import copy

import pytest
import torch
from torch import nn

from adaptome.core.adapters import api
from adaptome.core.adapters.lorasb import LoraSBConfig, init_lorasb
from adaptome.core.adapters.loraxs import LoraXSConfig


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 5))


def test_xs_factors_are_truncated_svd_of_w0_and_identity_at_zero_r():
    net = _net()
    x = torch.randn(4, 12)
    want = net(x)
    m = api.apply_adapter(copy.deepcopy(net), LoraXSConfig(r=3, target_modules=["0", "2"]))
    torch.testing.assert_close(m(x), want, atol=0, rtol=0)
    layer = m[0]
    u, s, vh = torch.linalg.svd(net[0].weight.detach())
    torch.testing.assert_close(layer.loraxs_B["default"] @ layer.loraxs_A["default"], (u[:, :3] * s[:3]) @ vh[:3])


def test_only_r_trains_and_its_gradient_is_the_projected_full_gradient():
    m = api.apply_adapter(_net(), LoraXSConfig(r=3, lora_alpha=6, init_r="normal", r_init_std=0.1,
                                               target_modules=["0"]))
    assert sorted(n for n, p in m.named_parameters() if p.requires_grad) == ["0.loraxs_R.default"]
    x = torch.randn(16, 12)
    m(x).pow(2).sum().backward()
    layer = m[0]
    assert layer.loraxs_A["default"].grad is None and layer.loraxs_B["default"].grad is None
    # dL/dW for the merged weight, through a dense copy
    w = (layer.base_layer.weight + layer.delta_weight("default")).detach().requires_grad_()
    y = torch.tanh(x @ w.T + layer.base_layer.bias)
    m[2](y).pow(2).sum().backward()
    a, b = layer.loraxs_A["default"], layer.loraxs_B["default"]
    torch.testing.assert_close(layer.loraxs_R["default"].grad, 2.0 * b.T @ w.grad @ a.T, atol=1e-5, rtol=1e-4)


def test_sb_init_equals_rank_r_truncation_of_approximate_update():
    net = _net()
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 12, generator=g), torch.randn(8, 5, generator=g)) for _ in range(3)]

    def loss_fn(model, batch):
        return (model(batch[0]) - batch[1]).pow(2).mean()

    # the reference: plain full fine-tuning gradients of a copy
    ref = copy.deepcopy(net)
    grads = [torch.zeros_like(ref[i].weight) for i in (0, 2)]
    for batch in batches:
        ref.zero_grad()
        loss_fn(ref, batch).backward()
        grads[0] += ref[0].weight.grad
        grads[1] += ref[2].weight.grad
    m = api.apply_adapter(copy.deepcopy(net), LoraSBConfig(r=2, lora_alpha=4, target_modules=["0", "2"]))
    g0 = torch.random.get_rng_state()
    updates = init_lorasb(m, batches, loss_fn, step_size=1e-2)
    for (path, layer), g_full in zip([("0", m[0]), ("2", m[2])], grads):
        g_hat = -1e-2 * torch.sign(g_full)
        torch.testing.assert_close(updates[path], g_hat)
        u, s, vh = torch.linalg.svd(g_hat)
        torch.testing.assert_close(layer.delta_weight("default"), (u[:, :2] * s[:2]) @ vh[:2], atol=1e-6, rtol=1e-5)
    assert not m[0].base_layer.weight.requires_grad and m[0].base_layer.weight.grad is None
    assert torch.equal(torch.random.get_rng_state(), g0)
    x = torch.randn(4, 12)
    assert not torch.allclose(m(x), net(x))  # SB starts from W0 + the approximate first step


def test_sb_needs_batches_and_an_sb_adapter():
    m = api.apply_adapter(_net(), LoraSBConfig(r=2, target_modules=["0"]))
    with pytest.raises(ValueError, match="at least one batch"):
        init_lorasb(m, [], lambda mm, b: mm(b).sum())
    with pytest.raises(ValueError, match="no LoRA-SB adapter"):
        init_lorasb(api.apply_adapter(_net(), LoraXSConfig(r=2, target_modules=["0"])), [torch.zeros(1, 12)],
                    lambda mm, b: mm(b).sum())


def test_sb_init_beats_xs_after_short_training():
    """A planted full-rank-ish linear map: after 100 steps LoRA-SB's loss is lower than LoRA-XS's."""
    torch.manual_seed(0)
    teacher = nn.Linear(16, 16)
    x = torch.randn(256, 16)
    with torch.no_grad():
        y = teacher(x)
    losses = {}
    for cfg in (LoraXSConfig(r=4, target_modules=["0"]), LoraSBConfig(r=4, target_modules=["0"])):
        torch.manual_seed(1)
        m = api.apply_adapter(nn.Sequential(nn.Linear(16, 16)), cfg)
        loss_fn = lambda mm, b: (mm(b[0]) - b[1]).pow(2).mean()  # noqa: E731
        if isinstance(cfg, LoraSBConfig):
            init_lorasb(m, [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)], loss_fn, step_size=1e-2)
        opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(100):
            opt.zero_grad()
            loss_fn(m, (x, y)).backward()
            opt.step()
        with torch.no_grad():
            losses[cfg.method] = loss_fn(m, (x, y)).item()
    assert losses["lorasb"] < losses["loraxs"]
