"""Save and load adapters as safetensors + JSON, and merged standalone checkpoints.

An adapter folder holds ``adapter_model.safetensors`` (adapter tensors only, keys without the
adapter name), ``adapter_config.json`` and ``adaptome.json`` (method name, backend, the method's
config, the base model's class, a signature of the wrapped base weights and a digest of the whole base
(``base_check``; ``adapters merge`` compares the digests), the SHA-256 of the weights file). For peft-backed methods the
first two are written by peft itself, so ``peft.PeftModel.from_pretrained`` loads the folder.
Writes are atomic (``core.atomic.atomic_dir``): an existing folder is replaced only with
``overwrite=True`` and is kept until the new one is complete. Loading checks the weights' checksum
and reads them before the model is touched, so a truncated or altered file is an error naming it
and leaves the caller's model as it was; so does a model whose wrapped layers differ from the base the
adapter was trained on (another shape, other weights). Nothing is pickled.

Not covered: sharded adapter files (one safetensors file per adapter), pushing to a hub.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from adaptome.core.adapters import inject
from adaptome.core.adapters.api import (
    adapter_config_of,
    adapter_names,
    adapter_state_dict,
    apply_adapter,
    is_peft_model,
    make_config,
    merge_and_unload,
)
from adaptome.core.adapters.base_check import (
    base_mismatch,
    base_signature,
    base_weights_digest,
    base_weights_sample,
)
from adaptome.core.atomic import atomic_dir
from adaptome.core.errors import AdaptomeError

WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
META = "adaptome.json"


class CheckpointError(AdaptomeError, ValueError):
    """A checkpoint folder is missing, incomplete or does not fit the model."""


def weights_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _base_model(model: nn.Module) -> nn.Module:
    return model.base_model.model if is_peft_model(model) else model


def save_adapter(model: nn.Module, out_dir: str | os.PathLike, adapter_name: str = "default",
                 overwrite: bool = False, extra: dict | None = None) -> Path:
    """Write adapter ``adapter_name`` of ``model`` to ``out_dir`` atomically."""
    cfg = adapter_config_of(model, adapter_name)
    with atomic_dir(Path(out_dir), overwrite) as tmp:
        if cfg.backend == "peft":
            model.save_pretrained(tmp, selected_adapters=[adapter_name])
            if adapter_name != "default":  # peft puts non-default adapters in a sub-folder
                sub = tmp / adapter_name
                for f in sub.iterdir():
                    os.replace(f, tmp / f.name)
                sub.rmdir()
        else:
            state = {k: v.contiguous() for k, v in adapter_state_dict(model, adapter_name).items()}
            save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "method": cfg.method})
            (tmp / PEFT_CONFIG).write_text(json.dumps(
                {"adaptome_method": cfg.method, **cfg.to_dict()}, indent=2), encoding="utf-8")
        meta = {
            "format": "adaptome-adapter",
            "version": 1,
            "method": cfg.method,
            "backend": cfg.backend,
            "adapter_name": adapter_name,
            "config": cfg.to_dict(),
            "base_model_class": type(_base_model(model)).__name__,
            "base_signature": base_signature(_base_model(model), adapter_name, cfg.modules_to_save),
            "base_weights": base_weights_digest(model),
            "base_weights_sample": base_weights_sample(model),  # what adapters merge compares, whatever the dtype
            "weights_sha256": weights_sha256(tmp / WEIGHTS),
            **(extra or {}),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return Path(out_dir)


def read_adapter_meta(path: str | os.PathLike) -> dict:
    """The ``adaptome.json`` of an adapter folder, checking the folder is complete."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: adapter folder not found")
    for name in (META, WEIGHTS):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: incomplete adapter folder, {name} is missing")
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / META}: not valid JSON ({e})") from None
    if meta.get("format") != "adaptome-adapter" or "method" not in meta:
        raise CheckpointError(f"{path / META}: not an adaptome adapter description")
    if meta.get("backend") == "peft" and not (path / "adapter_config.json").is_file():  # peft reads it to load
        raise CheckpointError(f"{path}: incomplete adapter folder, adapter_config.json is missing")
    want = meta.get("weights_sha256")  # folders written before checksums were recorded have none
    if want is not None and weights_sha256(path / WEIGHTS) != want:
        raise CheckpointError(f"{path / WEIGHTS}: corrupt (its checksum differs from the one in {META})")
    return meta


