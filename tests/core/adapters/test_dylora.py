"""DyLoRA numerics: rank-k output == plain LoRA with truncated A, B and scale alpha/k; frozen mode
trains only component k-1; the rank sampler; truncation of a saved adapter."""

import json

import pytest
import torch
from torch import nn

from adaptome.core.adapters import api, io
from adaptome.core.adapters.dylora import DyLoraConfig, DyLoraLinear, set_rank
from adaptome.core.adapters.truncate import truncate_adapter_dir
from adaptome.core.optim.dylora_rank import DyLoRARankSampler


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 6))


def _adapted(mode="frozen"):
    m = api.apply_adapter(_model(), DyLoraConfig(r=4, lora_alpha=6, mode=mode, init_lora_weights="random_b",
                                                  target_modules=["0", "2"]))
    return m


@pytest.mark.parametrize("k", [1, 2, 4])
def test_rank_k_equals_truncated_lora(k):
    m = _adapted()
    layer = m[0]
    x = torch.randn(5, 12)
    set_rank(m, k)
    a, b = layer.dylora_A["default"], layer.dylora_B["default"]
    want = x @ layer.base_layer.weight.T + layer.base_layer.bias + (6 / k) * (x @ a[:k].T) @ b[:, :k].T
    torch.testing.assert_close(layer(x), want)
    # the merged weight at rank k is the same update
    torch.testing.assert_close(layer.delta_weight("default"), (6 / k) * b[:, :k] @ a[:k])


def test_frozen_mode_trains_only_component_k_minus_1():
    m = _adapted("frozen").train()
    set_rank(m, 3)
    m(torch.randn(8, 12)).pow(2).sum().backward()
    ga, gb = m[0].dylora_A["default"].grad, m[0].dylora_B["default"].grad
    assert ga[:2].abs().max() == 0 and gb[:, :2].abs().max() == 0  # components < k-1 detached
    assert ga[2].abs().max() > 0 and gb[:, 2].abs().max() > 0  # component k-1 learns
    assert ga[3:].abs().max() == 0 and gb[:, 3:].abs().max() == 0  # components >= k unused


def test_nested_mode_trains_all_components_up_to_k():
    m = _adapted("nested").train()
    set_rank(m, 3)
    m(torch.randn(8, 12)).pow(2).sum().backward()
    ga = m[0].dylora_A["default"].grad
    assert (ga[:3].abs().sum(dim=1) > 0).all() and ga[3:].abs().max() == 0


def test_rank_sampler_draws_uniform_ranks_without_touching_global_rng():
    m = _adapted()
    hook = DyLoRARankSampler(seed=3)
    state = type("S", (), {"model": m})()
    g0 = torch.random.get_rng_state()
    ranks = []
    for _ in range(400):
        hook.on_step_start(state)
        ranks.append(hook.last_rank)
        assert {layer.rank["default"] for layer in m.modules() if isinstance(layer, DyLoraLinear)} == {hook.last_rank}
    assert torch.equal(torch.random.get_rng_state(), g0)
    counts = torch.bincount(torch.tensor(ranks), minlength=5)[1:]
    assert counts.min() > 60  # ~100 each of 1..4
    # resume: same state -> same next draws
    sd = hook.state_dict()
    hook.on_step_start(state)
    nxt = hook.last_rank
    hook2 = DyLoRARankSampler(seed=99)
    hook2.load_state_dict(sd)
    hook2.on_step_start(state)
    assert hook2.last_rank == nxt


