"""Bottleneck adapters: NICE is exactly invertible; ``mam`` init is the identity on BERT, XLM-R and
LLaMA; the post-LN and pre-LN formulas by hand; the inverse runs before a (tied) LM head; a stack
trains only its top and computes the sequential formula; averaging; merging is refused."""

import copy

import pytest
import tiny_models as tiny
import torch
from torch import nn

from adaptome.core.adapters import api, io
from adaptome.core.adapters.bottleneck import (
    BottleneckLayer,
    NiceBlock,
    SeqBnConfig,
    SeqBnInvConfig,
    average_adapters,
    stack_adapters,
)


def _llama(tie=False):
    return tiny.llama(tie=tie)


def _bert():
    return tiny.bert(head=None, dropout=0.1)


def _xlmr():
    return tiny.xlmr(dropout=0.1, max_position_embeddings=40)


IDS = torch.randint(3, 30, (2, 7), generator=torch.Generator().manual_seed(1))


def _out(m):
    with torch.no_grad():
        o = m(input_ids=IDS)
    return o.logits if getattr(o, "logits", None) is not None else o.last_hidden_state


def _randomize(model, names=None, std=0.3):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".bn_" in n and (names is None or any(f".{a}." in n for a in names)):
                p.copy_(torch.randn(p.shape, generator=g) * std)


