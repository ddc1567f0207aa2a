"""Target presets resolve per architecture (LLaMA, Phi-3 fused projections, BERT / XLM-R / ESM,
ViT, timm ViT); all-linear skips the output head."""

import pytest
import tiny_models as tiny
import torch
from torch import nn

from adaptome.core.adapters.api import apply_adapter, make_config
from adaptome.core.adapters.targets import TargetError, resolve_targets


def _suffixes(paths):
    return sorted({".".join(p.split(".")[-2:]) if p.split(".")[-1] == "dense" else p.split(".")[-1] for p in paths})


# built as the tests found them: unseeded and in train mode (only module names and shapes matter here)
def _llama():
    return tiny.llama(seed=None, eval_mode=False)


def _phi3():
    return tiny.phi3(seed=None, eval_mode=False, pad_token_id=0)


def _bert_like(kind):
    if kind == "bert":
        return tiny.bert(seed=None, eval_mode=False, dropout=0.1)
    if kind == "xlm-roberta":
        return tiny.xlmr(seed=None, eval_mode=False, dropout=0.1)
    return tiny.esm(seed=None, eval_mode=False, dropout=0.1)


def _vit():
    return tiny.vit(seed=None, eval_mode=False)


def _timm_vit():
    return tiny.timm_vit(seed=None, eval_mode=False)


def test_llama_presets():
    m = _llama()
    assert _suffixes(resolve_targets(m, "attention")) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert _suffixes(resolve_targets(m, "mlp")) == ["down_proj", "gate_proj", "up_proj"]
    all_lin = resolve_targets(m, "all-linear")
    assert len(all_lin) == 14 and "lm_head" not in all_lin


def test_phi3_fused_projections():
    m = _phi3()
    assert _suffixes(resolve_targets(m, "attention")) == ["o_proj", "qkv_proj"]
    assert _suffixes(resolve_targets(m, "mlp")) == ["down_proj", "gate_up_proj"]
    # a LoRA on the fused qkv projection trains r * (in + 3 * hidden_per_head * heads) there
    model = apply_adapter(m, make_config("lora_native", {"r": 2, "target_modules": ["qkv_proj"]}))
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert qkv.lora_B["default"].weight.shape == (qkv.base_layer.out_features, 2)
    assert qkv.base_layer.out_features == 3 * 32


@pytest.mark.parametrize("kind", ["bert", "xlm-roberta", "esm"])
def test_bert_family_presets(kind):
    m = _bert_like(kind)
    att = resolve_targets(m, "attention")
    mlp = resolve_targets(m, "mlp")
    assert len(att) == 8 and len(mlp) == 4
    assert all(p.endswith(("query", "key", "value", "attention.output.dense")) for p in att)
    assert all(p.endswith(("intermediate.dense", "output.dense")) and "attention" not in p for p in mlp)
    assert not set(att) & set(mlp)
    assert not any("lm_head" in p for p in resolve_targets(m, "all-linear"))


def test_vit_presets():
    m = _vit()
    assert len(resolve_targets(m, "attention")) == 8
    assert len(resolve_targets(m, "mlp")) == 4


def test_timm_vit_presets_and_head_excluded():
    m = _timm_vit()
    assert _suffixes(resolve_targets(m, "attention")) == ["proj", "qkv"]
    assert _suffixes(resolve_targets(m, "mlp")) == ["fc1", "fc2"]
    assert "head" not in resolve_targets(m, "all-linear")
    model = apply_adapter(m, make_config("lora_native", {"r": 2, "target_modules": "attention"}))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_unknown_architecture_preset_is_an_error():
    m = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(TargetError, match="no target preset for architecture"):
        resolve_targets(m, "attention")
    with pytest.raises(TargetError, match="matched no linear module"):
        resolve_targets(m, ["q_proj"])
