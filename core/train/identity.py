"""What made a run: the identity a checkpoint must share with the run that resumes it.

``run_identity`` flattens into dotted keys everything that shapes the result: the training options
(``train.*``), the base model's transformers config (``model_config.*``) and module structure, each
adapter's options (``adapters.<name>.*``), the trainable parameters' names and shapes, a sample of the frozen
(base) weights' values (``frozen_weights``: another checkpoint of the architecture at the same path is a change), the
number of examples and processes, plus what the caller adds (``adaptome train`` adds its model, data and
adapter sections, with every data file's size and SHA-256). Keys listed in
``config.MAY_CHANGE_ON_RESUME`` are left out. ``fingerprint`` hashes the identity;
``describe_changes`` names the keys that differ, so a refused resume says what changed.

``weights_digest`` identifies a base model by a sample of its weights (what ``adaptome train`` adds, so a
model folder overwritten by another of the same architecture is a change).

Not covered: the content of an in-memory dataset (a library caller passes a digest of its data in
``extra``; ``fit`` itself sees only its length), and the starting values of weights that train (a full
fine-tune's base: ``adaptome train`` adds ``weights_digest`` of the loaded model; a library caller can add it
to ``extra``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from adaptome.core.train.config import MAY_CHANGE_ON_RESUME, TrainConfig

#: model config keys left out of a run's identity: versions, and where the model was loaded from (``_name_or_path``:
#: a moved project folder is the same model; ``frozen_weights``, a sample of the frozen weights, identifies the base)
_NOISY_MODEL_KEYS = {"transformers_version", "_commit_hash", "architectures", "_name_or_path"}


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """Size and SHA-256 of a file (what a resumed run compares, so a same-size edit is seen)."""
    path = Path(path)
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(path), "size": path.stat().st_size, "sha256": h.hexdigest()}


def weights_digest(model: nn.Module, samples: int = 16) -> str:
    """SHA-256 over every parameter's name, shape, dtype and ``samples`` values at evenly spaced flat
    positions: equal for the same weights loaded again, different for another checkpoint of the same
    architecture (a sample, not a checksum: hashing a 7B model at every start costs seconds)."""
    from adaptome.core.adapters.base_check import sample_values

    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(sample_values(p, samples).numpy().tobytes())
    return h.hexdigest()


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists of mappings are indexed (``files.0.sha256``)."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(tree, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in tree):
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        out[prefix] = list(tree) if isinstance(tree, tuple) else tree
    return out


def _plain(v: Any) -> Any:
    """A JSON value for ``v`` (sets sorted, other objects by ``str``)."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted(str(x) for x in v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def _base_model(model: nn.Module) -> nn.Module:
    from adaptome.core.adapters.api import is_peft_model

    return model.base_model.model if is_peft_model(model) else model


def _adapter_options(model: nn.Module) -> dict[str, Any]:
    from adaptome.core.adapters.api import adapter_config_of, adapter_names

    out = {}
    for name in adapter_names(model):
        try:
            out[name] = _plain(adapter_config_of(model, name).to_dict())
        except KeyError:  # a peft adapter added by hand, outside apply_adapter
            out[name] = _plain(model.peft_config[name].to_dict())
    return out


def run_identity(model: nn.Module, cfg: TrainConfig, *, n_examples: int, world_size: int,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The flat identity of a run (see the module docstring); ``extra`` is the caller's part."""
    from adaptome.core.adapters.base_check import sample_values

    base = _base_model(model)
    trainable, frozen = hashlib.sha256(), hashlib.sha256()
    count = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            trainable.update(f"{name}:{tuple(p.shape)};".encode())
            count += 1
        else:  # the frozen (base) weights: a sample of their values tells one checkpoint of a model from another
            frozen.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
            frozen.update(sample_values(p).numpy().tobytes())
    tree: dict[str, Any] = {
        "frozen_weights": frozen.hexdigest()[:16],
        "train": _plain(vars(cfg)),
        "model_class": type(base).__name__,
        "model_structure": hashlib.sha256(repr(base).encode()).hexdigest()[:16],
        "trainable_parameters": f"{count} tensors, names and shapes {trainable.hexdigest()[:16]}",
        "adapters": _adapter_options(model),
        "n_examples": n_examples,
        "world_size": world_size,
    }
    config = getattr(base, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        tree["model_config"] = {k: _plain(v) for k, v in config.to_dict().items() if k not in _NOISY_MODEL_KEYS}
    if extra:
        tree.update(_plain(extra))
    return {k: v for k, v in flatten(tree).items() if not _may_change(k)}


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE_ON_RESUME)


def fingerprint(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """``key: old -> new`` for each key that differs (the first ``limit``), in one line."""
    keys = sorted(set(old) | set(new))
    changed = [k for k in keys if old.get(k, "<absent>") != new.get(k, "<absent>")]
    parts = [f"{k}: {_short(old.get(k, '<absent>'))} -> {_short(new.get(k, '<absent>'))}" for k in changed[:limit]]
    more = f" (and {len(changed) - limit} more)" if len(changed) > limit else ""
    return "; ".join(parts) + more


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= 40 else s[:18] + "..." + s[-18:]