def test_nice_inverse_of_forward_is_identity():
    torch.manual_seed(0)
    nice = NiceBlock(16, 2)
    for p in nice.parameters():
        nn.init.normal_(p, std=1.0)
    x = torch.randn(3, 5, 16)
    y = nice(x)
    assert not torch.allclose(y, x)
    torch.testing.assert_close(nice.inverse(y), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nice(nice.inverse(x)), x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("build", [_bert, _xlmr, _llama])
@pytest.mark.parametrize("cls", [SeqBnConfig, SeqBnInvConfig])
def test_mam_init_is_exact_identity(build, cls):
    base = build()
    m = api.apply_adapter(copy.deepcopy(base), cls(reduction_factor=4, init_weights="mam"))
    assert sum(isinstance(x, BottleneckLayer) for x in m.modules()) >= 2  # one per FFN block (+ NICE)
    assert torch.equal(_out(m), _out(base))
    bert = api.apply_adapter(copy.deepcopy(base), cls(reduction_factor=4, init_weights="bert"))
    assert not torch.allclose(_out(bert), _out(base))  # AdapterHub's default init is not the identity


def test_post_ln_formula_by_hand():
    m = api.apply_adapter(_bert(), SeqBnConfig(reduction_factor=4, scaling=0.5))
    _randomize(m)
    layer = m.encoder.layer[0].output
    hidden, x = torch.randn(2, 3, 64), torch.randn(2, 3, 32)
    base = layer.base_layer
    h = base.dense(hidden)
    down, up = layer.bn_down["default"], layer.bn_up["default"]
    want = base.LayerNorm(h + x + 0.5 * up(torch.relu(down(base.LayerNorm(h + x)))))
    torch.testing.assert_close(layer(hidden, x), want)


def _decoder_io(m, i: int = 1) -> dict:
    """Run the model; capture layer i's residual x (post_attention_layernorm's input), the plain FFN
    output h (the wrapped mlp's base) and the decoder layer's output."""
    seen = {}
    layer = m.model.layers[i]
    hooks = [layer.post_attention_layernorm.register_forward_pre_hook(lambda mod, a: seen.__setitem__("x", a[0])),
             layer.mlp.base_layer.register_forward_hook(lambda mod, a, out: seen.__setitem__("h", out)),
             layer.register_forward_hook(lambda mod, a, out: seen.__setitem__(
                 "out", out[0] if isinstance(out, tuple) else out))]
    _out(m)
    for h in hooks:
        h.remove()
    return seen


def test_pre_ln_formula_by_hand():
    """AdapterHub's LLaMA seq_bn: the block's output is x + h + delta(x + h) (the adapter reads x + h)."""
    m = api.apply_adapter(_llama(), SeqBnConfig(reduction_factor=8))
    _randomize(m)
    mlp = m.model.layers[1].mlp
    io_ = _decoder_io(m)
    z = io_["x"] + io_["h"]
    torch.testing.assert_close(io_["out"], z + mlp.bn_up["default"](torch.relu(mlp.bn_down["default"](z))))
    with pytest.raises(RuntimeError, match="post_attention_layernorm"):
        mlp(torch.randn(1, 2, 32))  # the mlp alone has no residual to read


def test_unload_removes_the_residual_hook():
    base = _llama()
    want = _out(base)
    m = api.apply_adapter(base, SeqBnConfig(reduction_factor=8))
    norm = m.model.layers[0].post_attention_layernorm
    assert len(norm._forward_pre_hooks) == 1
    m = api.unload(m)
    assert len(norm._forward_pre_hooks) == 0 and "adaptome_residual" not in norm.__dict__
    torch.testing.assert_close(_out(m), want)


def test_mam_init_draws_down_projection_kaiming_uniform():
    m = api.apply_adapter(_bert(), SeqBnConfig(reduction_factor=4, init_weights="mam"))
    down = m.encoder.layer[0].output.bn_down["default"]
    up = m.encoder.layer[0].output.bn_up["default"]
    bound = 1 / 32 ** 0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 32: U(-1/sqrt(32), 1/sqrt(32))
    assert down.weight.abs().max() <= bound and down.weight.abs().max() > 0.8 * bound
    assert down.weight.std() > 0.5 * bound / 3 ** 0.5  # a uniform draw, not N(0, 0.02)
    assert not down.bias.any() and not up.weight.any() and not up.bias.any()


@pytest.mark.parametrize("mode", ["first", "all"])
def test_stack_runs_the_first_invertible_block_only(mode):
    m = api.apply_adapter(_llama(), SeqBnInvConfig(reduction_factor=4), "lang")
    api.apply_adapter(m, SeqBnInvConfig(reduction_factor=4), "task")
    stack_adapters(m, ["lang", "task"], invertible=mode)
    seen = {}
    m.model.layers[0].register_forward_pre_hook(lambda mod, a, kw: seen.__setitem__("in", kw.get(
        "hidden_states", a[0] if a else None)), with_kwargs=True)
    _out(m)
    emb = m.model.embed_tokens
    want = emb.bn_nice["lang"](emb.base_layer(IDS))
    if mode == "all":
        want = emb.bn_nice["task"](want)
    torch.testing.assert_close(seen["in"], want)


@pytest.mark.parametrize("tie", [False, True])
def test_inverse_runs_before_the_lm_head(tie):
    m = api.apply_adapter(_llama(tie), SeqBnInvConfig(reduction_factor=4, init_weights="mam"))
    nice = m.model.embed_tokens.bn_nice["default"]
    for p in nice.parameters():
        nn.init.normal_(p, std=0.5)
    seen = {}
    m.model.norm.register_forward_hook(lambda mod, a, out: seen.__setitem__("norm", out))
    m.lm_head.base_layer.register_forward_pre_hook(lambda mod, a: seen.__setitem__("head_in", a[0]))
    m.model.layers[0].register_forward_pre_hook(lambda mod, a, kw: seen.__setitem__("layer0_in", kw.get(
        "hidden_states", a[0] if a else None)), with_kwargs=True)
    _out(m)
    emb = m.model.embed_tokens.base_layer(IDS)
    torch.testing.assert_close(seen["layer0_in"], nice(emb))
    torch.testing.assert_close(seen["head_in"], nice.inverse(seen["norm"]))
    if tie:
        assert m.lm_head.weight is m.model.embed_tokens.weight  # the tie survives the wrappers


def test_stack_trains_only_the_top_and_runs_in_sequence(tmp_path):
    m = api.apply_adapter(_llama(), SeqBnConfig(reduction_factor=4), "lang")
    api.apply_adapter(m, SeqBnConfig(reduction_factor=4), "task")
    _randomize(m)
    stack_adapters(m, ["lang", "task"])
    def trainable():
        return sorted({n.split(".bn_")[1].split(".")[1] for n, p in m.named_parameters() if p.requires_grad})

    assert trainable() == ["task"]
    api.set_adapter(m, ["lang", "task"])  # re-activating keeps the language adapter frozen
    assert trainable() == ["task"]
    layer = m.model.layers[1].mlp
    io_ = _decoder_io(m)
    r0 = io_["x"] + io_["h"]
    r1 = r0 + layer._delta("lang", r0)
    torch.testing.assert_close(io_["out"], r1 + layer._delta("task", r1))
    lang_before = {n: p.detach().clone() for n, p in m.named_parameters() if ".lang." in n}
    m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    m(input_ids=IDS, labels=IDS).loss.backward()
    opt.step()
    for n, p in m.named_parameters():
        if ".lang." in n:
            assert torch.equal(p, lang_before[n]), n
    # a saved task adapter reloads under the same language adapter
    io.save_adapter(m, tmp_path / "task", adapter_name="task")
    io.save_adapter(m, tmp_path / "lang", adapter_name="lang")
    m.eval()
    want = _out(m)
    m2 = io.load_adapter(_llama(), tmp_path / "lang", adapter_name="lang")
    m2 = io.load_adapter(m2, tmp_path / "task", adapter_name="task")
    stack_adapters(m2, ["lang", "task"])
    torch.testing.assert_close(_out(m2), want)


def test_average_is_mean_of_deltas():
    m = api.apply_adapter(_bert(), SeqBnConfig(reduction_factor=4), "a")
    api.apply_adapter(m, SeqBnConfig(reduction_factor=4), "b")
    _randomize(m)
    average_adapters(m, ["a", "b"], weights=[0.25, 0.75])
    layer = m.encoder.layer[1].output
    hidden, x = torch.randn(1, 3, 64), torch.randn(1, 3, 32)
    base = layer.base_layer
    r = base.dense(hidden) + x
    z = base.LayerNorm(r)
    want = base.LayerNorm(r + 0.25 * layer._delta("a", z) + 0.75 * layer._delta("b", z))
    torch.testing.assert_close(layer(hidden, x), want)
    assert not any(p.requires_grad for n, p in m.named_parameters())
    with pytest.raises(ValueError, match="weights"):
        average_adapters(m, ["a", "b"], weights=[1.0])


def test_merge_is_refused():
    m = api.apply_adapter(_llama(), SeqBnConfig())
    with pytest.raises(TypeError, match="cannot be merged"):
        api.merge(m)
    assert not SeqBnConfig.supports_merge


def test_trainable_count_formula_on_real_blocks():
    base = _bert()
    cfg = SeqBnInvConfig(reduction_factor=8, inv_reduction_factor=2)
    m = api.apply_adapter(copy.deepcopy(base), cfg)
    d, mid = 32, 4
    nice = 2 * (16 * 8 + 8 + 8 * 16 + 16)
    assert api.trainable_report(m)["trainable"] == 2 * (2 * d * mid + mid + d) + nice == cfg.count_expected(base)
