"""SoRA numerics: the gated forward formula, the soft threshold, the official L1 term and
sparsifying schedules, the paper and code rules, the proximal hook that ``fit`` attaches from the
config (gates become exactly zero, loss still falls) and ``prune`` giving a plain peft LoRA with
identical outputs that ``PeftModel.from_pretrained`` loads."""

import math
import os

import peft
import pytest
import tiny_models as tiny
import torch
from torch import nn

from adaptome.core.adapters import api
from adaptome.core.adapters.sora import SoraConfig, gate_parameters, prune, sparsity_report
from adaptome.core.optim.sora_prox import (
    SoraProximalStep,
    l1_penalty,
    schedule_values,
    soft_threshold,
    sora_param_groups,
    value_at,
)


def _llama():
    return tiny.llama()


def test_forward_matches_formula():
    torch.manual_seed(0)
    m = api.apply_adapter(nn.Sequential(nn.Linear(7, 5)), SoraConfig(r=3, lora_alpha=6, init_lora_weights="random_b",
                                                                      target_modules=["0"]))
    layer, x = m[0], torch.randn(4, 7)
    a, b, g = layer.sora_A["default"], layer.sora_B["default"], layer.sora_gate["default"]
    want = layer.base_layer(x) + 2.0 * x @ (b @ torch.diag(g) @ a).T
    torch.testing.assert_close(m(x), want)


def test_soft_threshold():
    v = torch.tensor([-2.0, -0.3, 0.0, 0.2, 0.5, 3.0])
    torch.testing.assert_close(soft_threshold(v, 0.5), torch.tensor([-1.5, 0.0, 0.0, 0.0, 0.0, 2.5]))


def test_official_schedules():
    """The official grids: linspace, log(linspace(e^l0, e^lmax)), exp(linspace(log l0, log lmax))."""
    assert schedule_values(0.0, 1.0, 5, "linear") == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    want = [math.log(1 + (math.e - 1) * t) for t in (0, 0.25, 0.5, 0.75, 1.0)]
    assert schedule_values(0.0, 1.0, 5, "log_linear") == pytest.approx(want)
    assert schedule_values(1e-4, 1e-2, 3, "exp_linear") == pytest.approx([1e-4, 1e-3, 1e-2])
    assert schedule_values(0.3, None, 4, "linear") == [0.3] and schedule_values(0.3, 1.0, 4, "none") == [0.3]
    assert [value_at(s, 100, [0, 1, 2, 3]) for s in (0, 24, 25, 99)] == [0, 0, 1, 3]
    with pytest.raises(ValueError, match="unknown lambda schedule"):
        schedule_values(0.0, 1.0, 3, "cubic")
    with pytest.raises(ValueError, match="positive"):
        schedule_values(0.0, 1.0, 3, "exp_linear")


def test_l1_term_is_lambda_sum_abs_over_all_gates():
    """The official term: lambda * sum|g| / (total number of gates), not a sum of per-layer means."""
    m = api.apply_adapter(_llama(), SoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    gates = gate_parameters(m)
    assert len(gates) == 4
    want = 0.5 * sum(g.abs().sum() for g in gates) / (4 * 4)
    torch.testing.assert_close(l1_penalty(m, 0.5), want)


def _state(m, opt):
    return type("S", (), {"model": m, "optimizer": opt, "step": 1, "max_steps": 10})()


def test_proximal_hook_paper_scales_by_lr_code_does_not():
    torch.manual_seed(0)
    m = api.apply_adapter(nn.Sequential(nn.Linear(4, 4)), SoraConfig(r=4, gate_init="ones", target_modules=["0"]))
    groups = [{"params": [p for p in m.parameters() if p.requires_grad and p.dim() == 2]}]
    opt = torch.optim.SGD(groups + sora_param_groups(m, gate_lr=0.5), lr=0.1)
    SoraProximalStep([0.2], "paper").after_optimizer_step(_state(m, opt))
    torch.testing.assert_close(gate_parameters(m)[0].detach(), torch.full((4,), 0.9))  # 1 - 0.2 * 0.5
    SoraProximalStep([0.2], "code").after_optimizer_step(_state(m, opt))
    torch.testing.assert_close(gate_parameters(m)[0].detach(), torch.full((4,), 0.7))


def test_code_rule_adds_the_l1_gradient_before_the_step():
    """Rule "code": the gates' gradient gains d/dg of the official L1 term (as autograd gives it)."""
    m = api.apply_adapter(_llama(), SoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    gates = gate_parameters(m)
    for g in gates:
        g.grad = torch.zeros_like(g)
    SoraProximalStep([0.0], "code", l1_weight=0.7).before_optimizer_step(_state(m, None))
    want = torch.autograd.grad(l1_penalty(m, 0.7), gates)
    for g, w in zip(gates, want):
        torch.testing.assert_close(g.grad, w)


def test_fit_attaches_the_prox_step_from_the_config(tmp_path):
    """No hook and no optimizer passed: ``fit`` takes SoRA's step and gate group from the config."""
    from adaptome.core.train.loop import fit

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16))
    m = api.apply_adapter(net, SoraConfig(r=8, lora_alpha=8, target_modules=["0"], prox_rule="code",
                                          sparse_lambda=1e-2, sparse_lambda_2=0.0, lambda_schedule="linear",
                                          max_lambda=5e-3, lambda_num=4, gate_lr=2e-3))
    u, v = torch.randn(16, 2), torch.randn(2, 16)  # planted rank-2 change
    x = torch.randn(512, 16)
    with torch.no_grad():
        y = net[0].base_layer(x) + 0.5 * x @ (u @ v).T
    data = [{"x": x[i], "y": y[i]} for i in range(len(x))]

    def loss_fn(model, batch):
        return (model(batch["x"]) - batch["y"]).pow(2).mean()

    with torch.no_grad():
        before = (m(x) - y).pow(2).mean().item()
    fit(m, data, loss_fn=loss_fn, output_dir=tmp_path / "run", max_steps=300, batch_size=64,
        lr=2e-2, schedule="constant", max_grad_norm=None, progress=False, log_every=0)
    with torch.no_grad():
        after = (m(x) - y).pow(2).mean().item()
    rep = sparsity_report(m)
    assert after < 0.2 * before
    assert 2 <= rep["kept"] < 8  # some gates are exactly zero, the planted rank survives


