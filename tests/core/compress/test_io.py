"""Every registered method on every preset architecture: the compressed model saves, loads back
with ``load_compressed`` and gives the same outputs; a folder that is not one is a clear error."""

from __future__ import annotations

import pytest
import torch

from adaptome.core.adapters.targets import resolve_targets
from adaptome.core.compress import COMPRESSORS
from adaptome.core.compress.io import load_compressed, write_compressed
from adaptome.core.compress.layers import CompressError, compressed_layers
from adaptome.core.config import load_config, to_dict

FAST = {"lqlora": ["bits=[2,3,4]", "bits0=[8]", "block0=[32]", "block1=[64]", "max_iters=3", "rank=4"],
        "dsformer": ["init_iters=1"], "welore": [], "lrt": []}
BUDGET = {"lqlora": 3.0, "dsformer": 0.6, "welore": 0.6, "lrt": 0.5}


def _inputs(arch: str) -> dict:
    g = torch.Generator().manual_seed(5)
    if arch == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    return {"input_ids": torch.randint(3, 40, (2, 10), generator=g)}


def _out(model, arch, x):
    o = model(**x)
    return o.logits


def _case(method, arch, builders, tmp_path):
    model = builders[arch]()
    cls = COMPRESSORS.get(method)
    cfg = load_config(cls.Config, None, FAST[method] + [f"{cls.budget_field}={BUDGET[method]}"])
    cls.compress(model, resolve_targets(model, "all-linear"), cfg)
    model.eval()
    x = _inputs(arch)
    with torch.no_grad():
        ref = _out(model, arch, x)
    write_compressed(model, tmp_path, method, to_dict(cfg))
    loaded = load_compressed(tmp_path)
    with torch.no_grad():
        got = _out(loaded, arch, x)
    assert len(dict(compressed_layers(loaded))) == len(dict(compressed_layers(model))) > 0
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    assert not (tmp_path / "model.safetensors").exists()  # from_pretrained cannot load it silently


@pytest.mark.parametrize("method", ["welore", "lqlora", "dsformer", "lrt"])
@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_save_load_same_outputs(method, arch, builders, tmp_path):
    _case(method, arch, builders, tmp_path)


@pytest.mark.parametrize("arch", ["phi3", "vit"])
def test_other_preset_architectures(arch, builders, tmp_path):
    _case("lrt", arch, builders, tmp_path)


def test_registry_lists_all_methods():
    assert COMPRESSORS.names() == ["dsformer", "lqlora", "lrt", "welore"]


def test_not_a_compressed_folder(tmp_path):
    with pytest.raises(CompressError, match="compression.json"):
        load_compressed(tmp_path)