def read_adapter_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an adapter folder; an unreadable (truncated) file is a CheckpointError naming it."""
    try:
        return load_file(str(Path(path) / WEIGHTS))
    except (SafetensorError, OSError) as e:  # a truncated or garbled file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{Path(path) / WEIGHTS}: unreadable ({first})") from None


def load_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default",
                 is_trainable: bool = False, check_base: bool = True) -> nn.Module:
    """Add the adapter saved in ``path`` to ``model`` and return the model to use.

    ``check_base``: refuse a model whose wrapped layers differ from the base the adapter was trained on
    (``base_check``: shapes, and sampled weight values); False loads it onto another base on purpose."""
    path = Path(path)
    meta = read_adapter_meta(path)
    cfg = make_config(meta["method"], meta["config"], source=str(path / META))
    if adapter_name in adapter_names(model):
        raise ValueError(f"model already has an adapter named {adapter_name!r}; load {path} under another name")
    state = read_adapter_weights(path)  # before the model is touched
    if check_base and meta.get("base_signature"):  # folders saved before signatures were recorded have none
        problem = base_mismatch(_base_model(model), meta["base_signature"])
        if problem:
            raise CheckpointError(f"{path}: was trained on another base model: {problem}; load it onto its own "
                                  "base (or pass check_base=False to load it anyway)")
    if cfg.backend == "peft":
        import peft

        was_peft = is_peft_model(model)
        try:
            if was_peft:
                model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=is_trainable)
                model.set_adapter(adapter_name)
            else:
                model = peft.PeftModel.from_pretrained(model, str(path), adapter_name=adapter_name,
                                                       is_trainable=is_trainable)
        except (RuntimeError, ValueError, KeyError, OSError, SafetensorError) as e:
            if was_peft:
                if adapter_name in model.peft_config:
                    model.delete_adapter(adapter_name)
            else:  # peft injected its layers into ``model`` before the weights failed to load
                _strip_peft_layers(model)
            raise CheckpointError(f"{path}: does not fit this model: {_first_problem(e)}") from None
        model.adaptome_method = {**getattr(model, "adaptome_method", {}), adapter_name: cfg}
        return model
    had_adapters = bool(inject.adapter_configs(model))
    try:
        model = apply_adapter(model, cfg, adapter_name)
        inject.set_adapter_state_dict(model, state, adapter_name, source=str(path / WEIGHTS))
    except ValueError as e:  # shapes or keys that do not fit, targets missing from this model
        _drop_native(model, adapter_name, had_adapters)
        msg = str(e) if str(path) in str(e) else f"{path}: does not fit this model: {e}"
        raise CheckpointError(msg) from None
    if not is_trainable:
        for p in model.parameters():
            p.requires_grad_(False)
    return model


def _first_problem(err: BaseException) -> str:
    """One line of a (possibly long, multi-line) loading error: the first size mismatch if any."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
    return next((ln for ln in lines if "size mismatch" in ln), lines[0])


def _strip_peft_layers(model: nn.Module) -> None:
    """Put back the modules that a failed ``PeftModel.from_pretrained`` wrapped in ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper as PeftModulesToSave

    for path, mod in list(model.named_modules()):
        if isinstance(mod, BaseTunerLayer):
            inject._set_submodule(model, path, mod.get_base_layer())
        elif isinstance(mod, PeftModulesToSave):
            inject._set_submodule(model, path, mod.original_module)
    model.__dict__.pop("peft_config", None)  # set on the model by peft's tuner


def _drop_native(model: nn.Module, adapter_name: str, had_adapters: bool) -> None:
    """Remove what a failed native load added: everything when the model held no adapter before."""
    if not had_adapters:
        inject.unload(model)  # every wrapped module goes back, untouched
        return
    for _, layer in inject.adapter_layers(model):
        if adapter_name in layer.configs:
            layer.delete_adapter(adapter_name)
    if adapter_name in inject.adapter_configs(model):
        inject.delete_adapter(model, adapter_name)


@torch.no_grad()
def save_merged(model: nn.Module, out_dir: str | os.PathLike, tokenizer=None, overwrite: bool = False) -> Path:
    """Merge the active adapters into a copy of the base model and save it as a standalone
    transformers checkpoint (safetensors) that ``AutoModel*.from_pretrained`` loads.

    ``model`` itself is left as it was. The copy costs one model's memory.
    """
    import copy

    merged = merge_and_unload(copy.deepcopy(model))
    if not hasattr(merged, "save_pretrained"):
        raise TypeError(f"{type(merged).__name__} is not a transformers model; cannot write a standalone checkpoint")
    with atomic_dir(Path(out_dir), overwrite) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)
