"""Native ``lora_native`` equals peft's LoRA when both hold the same A and B.

The native adapter is initialised with a random B (so every gradient is non-zero); its A and B are
copied into a peft LoRA on the same base model through peft's own ``set_peft_model_state_dict``.
Outputs, the loss and the gradients of every A and B must then agree to float32 rounding, with
and without rank-stabilised scaling (alpha / sqrt(r)), r = 4, alpha = 8, dropout 0.
"""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from transformers import LlamaForCausalLM

from adaptome.core.adapters import api, io

TARGETS = "attention+mlp"


@pytest.fixture(scope="module")
def base(tiny_llama_factory) -> LlamaForCausalLM:
    return tiny_llama_factory()


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 32, (3, 7), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def _pair(base, use_rslora: bool):
    """(native model, peft model) holding the same A and B."""
    opts = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "use_rslora": use_rslora, "target_modules": TARGETS}
    torch.manual_seed(3)
    native = api.apply_adapter(copy.deepcopy(base),
                               api.make_config("lora_native", {**opts, "init_lora_weights": "random_b"}))
    pmodel = api.apply_adapter(copy.deepcopy(base), api.make_config("lora", opts))
    assert isinstance(pmodel, peft.PeftModel)
    state = api.adapter_state_dict(native)  # <path>.lora_A.weight
    mapped = {f"base_model.model.{k}": v for k, v in state.items()}
    assert sorted(mapped) == sorted(peft.get_peft_model_state_dict(pmodel)), "the two target different modules"
    res = peft.set_peft_model_state_dict(pmodel, mapped)
    assert not res.unexpected_keys
    return native, pmodel


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = name.removeprefix("base_model.model.")
            out[key] = p.grad.detach().clone()
    return out


@pytest.mark.parametrize("use_rslora", [False, True], ids=["lora", "rslora"])
def test_native_lora_equals_peft_lora(base, batch, use_rslora):
    native, pmodel = _pair(base, use_rslora)
    layer_n = native.get_submodule("model.layers.0.self_attn.q_proj")
    layer_p = pmodel.base_model.model.get_submodule("model.layers.0.self_attn.q_proj")
    want_scale = 8 / (4 ** 0.5 if use_rslora else 4)
    assert layer_n.scaling["default"] == layer_p.scaling["default"] == want_scale

    out_n = native(**batch)
    out_p = pmodel(**batch)
    base_logits = base(input_ids=batch["input_ids"]).logits
    assert not torch.allclose(out_n.logits, base_logits, atol=1e-4), "the adapter is a no-op; nothing is compared"
    torch.testing.assert_close(out_n.logits, out_p.logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out_n.loss, out_p.loss, atol=1e-7, rtol=1e-6)

    out_n.loss.backward()
    out_p.loss.backward()
    g_n, g_p = _grads(native), _grads(pmodel)
    assert sorted(g_n) == sorted(g_p)
    assert len(g_n) == 2 * 7 * 2  # A and B, 7 linears per layer, 2 layers
    for k in g_n:
        assert g_n[k].abs().max() > 0, f"{k} has a zero gradient"
        torch.testing.assert_close(g_n[k], g_p[k], atol=1e-7, rtol=1e-5, msg=lambda m: f"{k}: {m}")


def test_native_merge_equals_peft_merge(base, batch):
    native, pmodel = _pair(base, use_rslora=False)
    merged_n = api.merge_and_unload(native)
    merged_p = api.merge_and_unload(pmodel)
    for (k, v), (k2, v2) in zip(merged_n.state_dict().items(), merged_p.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, v2, atol=1e-7, rtol=1e-6)


def test_peft_lora_saved_by_us_loads_in_plain_peft(base, batch, tmp_path):
    _, pmodel = _pair(base, use_rslora=True)
    want = pmodel(input_ids=batch["input_ids"]).logits
    path = io.save_adapter(pmodel, tmp_path / "lora")
    plain = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(path)).eval()
    torch.testing.assert_close(plain(input_ids=batch["input_ids"]).logits, want, atol=0, rtol=0)
