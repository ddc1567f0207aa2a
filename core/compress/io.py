"""Saving and loading a compressed model: a transformers config folder plus the method's own layers.

A folder written by ``write_compressed`` holds:
* ``config.json`` (and the tokenizer files when one is given): the ordinary transformers config;
* ``remainder.safetensors``: every weight that was not compressed (embeddings, norms, heads, and
  the target layers a method left dense), one copy of each shared (tied) tensor;
* ``compressed_layers.safetensors``: each compressed layer's stored tensors under ``<path>.<name>``
  (factors, NF codes and scales, sparse values and indices: what ``to_tensors`` returns);
* ``compression.json``: the method, its resolved config, the architecture class, and per layer its
  kind and meta (shapes, options).
The dense weights of compressed layers are deliberately absent, and the weight file is not named
``model.safetensors``, so ``from_pretrained`` cannot silently load random weights in their place:
``load_compressed(path)`` rebuilds the architecture from ``config.json``, swaps in the layers and
loads the rest strictly (a missing or unexpected weight is an error).

Not covered: models whose class is not exported by ``transformers`` (timm models), sharded
files, and building the architecture without first initialising it (``cls(config)`` runs the
normal init, then the weights are overwritten).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaptome.core.compress.layers import LAYER_KINDS, CompressError, compressed_layers, replace_module

FORMAT = "adaptome-compressed/1"
MANIFEST = "compression.json"


def write_compressed(model: nn.Module, folder: str | os.PathLike, method: str, config: dict[str, Any],
                     tokenizer: Any = None) -> None:
    """Write ``model`` (already compressed in place) into the existing ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    layers = dict(compressed_layers(model))
    model.config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    packed: dict[str, torch.Tensor] = {}
    for path, layer in layers.items():
        for name, t in layer.to_tensors().items():
            packed[f"{path}.{name}"] = t.detach().cpu().contiguous()
    rest: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, t in model.state_dict().items():
        if any(key.startswith(p + ".") for p in layers):
            continue
        ident = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and ident in seen:
            tied[key] = seen[ident]
            continue
        seen[ident] = key
        rest[key] = t.detach().cpu().contiguous()
    save_file(packed, str(folder / "compressed_layers.safetensors"))
    save_file(rest, str(folder / "remainder.safetensors"))
    manifest = {"format": FORMAT, "method": method, "config": config,
                "architecture": type(model).__name__,
                "layers": {p: {"kind": layer.kind, "meta": layer.meta()} for p, layer in layers.items()},
                "tied": tied}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    f = path / MANIFEST
    if not f.is_file():
        raise CompressError(f"{path}: not a compressed model folder (no {MANIFEST})")
    try:
        manifest = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CompressError(f"{f}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise CompressError(f"{f}: unknown format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


def load_compressed(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model written by ``write_compressed``; its outputs equal the saved model's."""
    import transformers
    from safetensors.torch import load_file

    from adaptome.core.compress import COMPRESSORS

    path = Path(path)
    manifest = read_manifest(path)
    COMPRESSORS.names()  # imports the method modules, which register their layer kinds
    config = transformers.AutoConfig.from_pretrained(path)
    cls = getattr(transformers, manifest["architecture"], None)
    if cls is None:
        raise CompressError(f"{path / MANIFEST}: transformers has no class {manifest['architecture']!r}")
    model = cls(config)
    packed = load_file(str(path / "compressed_layers.safetensors"))
    for lpath, spec in manifest["layers"].items():
        prefix = lpath + "."
        tensors = {k[len(prefix):]: v for k, v in packed.items() if k.startswith(prefix)}
        layer = LAYER_KINDS.get(spec["kind"]).from_tensors(spec["meta"], tensors)
        replace_module(model, lpath, layer)
    rest = load_file(str(path / "remainder.safetensors"))
    result = model.load_state_dict(rest, strict=False)
    layer_prefixes = tuple(p + "." for p in manifest["layers"])
    missing = [k for k in result.missing_keys if not k.startswith(layer_prefixes) and k not in manifest["tied"]]
    if missing or result.unexpected_keys:
        raise CompressError(f"{path / 'remainder.safetensors'}: does not match {manifest['architecture']} "
                            f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})")
    with torch.no_grad():
        for key, src in manifest["tied"].items():  # keep ties that the architecture did not restore itself
            dst = model.get_parameter(key) if key in dict(model.named_parameters()) else None
            if dst is not None and dst.data_ptr() != model.state_dict()[src].data_ptr():
                dst.copy_(model.state_dict()[src])
    # the model is built in float32: a model saved in one other floating dtype (bfloat16) is cast back to it, so its
    # compressed layers and the rest agree (a forward pass mixing them fails) and its outputs equal the saved one's
    floats = {t.dtype for t in [*packed.values(), *rest.values()] if t.is_floating_point()}
    if len(floats) == 1:
        model = model.to(floats.pop())
    return model.eval()
