"""AdapterFusion (core/adapters/fusion.py): the formula, the average at Q = 0, and what trains."""

from __future__ import annotations

import pytest
import tiny_models as tiny
import torch

from adaptome.core.adapters import inject
from adaptome.core.adapters.api import apply_adapter, make_config
from adaptome.core.adapters.bottleneck import average_adapters
from adaptome.core.adapters.fusion import (
    AdapterFusion,
    fuse_adapters,
    fusion_state_dict,
    load_fusion_state_dict,
    unfuse,
)


def _model():
    m = tiny.text_masked_lm(50, seed=0, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32).eval()
    for name in ("a", "b", "task"):
        m = apply_adapter(m, make_config("seq_bn", {"reduction_factor": 2}), name)
    return m


def test_fusion_module_matches_the_formula():
    torch.manual_seed(1)
    f = AdapterFusion(8, ["a", "b", "c"])
    for p in f.parameters():
        torch.nn.init.normal_(p, std=0.5)
    z, deltas = torch.randn(2, 3, 8), torch.randn(3, 2, 3, 8)
    out = f(z, deltas)
    for b in range(2):
        for t in range(3):
            q = f.query.weight @ z[b, t] + f.query.bias
            k = torch.stack([f.key.weight @ deltas[n, b, t] + f.key.bias for n in range(3)])
            v = torch.stack([f.value.weight @ deltas[n, b, t] + f.value.bias for n in range(3)])
            a = torch.softmax(k @ q, dim=0)
            torch.testing.assert_close(out[b, t], (a[:, None] * v).sum(0))


def test_fusion_with_zero_query_is_the_average_of_the_adapters():
    m = _model()
    ids = torch.randint(0, 50, (2, 7))
    average_adapters(m, ["a", "b"])
    ref = m(input_ids=ids).logits
    fuse_adapters(m, ["a", "b"])
    for mod in m.modules():
        if isinstance(mod, AdapterFusion):
            torch.nn.init.zeros_(mod.query.weight)
    torch.testing.assert_close(m(input_ids=ids).logits, ref)


def test_fusion_trains_only_fusion_and_top_adapter_and_round_trips():
    m = _model()
    paths = fuse_adapters(m, ["a", "b"], top=["task"])
    assert len(paths) == 2
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter_fusion." in n or ".task." in n for n in trainable)
    assert any(".adapter_fusion." in n for n in trainable) and any(".task." in n for n in trainable)
    before = {n: inject.adapter_state_dict(m, n) for n in ("a", "b")}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 50, (4, 9))
    fusion0 = fusion_state_dict(m)
    for _ in range(3):
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    for n in ("a", "b"):
        after = inject.adapter_state_dict(m, n)
        assert all(torch.equal(before[n][k], after[k]) for k in after)
    state = fusion_state_dict(m)
    assert any(not torch.equal(state[k], fusion0[k]) for k in state)
    ref = m(input_ids=ids).logits
    unfuse(m)
    assert not torch.allclose(m(input_ids=ids).logits, ref)
    fuse_adapters(m, ["a", "b"], top=["task"])
    load_fusion_state_dict(m, state, "saved")
    torch.testing.assert_close(m(input_ids=ids).logits, ref)
    with pytest.raises(ValueError, match="saved: does not fit"):
        load_fusion_state_dict(m, {"x": torch.zeros(1)}, "saved")


def test_fusion_refuses_non_bottleneck_adapters():
    m = tiny.text_masked_lm(50, seed=0, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    m = apply_adapter(m, make_config("lora_native", {"r": 2, "target_modules": ["query", "value"]}), "a")
    m = apply_adapter(m, make_config("seq_bn", {"reduction_factor": 2}), "b")
    with pytest.raises(ValueError, match="fusion mixes bottleneck adapters"):
        fuse_adapters(m, ["a", "b"])
