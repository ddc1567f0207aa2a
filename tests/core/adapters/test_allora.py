"""ALLoRA numerics: forward is W0 x + B A x (no scale, no dropout); the coefficient is eta at 0,
decreasing in the norm, a uniform rescale when norms are equal; the gradient and update modes
scale exactly per row; training through ``fit`` with the optimizer hooks lowers the loss."""

import pytest
import torch
from torch import nn

from adaptome.core.adapters import api
from adaptome.core.adapters.allora import ALLoraConfig, allora_parameters
from adaptome.core.optim.allora import ALLoRARate, allora_coefficient, attach_allora


def _adapted():
    torch.manual_seed(0)
    return api.apply_adapter(nn.Sequential(nn.Linear(9, 7)), ALLoraConfig(r=3, init_lora_weights="random_b",
                                                                            target_modules=["0"]))


def test_forward_has_no_scale_and_no_dropout():
    m = _adapted().train()
    layer, x = m[0], torch.randn(4, 9)
    want = layer.base_layer(x) + x @ (layer.allora_B["default"] @ layer.allora_A["default"]).T
    torch.testing.assert_close(m(x), want)
    torch.testing.assert_close(m(x), want)  # train mode, twice: nothing random
    assert not hasattr(ALLoraConfig(), "lora_alpha") and not hasattr(ALLoraConfig(), "lora_dropout")


def test_coefficient_properties():
    eta = 2.0
    rows = torch.stack([torch.zeros(4), torch.full((4,), 0.5), torch.full((4,), 1.0), torch.full((4,), 3.0)])
    c = allora_coefficient(rows, eta).squeeze(1)
    assert c[0] == pytest.approx(eta)  # finite at 0
    assert (c[1:] < c[:-1]).all()  # decreasing in the norm
    torch.testing.assert_close(c, 1 / torch.sqrt(1 / eta ** 2 + rows.pow(2).sum(1)))
    same = torch.ones(3, 4)
    cs = allora_coefficient(same, eta)
    assert torch.all(cs == cs[0])  # equal norms -> uniform rescale
    assert allora_coefficient(rows, eta, norm="tensor").shape == ()


def test_grad_mode_scales_each_row():
    m = _adapted()
    params = allora_parameters(m)
    m(torch.randn(5, 9)).pow(2).sum().backward()
    grads = [p.grad.clone() for p in params]
    ALLoRARate(params, eta=0.5).before_optimizer_step()
    for p, g in zip(params, grads):
        torch.testing.assert_close(p.grad, g / torch.sqrt(4.0 + p.detach().pow(2).sum(-1, keepdim=True)))


def test_update_mode_scales_the_optimizer_step():
    m = _adapted()
    params = allora_parameters(m)
    old = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=0.1)
    ref = [p.detach().clone().requires_grad_() for p in params]
    ref_opt = torch.optim.Adam(ref, lr=0.1)
    attach_allora(opt, params, eta=1.0, mode="update")
    m(torch.ones(2, 9)).pow(2).sum().backward()
    for r, p in zip(ref, params):
        r.grad = p.grad.clone()
    opt.step()
    ref_opt.step()
    for p, o, r in zip(params, old, ref):
        c = allora_coefficient(o, 1.0)
        torch.testing.assert_close(p.detach(), o + c * (r.detach() - o))


def test_training_through_fit_lowers_loss(tmp_path):
    from adaptome.core.train.loop import fit

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8))
    m = api.apply_adapter(net, ALLoraConfig(r=4, target_modules=["0"]))
    x = torch.randn(256, 8)
    with torch.no_grad():
        y = net[0].base_layer(x) + x @ (torch.randn(8, 2) @ torch.randn(2, 8)).T
    data = [{"x": x[i], "y": y[i]} for i in range(256)]
    loss_fn = lambda mm, b: (mm(b["x"]) - b["y"]).pow(2).mean()  # noqa: E731
    with torch.no_grad():
        before = loss_fn(m, {"x": x, "y": y}).item()
    fit(m, data, loss_fn=loss_fn,  # the config's rate (a step hook) is attached by fit itself
        output_dir=tmp_path / "run", max_steps=150, batch_size=64, lr=3e-2, schedule="constant",
        max_grad_norm=None, progress=False, log_every=0)
    with torch.no_grad():
        assert loss_fn(m, {"x": x, "y": y}).item() < 0.1 * before
