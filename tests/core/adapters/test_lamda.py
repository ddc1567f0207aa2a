"""LaMDA numerics: SVD init (A = V_r^T frozen, B = U_r, S = 0: the base model); A gets no gradient;
the freezing hook keeps frozen B columns bit-identical under AdamW with weight decay while the rest
trains; the two freezing schedules; LaMDA++ ranks from normalized spectra (a hand-computed case)
and save / load of per-layer ranks."""

import pytest
import torch
from torch import nn

from adaptome.core.adapters import api, io
from adaptome.core.adapters.lamda import LamdaConfig, lamda_pp_config, lamda_pp_ranks
from adaptome.core.optim.lamda_freeze import LamdaFreezeB


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 6))


def test_svd_init_is_identity_and_a_is_frozen():
    net = _net()
    x = torch.randn(5, 12)
    want = net(x)
    m = api.apply_adapter(net, LamdaConfig(r=3, target_modules=["0", "2"]))
    torch.testing.assert_close(m(x), want, atol=0, rtol=0)
    layer = m[0]
    u, _, vh = torch.linalg.svd(layer.base_layer.weight.detach(), full_matrices=False)
    torch.testing.assert_close(layer.lamda_A["default"], vh[:3])
    torch.testing.assert_close(layer.lamda_B["default"], u[:, :3])
    assert sorted(n for n, p in m.named_parameters() if p.requires_grad) == [
        "0.lamda_B.default", "0.lamda_S.default", "2.lamda_B.default", "2.lamda_S.default"]
    m(x).pow(2).sum().backward()
    assert layer.lamda_A["default"].grad is None and layer.lamda_S["default"].grad.abs().max() > 0


def test_forward_matches_formula():
    m = api.apply_adapter(_net(), LamdaConfig(r=3, lora_alpha=6, random_core=True, target_modules=["0"]))
    layer, x = m[0], torch.randn(4, 12)
    a, s, b = layer.lamda_A["default"], layer.lamda_S["default"], layer.lamda_B["default"]
    torch.testing.assert_close(m[0](x), layer.base_layer(x) + 2.0 * x @ (b @ s @ a).T)


def test_schedules():
    paper, code = LamdaFreezeB(0.5, "paper"), LamdaFreezeB(0.3, "code")
    assert [paper.n_frozen(t, 100, 4) for t in (0, 12, 13, 25, 49, 50, 99)] == [0, 0, 1, 2, 3, 4, 4]
    assert [code.n_frozen(t, 100, 64) for t in (0, 29, 30, 60, 99)] == [0, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="schedule"):
        LamdaFreezeB(0.3, "sometimes")


def test_frozen_columns_stay_fixed_under_adamw_with_weight_decay():
    torch.manual_seed(0)
    m = api.apply_adapter(nn.Sequential(nn.Linear(8, 8)), LamdaConfig(r=4, lora_alpha=4, target_modules=["0"]))
    b, core = m[0].lamda_B["default"], m[0].lamda_S["default"]
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    hook = LamdaFreezeB(freeze_fraction=0.5, schedule="paper")
    state = type("S", (), {"model": m, "optimizer": opt, "max_steps": 40, "step": 0})()
    x, y = torch.randn(64, 8), torch.randn(64, 8)
    history = [b.detach().clone()]
    for step in range(40):
        state.step = step
        opt.zero_grad()
        (m(x) - y).pow(2).mean().backward()
        hook.before_optimizer_step(state)
        opt.step()
        hook.after_optimizer_step(state)
        history.append(b.detach().clone())
    for step in range(40):
        k = hook.n_frozen(step, 40, 4)
        before, after = history[step], history[step + 1]
        assert torch.equal(after[:, :k], before[:, :k]), f"step {step}: frozen columns moved"
        if k < 4 and step > 0:
            assert not torch.equal(after[:, k:], before[:, k:]), f"step {step}: free columns did not train"
    assert not b.requires_grad  # fully frozen after 20 of 40 steps
    core_before = core.detach().clone()
    opt.zero_grad()
    (m(x) - y).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(core, core_before)  # S keeps training


def test_lamda_pp_ranks_follow_normalized_energy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    q1, _ = torch.linalg.qr(torch.randn(8, 8))
    q2, _ = torch.linalg.qr(torch.randn(8, 8))
    with torch.no_grad():
        net[0].weight.copy_(q1 @ torch.diag(torch.tensor([10.0, 3, 1, 0.1, 0.1, 0.1, 0.1, 0.1])) @ q2.T)
        net[1].weight.copy_(q2 @ torch.diag(torch.ones(8)) @ q1.T)  # flat spectrum: e_k = 1/8
    # energies layer 0: 100, 9, 1, .01 ... / 110.05 -> 0.909, 0.0818, 0.0091, ...; layer 1: 0.125 each
    ranks = lamda_pp_ranks(net, ["0", "1"], total_rank=6, min_rank=1)
    assert ranks == {"0": 1, "1": 5}
    ranks = lamda_pp_ranks(net, ["0", "1"], total_rank=10, min_rank=1)
    assert ranks == {"0": 2, "1": 8}  # 0.0818 beats only what is left once layer 1 is full
    assert sum(ranks.values()) == 10
    with pytest.raises(ValueError, match="below min_rank"):
        lamda_pp_ranks(net, ["0", "1"], total_rank=1)


def test_lamda_pp_adapter_saves_and_loads_per_layer_ranks(tmp_path):
    net = _net()
    cfg = lamda_pp_config(net, total_rank=5, target_modules=["0", "2"], random_core=True)
    assert sum(cfg.rank_pattern.values()) == 5
    m = api.apply_adapter(net, cfg)
    assert {m[0].rank["default"], m[2].rank["default"]} == set(cfg.rank_pattern.values())
    assert m[0].lamda_S["default"].shape == (cfg.rank_pattern["0"],) * 2
    x = torch.randn(3, 12)
    path = io.save_adapter(m, tmp_path / "pp")
    torch.testing.assert_close(io.load_adapter(_net(), path)(x), m(x), atol=0, rtol=0)
