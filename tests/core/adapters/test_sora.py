"""SoRA numerics: the gated forward formula, the soft threshold, the sparsifying schedules, the
proximal hook inside ``fit`` (gates become exactly zero, loss still falls) and ``prune`` giving a
plain peft LoRA with identical outputs that ``PeftModel.from_pretrained`` loads."""

import math
import os

import peft
import pytest
import torch
from torch import nn

from adaptome.core.adapters import api
from adaptome.core.adapters.sora import SoraConfig, gate_parameters, prune, sparsity_report
from adaptome.core.optim.sora_prox import (SoraProximalStep, l1_penalty, soft_threshold, sora_param_groups,
                                           threshold_at)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()


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


def test_threshold_schedules():
    xs = {k: [threshold_at(s, 100, 0.0, 1.0, 5, k) for s in range(0, 100, 20)] for k in
          ("linear", "log_linear", "exp_linear")}
    assert xs["linear"] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    for k in xs:
        assert xs[k][0] == 0 and xs[k][-1] == pytest.approx(1.0) and xs[k] == sorted(xs[k])
    assert xs["log_linear"][1] > 0.25 > xs["exp_linear"][1]  # concave vs convex ramps
    assert xs["log_linear"][1] == pytest.approx(math.log1p((math.e - 1) * 0.25))
    assert threshold_at(50, 100, 0.3) == 0.3
    with pytest.raises(ValueError, match="unknown schedule"):
        threshold_at(0, 1, 0.0, 1.0, 3, "cubic")


def test_proximal_hook_scales_by_lr_or_not():
    torch.manual_seed(0)
    m = api.apply_adapter(nn.Sequential(nn.Linear(4, 4)), SoraConfig(r=4, gate_init="ones", target_modules=["0"]))
    opt = torch.optim.SGD(sora_param_groups(m, lr=0.1, weight_decay=0.0, gate_lr=0.5), lr=0.1)
    state = type("S", (), {"model": m, "optimizer": opt, "step": 1, "max_steps": 10})()
    SoraProximalStep(0.2, scale_by_lr=True).after_optimizer_step(state)
    torch.testing.assert_close(gate_parameters(m)[0].detach(), torch.full((4,), 0.9))  # 1 - 0.2 * 0.5
    SoraProximalStep(0.2, scale_by_lr=False).after_optimizer_step(state)
    torch.testing.assert_close(gate_parameters(m)[0].detach(), torch.full((4,), 0.7))


def test_training_with_prox_sparsifies_gates_and_learns(tmp_path):
    from adaptome.core.train.loop import fit

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16))
    m = api.apply_adapter(net, SoraConfig(r=8, lora_alpha=8, target_modules=["0"]))
    u, v = torch.randn(16, 2), torch.randn(2, 16)  # planted rank-2 change
    x = torch.randn(512, 16)
    with torch.no_grad():
        y = net[0].base_layer(x) + 0.5 * x @ (u @ v).T
    data = [{"x": x[i], "y": y[i]} for i in range(len(x))]

    def loss_fn(model, batch):
        return (model(batch["x"]) - batch["y"]).pow(2).mean() + l1_penalty(model, 1e-2)

    with torch.no_grad():
        before = (m(x) - y).pow(2).mean().item()
    hook = SoraProximalStep(0.0, xi_max=5e-3, num_stages=4, schedule="linear")
    fit(m, data, loss_fn=loss_fn, hooks=[hook], output_dir=tmp_path / "run", max_steps=300, batch_size=64,
        lr=2e-2, schedule="constant", max_grad_norm=None, progress=False, log_every=0,
        make_optimizer=lambda mm: torch.optim.AdamW(sora_param_groups(mm, 2e-2, 0.0, gate_lr=2e-3), lr=2e-2))
    with torch.no_grad():
        after = (m(x) - y).pow(2).mean().item()
    rep = sparsity_report(m)
    assert after < 0.2 * before
    assert 2 <= rep["kept"] < 8  # some gates are exactly zero, the planted rank survives
    assert hook.last_xi == pytest.approx(5e-3)


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
