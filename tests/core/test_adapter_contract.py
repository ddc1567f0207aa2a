"""The adapter contract, run for every registered method and every config of its ``examples()``.

Parametrized over ``ADAPTERS.names()`` at collection time, so a method registered later is tested
with no edit here. Each case (id ``<method>-<i>``, the i-th example; ``<method>-0+mts``, the first example with
``modules_to_save`` set to the embeddings (and LM head)) runs on two tiny models built
from config: a LLaMA causal LM (logits compared) and a BERT encoder (last hidden state compared).
Only the public functions of ``adaptome.core.adapters.api`` / ``.io`` are used.

Checks: (a) identity at init where the config says so; (b) merge == unmerged within ``cls.atol``,
unmerge restores; (c) ``unload`` restores the base exactly and removes every adapter module;
(d) save / load into a fresh copy reproduces outputs; (e) one optimizer step changes only the
adapter's parameters (and modules_to_save), base weights stay bit-identical; (f) the trainable
count equals the method's formula; (g) several named adapters on one model; (h) LLaMA only:
``merge_and_unload`` + ``save_pretrained`` loads with ``AutoModelForCausalLM`` to the same logits.

The members of the contract a method may override (``architectures``, ``resolve_paths``,
``count_expected``, ...) are declared, one comment each, on ``AdapterConfig`` in
``core/adapters/base.py``. ``resolve_paths`` raising ``TargetError`` skips the architecture, as an
example whose ``target_modules`` match nothing does; a method whose parameters do not sit one per
``nn.Linear`` gives ``count_expected``.

An example whose ``target_modules`` match nothing in an architecture is skipped there (with the
``TargetError`` as the reason); the bad-input tests check that error itself.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import tiny_models as tiny
import torch
from torch import nn

from adaptome.core.adapters import ADAPTERS, api, io
from adaptome.core.adapters.targets import TargetError, model_type, resolve_targets

SEQ = 6


#: the ``+mts`` variant of each method's first example also trains these modules fully
MODULES_TO_SAVE = {"llama": ["embed_tokens", "lm_head"], "bert": ["word_embeddings"]}


def _cases() -> list:
    out = []
    for name in ADAPTERS.names():
        cls = ADAPTERS.get(name)
        for i, _ in enumerate(cls.examples()):
            out.append(pytest.param(name, i, id=f"{name}-{i}"))
        if "modules_to_save" in {f.name for f in dataclasses.fields(cls)}:
            out.append(pytest.param(name, "0+mts", id=f"{name}-0+mts"))
    return out


CASES = _cases()
ARCHS = ["llama", "bert"]


def _build(arch: str) -> nn.Module:
    if arch == "llama":
        return tiny.llama()
    return tiny.bert(head=None, vocab_size=64, max_position_embeddings=32)


@pytest.fixture(scope="module")
def bases() -> dict[str, nn.Module]:
    return {arch: _build(arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"llama": torch.randint(0, 32, (2, SEQ), generator=g),
            "bert": torch.randint(0, 64, (2, SEQ), generator=g)}


def _out(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        res = model(input_ids=ids)
    return res.logits if hasattr(res, "logits") and res.logits is not None else res.last_hidden_state


def _example(name: str, i: int | str, arch: str):
    cls = ADAPTERS.get(name)
    if i == "0+mts":
        return cls, dataclasses.replace(cls.examples()[0], modules_to_save=MODULES_TO_SAVE[arch])
    return cls, cls.examples()[i]


def _setup(bases, arch: str, name: str, i: int | str):
    """(config class, example config, a fresh copy of the base model); skips what does not apply."""
    cls, cfg = _example(name, i, arch)
    archs = cls.architectures
    if archs is not None and arch not in archs:
        pytest.skip(f"{name} supports architectures {sorted(archs)}, not {arch}")
    base = bases[arch]
    try:
        _target_paths(cfg, base)
    except TargetError as e:
        pytest.skip(f"example does not apply to {arch}: {e}")
    return cls, cfg, copy.deepcopy(base)


def _target_paths(cfg, base: nn.Module) -> list[str]:
    """The modules ``cfg`` wraps in ``base``: its ``resolve_paths`` hook, else ``resolve_targets``."""
    paths = cfg.resolve_paths(base)
    return list(paths) if paths is not None else resolve_targets(base, cfg.target_modules, cfg.exclude_modules)


def _apply(model: nn.Module, cfg, adapter_name: str = "default") -> nn.Module:
    torch.manual_seed(1234)
    return api.apply_adapter(model, cfg, adapter_name)


def _nonidentity(cfg) -> bool:
    return not cfg.identity_at_init()


def _perturb_trainable(model: nn.Module, scale: float = 0.05) -> None:
    """Give an identity-at-init adapter a non-zero update (deterministic noise on its trainables)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * scale)