def test_prune_gives_identical_plain_peft_lora(tmp_path):
    model = api.apply_adapter(_llama(), SoraConfig(r=4, init_lora_weights="random_b"))
    gates = gate_parameters(model)
    with torch.no_grad():
        for i, g in enumerate(gates):
            g[i % 4] = 0.0
            g[(i + 1) % 4] = 0.0
        gates[0].zero_()  # a layer with nothing kept
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(1))
    want = model(input_ids=ids).logits
    kept = sparsity_report(model)["kept"]
    pm = prune(model)
    torch.testing.assert_close(pm(input_ids=ids).logits, want, atol=1e-6, rtol=0)
    pm.save_pretrained(tmp_path / "pruned")
    loaded = peft.PeftModel.from_pretrained(_llama(), tmp_path / "pruned")
    torch.testing.assert_close(loaded(input_ids=ids).logits, want, atol=1e-6, rtol=0)
    # no larger than a LoRA of the surviving rank: sum over layers of k*(in+out) parameters
    n_lora = sum(p.numel() for n, p in pm.named_parameters() if "lora_" in n)
    lin = {p: m for p, m in _llama().named_modules() if isinstance(m, nn.Linear) and "lm_head" not in p}
    assert n_lora == sum(2 * (lin[p].in_features + lin[p].out_features) for p in list(lin)[1:])
    assert kept == 2 * (len(lin) - 1)
    assert os.path.getsize(tmp_path / "pruned" / "adapter_model.safetensors") <= 4 * n_lora + 8192


def test_prune_all_zero_is_an_error():
    model = api.apply_adapter(_llama(), SoraConfig(r=2))
    with torch.no_grad():
        for g in gate_parameters(model):
            g.zero_()
    with pytest.raises(ValueError, match="every SoRA gate is zero"):
        prune(model)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_fit_thresholds_with_the_rate_of_the_step_taken(tmp_path, schedule):
    """Paper rule through ``fit``: step t soft-thresholds by lambda * eta_t, the rate its optimizer step used.

    A and B frozen (B = 0), so the gates' gradient is exactly 0 and Adam leaves them alone: only the
    proximal steps move them, g_T = 1 - lambda * sum_{t<T} eta_t. ``fit`` steps the scheduler before
    the hook; reading the rate then would use eta_{t+1} (sum shifted by one step, and a last threshold
    of 0 under a decay to 0, which let Adam's last step revive zeroed gates)."""
    from adaptome.core.train.loop import fit
    from adaptome.core.train.schedule import make_scheduler

    steps, warmup, lr, lam = 10, 2, 0.05, 1.5
    m = api.apply_adapter(nn.Sequential(nn.Linear(4, 4)),
                          SoraConfig(r=4, gate_init="ones", target_modules=["0"], sparse_lambda=lam))
    for n, p in m.named_parameters():
        p.requires_grad_("sora_gate" in n)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched, rates = make_scheduler(opt, schedule, warmup, steps), []
    for _ in range(steps):  # eta_0 .. eta_{T-1}
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    data = [{"x": torch.randn(4)} for _ in range(8)]
    fit(m, data, loss_fn=lambda model, b: model(b["x"]).pow(2).mean(), output_dir=tmp_path / "run",
        max_steps=steps, batch_size=4, lr=lr, schedule=schedule, warmup_steps=warmup, progress=False,
        log_every=0, save_every=0)
    want = torch.full((4,), 1.0 - lam * sum(rates))
    torch.testing.assert_close(gate_parameters(m)[0].detach(), want)