def test_training_with_sampler_makes_every_rank_useful():
    """Nested-dropout training: the loss at every rank falls (the dynamic-rank property)."""
    torch.manual_seed(0)
    m = api.apply_adapter(nn.Sequential(nn.Linear(8, 8)), DyLoraConfig(r=4, lora_alpha=4, target_modules=["0"]))
    target = nn.Linear(8, 8)
    x = torch.randn(256, 8)
    with torch.no_grad():
        y = target(x)
    def loss_at(k):
        set_rank(m, k)
        with torch.no_grad():
            return (m(x) - y).pow(2).mean().item()
    before = [loss_at(k) for k in range(1, 5)]
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=2e-2)
    hook, state = DyLoRARankSampler(seed=0), type("S", (), {"model": m})()
    m.train()
    for _ in range(300):
        hook.on_step_start(state)
        opt.zero_grad()
        (m(x) - y).pow(2).mean().backward()
        opt.step()
    m.eval()
    after = [loss_at(k) for k in range(1, 5)]
    assert all(a < 0.9 * b for a, b in zip(after, before))
    assert after[3] < after[0]  # more rank, lower loss


def test_truncate_dir_equals_set_rank(tmp_path):
    m = _adapted()
    x = torch.randn(3, 12)
    src = io.save_adapter(m, tmp_path / "full")
    set_rank(m, 2)
    want = m(x)
    dst = truncate_adapter_dir(src, tmp_path / "r2", rank=2)
    small = io.load_adapter(_model(), dst)
    torch.testing.assert_close(small(x), want)
    assert json.loads((dst / "adaptome.json").read_text())["config"]["r"] == 2
    assert small[0].dylora_A["default"].shape == (2, 12)
    with pytest.raises(FileExistsError):  # never overwrite
        truncate_adapter_dir(src, dst, rank=1)
    with pytest.raises(ValueError, match="rank must be in 1..4"):
        truncate_adapter_dir(src, tmp_path / "bad", rank=5)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("eval_rank", [None, 2])
def test_rank_between_steps_saving_and_loading_is_the_resting_rank(eval_rank, tmp_path):
    """The sampler draws a rank for a step and puts the resting rank (eval_rank, or r) back after it, so
    evaluation, saving and a reloaded adapter never see the rank drawn last."""
    m = api.apply_adapter(_model(), DyLoraConfig(r=4, lora_alpha=6, init_lora_weights="random_b",
                                                  target_modules=["0", "2"], eval_rank=eval_rank))
    rest = eval_rank or 4
    ranks = lambda mm: {layer.rank["default"] for layer in mm.modules() if isinstance(layer, DyLoraLinear)}  # noqa: E731
    assert ranks(m) == {rest}
    hook, state = DyLoRARankSampler(seed=1), type("S", (), {"model": m})()
    drawn = set()
    for _ in range(20):
        hook.on_step_start(state)
        drawn |= ranks(m)
        hook.after_optimizer_step(state)
        assert ranks(m) == {rest}
    assert len(drawn) >= 3
    x = torch.randn(3, 12)
    want = m(x)
    back = io.load_adapter(_model(), io.save_adapter(m, tmp_path / "a"))
    assert ranks(back) == {rest}
    torch.testing.assert_close(back(x), want)
    with pytest.raises(ValueError, match="eval_rank"):
        DyLoraConfig(r=4, eval_rank=5)


def test_set_rank_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank must be in 1..4"):
        set_rank(_adapted(), 0)


def test_cli_truncate_and_bad_input(tmp_path):
    from typer.testing import CliRunner

    from adaptome.core.cli import app

    m = _adapted()
    src = io.save_adapter(m, tmp_path / "full")
    runner = CliRunner()
    res = runner.invoke(app, ["adapters", "truncate", str(src), str(tmp_path / "r3"), "--rank", "3"])
    assert res.exit_code == 0, res.output
    x = torch.randn(2, 12)
    set_rank(m, 3)
    torch.testing.assert_close(io.load_adapter(_model(), tmp_path / "r3")(x), m(x))
    res = runner.invoke(app, ["adapters", "truncate", str(tmp_path / "nope"), str(tmp_path / "o"), "--rank", "1"])
    assert res.exit_code == 2 and "nope" in res.output and "not found" in res.output
    res = runner.invoke(app, ["adapters", "truncate", str(src), str(tmp_path / "r3"), "--rank", "1"])
    assert res.exit_code == 2 and "already exists" in res.output
    assert json.loads((tmp_path / "r3" / "adaptome.json").read_text())["config"]["r"] == 3  # kept