def _adapted(bases, inputs, arch, name, i, adapter_name="default"):
    """A model holding the example adapter with a non-trivial update, and its outputs."""
    cls, cfg, model = _setup(bases, arch, name, i)
    model = _apply(model, cfg, adapter_name)
    if cfg.identity_at_init():
        _perturb_trainable(model)
    return cls, cfg, model


def _base_key(key: str) -> str:
    """The base model's name for a parameter of the adapted model (peft prefix and the
    ``base_layer`` / ``original_module`` wrappers removed); adapter weights map to no base key."""
    key = key.removeprefix("base_model.model.")
    return ".".join(p for p in key.split(".") if p not in ("base_layer", "original_module"))


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name,i", CASES)
def test_identity_at_init(bases, inputs, arch, name, i):
    cls, ex, _ = _setup(bases, arch, name, i)
    default = cls()
    if "target_modules" in {f.name for f in dataclasses.fields(default)}:
        default = dataclasses.replace(default, target_modules=ex.target_modules,
                                      exclude_modules=ex.exclude_modules)
    cfgs = [c for c in (default, ex) if c.identity_at_init()]
    if not cfgs:
        pytest.skip(f"{name}: neither the default config nor example {i} is the identity at init")
    base_out = _out(bases[arch], inputs[arch])
    for cfg in cfgs:
        model = _apply(copy.deepcopy(bases[arch]), cfg)
        torch.testing.assert_close(_out(model, inputs[arch]), base_out, atol=cls.atol, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name,i", CASES)
def test_merge_equals_unmerged_and_unmerge_restores(bases, inputs, arch, name, i):
    cls, cfg, model = _adapted(bases, inputs, arch, name, i)
    if not cls.supports_merge:
        pytest.skip(f"{name} does not support merging")
    ids = inputs[arch]
    unmerged = _out(model, ids)
    assert not torch.allclose(unmerged, _out(bases[arch], ids), atol=cls.atol, rtol=0), \
        "the adapter changes nothing, so merging is not tested"
    api.merge(model)
    torch.testing.assert_close(_out(model, ids), unmerged, atol=cls.atol, rtol=0)
    api.unmerge(model)
    torch.testing.assert_close(_out(model, ids), unmerged, atol=cls.atol, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name,i", CASES)
def test_unload_restores_base_exactly(bases, inputs, arch, name, i):
    cls, cfg, model = _adapted(bases, inputs, arch, name, i)
    base = bases[arch]
    plain = api.unload(model)
    assert [n for n, _ in plain.named_modules()] == [n for n, _ in base.named_modules()]
    assert type(plain) is type(base)
    base_sd, plain_sd = base.state_dict(), plain.state_dict()
    assert list(plain_sd) == list(base_sd)
    for k, v in base_sd.items():
        assert torch.equal(plain_sd[k], v), k
    assert torch.equal(_out(plain, inputs[arch]), _out(base, inputs[arch]))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name,i", CASES)
def test_save_load_reproduces_outputs(bases, inputs, arch, name, i, tmp_path):
    cls, cfg, model = _adapted(bases, inputs, arch, name, i)
    ids = inputs[arch]
    want = _out(model, ids)
    path = io.save_adapter(model, tmp_path / "adapter")
    loaded = io.load_adapter(copy.deepcopy(bases[arch]), path)
    torch.testing.assert_close(_out(loaded.eval(), ids), want, atol=1e-6, rtol=0)
    saved = api.adapter_state_dict(model)
    reloaded = api.adapter_state_dict(loaded)
    assert sorted(saved) == sorted(reloaded)
    for k in saved:
        assert torch.equal(saved[k], reloaded[k]), k


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name,i", CASES)
def test_one_step_changes_only_adapter_parameters(bases, inputs, arch, name, i):
    cls, cfg, model = _adapted(bases, inputs, arch, name, i)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    base_keys = {k for k, _ in bases[arch].named_parameters()}
    foreign = sorted(n for n in trainable if _base_key(n) in base_keys)
    assert not foreign, f"base weights left trainable: {foreign[:5]}"
    # peft saves a modules_to_save copy under the original module's name; those keys are allowed
    mts = [p for p, _ in bases[arch].named_modules()
           if any(p == t or p.endswith("." + t) for t in (getattr(cfg, "modules_to_save", None) or []))]
    in_state = sorted(k for k in api.adapter_state_dict(model)
                      if _base_key(k) in base_keys and not any(_base_key(k).startswith(m + ".") for m in mts))
    assert not in_state, f"the adapter state dict holds base weights: {in_state[:5]}"
    assert {_base_key(n) for n, _ in model.named_parameters() if not _base_key(n).count("modules_to_save")} \
        >= base_keys, "some base weights are no longer in the model"
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = model(input_ids=inputs[arch])
    # every float output (BERT's pooler output too, so a pooler adapter gets a gradient)
    sum(v.float().pow(2).mean() for v in out.values() if torch.is_tensor(v) and v.is_floating_point()).backward()
    missing_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert not missing_grad, f"trainable parameters outside the graph: {missing_grad[:5]}"
    opt.step()
    after = model.state_dict()
    params = dict(model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "the optimizer step changed nothing"
    frozen_changed = sorted(k for k in changed if not (k in params and params[k].requires_grad))
    assert not frozen_changed, f"frozen weights changed: {frozen_changed[:5]}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name,i", CASES)
def test_trainable_count_matches_formula(bases, inputs, arch, name, i):
    cls, cfg, model = _setup(bases, arch, name, i)
    base = bases[arch]
    expected = cfg.count_expected(base)
    if expected is None:
        expected = 0
        for path in _target_paths(cfg, base):
            lin = base.get_submodule(path)
            assert isinstance(lin, nn.Linear), \
                f"{name} wraps {path} ({type(lin).__name__}), not a linear: give the config a count_expected(model)"
            expected += cfg.expected_params(lin.in_features, lin.out_features, lin.bias is not None)
        for target in cfg.modules_to_save or []:
            for path, mod in base.named_modules():
                if path == target or path.endswith("." + target):
                    expected += sum(p.numel() for p in mod.parameters())
    model = _apply(model, cfg)
    report = api.trainable_report(model)
    assert report["trainable"] == expected
    assert report["percent"] == pytest.approx(100.0 * expected / report["total"])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name,i", CASES)
def test_several_named_adapters(bases, inputs, arch, name, i):
    cls, cfg, model = _adapted(bases, inputs, arch, name, i, adapter_name="one")
    ids = inputs[arch]
    base_out = _out(bases[arch], ids)
    out_a = _out(model, ids)
    torch.manual_seed(99)
    model = api.apply_adapter(model, copy.deepcopy(cfg), "two")
    api.set_adapter(model, "two")
    # other weights for "two" (only its parameters train now), also for methods whose init is
    # fully determined by the config (seeded bases)
    _perturb_trainable(model, scale=0.05)
    assert sorted(api.adapter_names(model)) == ["one", "two"]
    out_b = _out(model, ids)
    assert not torch.allclose(out_b, out_a, atol=cls.atol, rtol=0), "adapters one and two give the same outputs"
    assert not torch.allclose(out_b, base_out, atol=cls.atol, rtol=0)
    api.set_adapter(model, "one")
    torch.testing.assert_close(_out(model, ids), out_a, atol=1e-6, rtol=0)
    with api.disable_adapters(model):
        torch.testing.assert_close(_out(model, ids), base_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(_out(model, ids), out_a, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,i", CASES)
def test_merge_and_unload_saves_standalone_checkpoint(bases, inputs, name, i, tmp_path):
    from transformers import AutoModelForCausalLM

    cls, cfg, model = _adapted(bases, inputs, "llama", name, i)
    if not cls.supports_merge:
        pytest.skip(f"{name} does not support merging")
    ids = inputs["llama"]
    want = _out(model, ids)
    via_io = io.save_merged(model, tmp_path / "via_io")  # leaves ``model`` as it was
    merged = api.merge_and_unload(model)
    assert not any(hasattr(m, "base_layer") for m in merged.modules())
    merged.save_pretrained(tmp_path / "merged")
    for folder in (tmp_path / "merged", via_io):
        reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
        assert model_type(reloaded) == "llama"
        torch.testing.assert_close(_out(reloaded, ids), want, atol=cls.atol, rtol=0)
