"""``adaptome adapters export --to peft-lora``: every exportable registered method, on a tiny LLaMA
and a tiny BERT, through the CLI.

Parametrised over ``ADAPTERS.names()`` at collection time, so a new method is covered with no edit:
a method is exportable when its config has no ``no_lora_form`` reason (native layers then implement
``lora_factors``). For each example config (and the first with ``modules_to_save``): the adapter gets
a non-zero update, is saved by adaptome, exported by the CLI, loaded with plain
``peft.PeftModel.from_pretrained`` on a fresh base read from disk, and must give the adaptome model's
outputs (within the method's ``atol``); ``merge_and_unload`` of the peft model must equal adaptome's
merged checkpoint (``io.save_merged``) weight by weight. Method-specific cases: DyLoRA at every rank
k < r, SoRA with zero gates (ranks dropped, a layer left out), LaMDA++ per-layer ranks, NOLA's size.
Refusals and bad input give one ``error:`` line, exit 2, and write nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re

import peft
import pytest
import tiny_models as tiny
import torch
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from adaptome.core import cli
from adaptome.core.adapters import ADAPTERS, api, io
from adaptome.core.adapters.base import AdapterLayer
from adaptome.core.adapters.export import export_model, refusal
from adaptome.core.adapters.targets import TargetError, resolve_targets

runner = CliRunner()
ARCHS = ["llama", "bert"]
MODULES_TO_SAVE = {"llama": ["embed_tokens", "lm_head"], "bert": ["word_embeddings"]}


def _cases(exportable: bool) -> list:
    out = []
    for name in ADAPTERS.names():
        cls = ADAPTERS.get(name)
        if (refusal(cls) is None) != exportable:
            continue
        out += [pytest.param(name, i, id=f"{name}-{i}") for i in range(len(cls.examples()))]
        out.append(pytest.param(name, "0+mts", id=f"{name}-0+mts"))
    return out


def _build(arch: str) -> nn.Module:
    if arch == "llama":
        return tiny.llama()
    return tiny.bert(head=None, vocab_size=64, max_position_embeddings=32)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict:
    """{arch: (base model, folder it is saved in)}."""
    out = {}
    for arch in ARCHS:
        model = _build(arch)
        path = tmp_path_factory.mktemp(f"base-{arch}")
        model.save_pretrained(path)
        out[arch] = (model, path)
    return out


def _ids(arch: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 32 if arch == "llama" else 64, (2, 6), generator=g)


def _out(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        res = model(input_ids=ids)
    return res.logits if getattr(res, "logits", None) is not None else res.last_hidden_state


def _fresh(bases, arch: str) -> nn.Module:
    model, path = bases[arch]
    return type(model).from_pretrained(path).eval()


def _adapted(bases, arch: str, cfg) -> nn.Module:
    """The base with adapter ``cfg`` holding a non-zero update (deterministic noise on its trainables)."""
    model = copy.deepcopy(bases[arch][0])
    torch.manual_seed(1234)
    model = api.apply_adapter(model, cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 0.05)
    return model.eval()


def _example(bases, arch: str, name: str, i):
    cls = ADAPTERS.get(name)
    cfg = cls.examples()[0 if i == "0+mts" else i]
    if i == "0+mts":
        cfg = dataclasses.replace(cfg, modules_to_save=MODULES_TO_SAVE[arch])
    try:
        resolve_targets(bases[arch][0], cfg.target_modules, cfg.exclude_modules)
    except TargetError as e:
        pytest.skip(f"example does not apply to {arch}: {e}")
    return cls, cfg


def _export(*args: str):
    return runner.invoke(cli.app, ["adapters", "export", *map(str, args)])


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name,i", _cases(exportable=True))
def test_export_loads_in_plain_peft_with_same_outputs_and_merge(bases, arch, name, i, tmp_path):
    cls, cfg = _example(bases, arch, name, i)
    model = _adapted(bases, arch, cfg)
    ids = _ids(arch)
    want = _out(model, ids)
    assert not torch.allclose(want, _out(bases[arch][0], ids), atol=cls.atol, rtol=0), "the adapter changes nothing"
    io.save_adapter(model, tmp_path / "native")
    res = _export("--to", "peft-lora", tmp_path / "native", tmp_path / "peft", "--base", bases[arch][1])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["peft_type"] == "LORA"

    loaded = peft.PeftModel.from_pretrained(_fresh(bases, arch), str(tmp_path / "peft")).eval()
    torch.testing.assert_close(_out(loaded, ids), want, atol=cls.atol, rtol=0)

    merged_peft = loaded.merge_and_unload().state_dict()
    merged_ours = type(bases[arch][0]).from_pretrained(io.save_merged(model, tmp_path / "merged")).state_dict()
    assert sorted(merged_peft) == sorted(merged_ours)
    for k, v in merged_ours.items():
        torch.testing.assert_close(merged_peft[k], v, atol=cls.atol, rtol=0, msg=k)


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_every_method_declares_its_lora_form_or_why_not(name):
    """A new method must say how its update factors (``lora_factors``) or why it does not."""
    cls = ADAPTERS.get(name)
    if cls.backend == "native":
        declares = cls.layer_cls.lora_factors is not AdapterLayer.lora_factors
        assert declares != (cls.no_lora_form is not None), \
            f"{name}: implement {cls.layer_cls.__name__}.lora_factors or set no_lora_form (exactly one)"
    assert (refusal(cls) is None) == (cls.no_lora_form is None)


@pytest.mark.parametrize("name,i", [c for c in _cases(exportable=False) if c.values[1] == 0])
def test_refused_methods_get_one_line_and_nothing_written(bases, name, i, tmp_path):
    cls = ADAPTERS.get(name)
    cfg = cls.examples()[0]
    model = _adapted(bases, "llama", cfg)
    io.save_adapter(model, tmp_path / "native")
    res = _export(tmp_path / "native", tmp_path / "peft", "--base", bases["llama"][1])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cannot be exported as a peft LoRA" in lines[0]
    assert cls.no_lora_form in lines[0]
    assert ("merge it into the base weights" in lines[0]) == cls.supports_merge
    assert not (tmp_path / "peft").exists()


def _gate_zeroed_sora(bases):
    cfg = ADAPTERS.get("sora")(r=4, lora_alpha=8, init_lora_weights="random_b", target_modules="attention")
    model = _adapted(bases, "llama", cfg)
    from adaptome.core.adapters.sora import sora_layers

    layers = sora_layers(model)
    with torch.no_grad():
        layers[0][1].sora_gate["default"].zero_()  # this layer is left out
        for j, (_, layer) in enumerate(layers[1:]):
            layer.sora_gate["default"][: 1 + j % 3] = 0.0  # ranks 3, 2, 1, 3, ...
    kept = {p: int((m.sora_gate["default"] != 0).sum()) for p, m in layers}
    return model, kept


def test_sora_zero_gates_dropped_and_rank_per_layer(bases, tmp_path):
    model, kept = _gate_zeroed_sora(bases)
    ids = _ids("llama")
    want = _out(model, ids)
    io.save_adapter(model, tmp_path / "native")
    res = _export(tmp_path / "native", tmp_path / "peft", "--base", bases["llama"][1])
    assert res.exit_code == 0, res.output
    assert "1 layers dropped (rank 0)" in res.output
    state = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    for path, k in kept.items():
        key = f"base_model.model.{path}.lora_A.weight"
        assert (state[key].shape[0] if key in state else 0) == k, path
    loaded = peft.PeftModel.from_pretrained(_fresh(bases, "llama"), str(tmp_path / "peft")).eval()
    torch.testing.assert_close(_out(loaded, ids), want, atol=1e-5, rtol=0)


def test_dylora_exports_every_rank_k(bases, tmp_path):
    from adaptome.core.adapters.dylora import set_rank

    cfg = ADAPTERS.get("dylora")(r=4, lora_alpha=8, init_lora_weights="random_b", target_modules="attention")
    model = _adapted(bases, "llama", cfg)
    io.save_adapter(model, tmp_path / "native")
    ids = _ids("llama")
    outs = set()
    for k in (1, 2, 3):
        set_rank(model, k)
        want = _out(model, ids)
        res = _export(tmp_path / "native", tmp_path / f"r{k}", "--base", bases["llama"][1], "--rank", k)
        assert res.exit_code == 0, res.output
        pcfg = json.loads((tmp_path / f"r{k}" / "adapter_config.json").read_text())
        # peft's scale lora_alpha / r equals DyLoRA's alpha / k
        assert (pcfg["r"], pcfg["lora_alpha"], pcfg["rank_pattern"]) == (k, 8.0, {})
        loaded = peft.PeftModel.from_pretrained(_fresh(bases, "llama"), str(tmp_path / f"r{k}")).eval()
        got = _out(loaded, ids)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        outs.add(round(float(got.sum()), 4))
    assert len(outs) == 3, "the ranks give the same outputs, so the rank was not applied"
    res = _export(tmp_path / "native", tmp_path / "r9", "--base", bases["llama"][1], "--rank", 9)
    last = res.output.strip().splitlines()[-1]  # after the base model's loading progress
    assert res.exit_code == 2 and last.startswith("error: dylora: rank must be in 1..4"), res.output
    assert not (tmp_path / "r9").exists()


def test_lamda_pp_per_layer_ranks_go_to_rank_pattern(bases, tmp_path):
    cfg = ADAPTERS.get("lamda")(r=4, rank_pattern={"q_proj": 2, "layers.1.self_attn.v_proj": 3}, random_core=True,
                                target_modules="attention")
    model = _adapted(bases, "llama", cfg)
    ids = _ids("llama")
    report = export_model(model, tmp_path / "peft", base_model_name_or_path=str(bases["llama"][1]))
    assert report.ranks["model.layers.0.self_attn.q_proj"] == 2
    assert report.ranks["model.layers.1.self_attn.v_proj"] == 3
    assert report.ranks["model.layers.0.self_attn.k_proj"] == 4
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["rank_pattern"]
    loaded = peft.PeftModel.from_pretrained(_fresh(bases, "llama"), str(tmp_path / "peft")).eval()
    torch.testing.assert_close(_out(loaded, ids), _out(model, ids), atol=1e-5, rtol=0)


def test_nola_size_report_says_how_much_larger(bases, tmp_path):
    cfg = ADAPTERS.get("nola").examples()[0]
    model = _adapted(bases, "llama", cfg)
    io.save_adapter(model, tmp_path / "native")
    res = _export(tmp_path / "native", tmp_path / "peft", "--base", bases["llama"][1])
    assert res.exit_code == 0, res.output
    exported = (tmp_path / "peft" / "adapter_model.safetensors").stat().st_size
    native = (tmp_path / "native" / "adapter_model.safetensors").stat().st_size
    assert exported > native  # r (in + out) floats per layer instead of a seed and 24 coefficients
    line = next(ln for ln in res.output.splitlines() if ln.startswith("size:"))
    assert f"({exported:,} bytes)" in line and f"({native:,} bytes)" in line
    assert f"{exported / native:.2f}x the native checkpoint, larger by" in line


def test_bad_input_one_line_and_nothing_destroyed(bases, tmp_path):
    cfg = ADAPTERS.get("lora_native").examples()[0]
    model = _adapted(bases, "llama", cfg)
    io.save_adapter(model, tmp_path / "native")
    base = bases["llama"][1]
    cases = [
        (["--to", "gguf", tmp_path / "native", tmp_path / "x", "--base", base], "the only export format"),
        ([tmp_path / "native", tmp_path / "x"], "does not record the base model; pass it (--base"),
        ([tmp_path / "native", tmp_path / "x", "--base", base, "--rank", 2], "--rank applies to methods trained"),
        ([tmp_path / "missing", tmp_path / "x", "--base", base], "adapter folder not found"),
    ]
    for args, msg in cases:
        res = _export(*args)
        assert res.exit_code == 2, (args, res.output)
        assert res.output.startswith("error: ") and msg in res.output, res.output  # before loading the base
        assert not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    res = _export(tmp_path / "native", tmp_path / "taken", "--base", base)
    assert res.exit_code == 2 and "already exists" in res.output
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    res = _export(tmp_path / "native", tmp_path / "taken", "--base", base, "--overwrite")
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "taken" / "keep.txt").exists()
    assert re.search(r"lora_native as a peft LoRA, 8 layers, rank 4", res.output)
