"""Whole-model methods beside adapters: SLTrain replaces a model's layers and trains it from scratch;
``full`` (``full_finetune.py``) trains every loaded weight as it is (full fine-tuning, e.g. with GaLore).

``PRETRAIN_METHODS`` maps a name to a config dataclass with ``apply(model) -> model``. ``apply_method``
is what a train command calls with the YAML's ``adapter.method`` / ``options``: an adapter name goes to
``api.apply_adapter``, a from-scratch name to its ``apply``; ``save_trained`` writes either the adapter
(``io.save_adapter``) or, for a from-scratch method, every weight and buffer (``model.safetensors``)
with ``method.json``; ``load_pretrained_model`` rebuilds such a model on a fresh base of the same
architecture.

``save_materialized`` writes a copy with the method's layers made dense (SLTrain: W = s·BA + S per layer) as
an ordinary transformers checkpoint, which is what a later stage or ``from_pretrained`` loads (``full``: the
model as trained);
``save_standalone`` writes either that or an adapter's merged checkpoint, the ``merged/`` of a train command.

Weights shared by two modules (a tied LM head) are stored once in ``model.safetensors`` and tied again on load.

Not covered: merging (a from-scratch model has no base to merge into), peft-format export of these models.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from adaptome.core.registry import Registry

ATTR = "adaptome_pretrain_method"


def _load() -> None:
    importlib.import_module("adaptome.core.adapters.sltrain")
    importlib.import_module("adaptome.core.adapters.full_finetune")


#: whole-model methods: reparameterizations for training from scratch, and full fine-tuning
#: (name -> config class with ``apply(model)``)
PRETRAIN_METHODS: Registry = Registry("pretraining method", loader=_load)


def method_config(method: str, options: dict[str, Any] | None = None, source: str | None = None,
                  prefix: str | None = None) -> tuple[Any, bool]:
    """(the method's config, whether it trains from scratch) for a name of ``ADAPTERS`` or
    ``PRETRAIN_METHODS``, options checked strictly (an error names ``source`` and the key under ``prefix``,
    by default ``adapter[<method>]``). Needs no model, so a run checks its options before loading one."""
    from adaptome.core.adapters import ADAPTERS
    from adaptome.core.adapters.api import make_config
    from adaptome.core.config import ConfigError, from_dict

    if method not in PRETRAIN_METHODS and method not in ADAPTERS:
        where = f"{source}: " if source else ""
        whole = {n: getattr(PRETRAIN_METHODS.get(n), "trains_loaded_weights", False)
                 for n in PRETRAIN_METHODS.names()}
        raise ConfigError(f"{where}adapter.method: unknown adapter method {method!r}; adapters: "
                          f"{', '.join(ADAPTERS.names())}; "
                          f"from scratch: {', '.join(n for n in whole if not whole[n])}; "
                          f"every loaded weight: {', '.join(n for n in whole if whole[n])}")
    prefix = prefix or f"adapter[{method}]"
    if method in PRETRAIN_METHODS:
        return from_dict(PRETRAIN_METHODS.get(method), dict(options or {}), source=source, prefix=prefix), True
    return make_config(method, options, source=source, prefix=prefix), False


def apply_method(model: nn.Module, method: str, options: dict[str, Any] | None = None,
                 source: str | None = None, prefix: str | None = None) -> tuple[nn.Module, Any, bool]:
    """(model to train, the method's config, whether it trains from scratch) for a method name of
    ``ADAPTERS`` or ``PRETRAIN_METHODS``; options are checked strictly either way (``method_config``)."""
    from adaptome.core.adapters.api import apply_adapter

    cfg, from_scratch = method_config(method, options, source, prefix)
    return (cfg.apply(model) if from_scratch else apply_adapter(model, cfg)), cfg, from_scratch


def save_trained(model: nn.Module, out_dir: str | Path, overwrite: bool = False, extra: dict | None = None) -> Path:
    """The adapter (``io.save_adapter``, ``extra`` added to its ``adaptome.json``), or the whole model of a
    from-scratch method, to ``out_dir``."""
    if not hasattr(model, ATTR):
        from adaptome.core.adapters.io import save_adapter

        return save_adapter(model, out_dir, overwrite=overwrite, extra=extra)
    return save_pretrained_model(model, out_dir, overwrite)


def save_pretrained_model(model: nn.Module, out_dir: str | Path, overwrite: bool = False) -> Path:
    """``model.safetensors`` (every parameter and buffer, supports included; a tensor two modules share, such
    as a tied LM head, once) and ``method.json``, atomically."""
    from safetensors.torch import save_model

    from adaptome.core.atomic import atomic_dir

    (name, cfg), = getattr(model, ATTR).items()
    with atomic_dir(Path(out_dir), overwrite) as tmp:
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt", "method": name},
                   force_contiguous=True)
        (tmp / "method.json").write_text(json.dumps({"method": name, "config": dataclasses.asdict(cfg)}, indent=2))
    return Path(out_dir)


def save_standalone(model: nn.Module, out_dir: str | Path, tokenizer=None, overwrite: bool = False) -> Path:
    """The ``merged/`` checkpoint of a trained model, as ``save_trained`` is its ``adapter/``: an adapter merged
    into a copy of its base (``io.save_merged``), or a from-scratch model's dense copy (``save_materialized``)."""
    if not hasattr(model, ATTR):
        from adaptome.core.adapters.io import save_merged

        return save_merged(model, out_dir, tokenizer=tokenizer, overwrite=overwrite)
    return save_materialized(model, out_dir, tokenizer=tokenizer, overwrite=overwrite)


def load_pretrained_model(model: nn.Module, path: str | Path) -> nn.Module:
    """Rebuild the method's layers on a freshly built ``model`` of the same architecture and load the weights."""
    from safetensors.torch import load_model

    from adaptome.core.config import from_dict

    path = Path(path)
    meta = json.loads((path / "method.json").read_text())
    cfg = from_dict(PRETRAIN_METHODS.get(meta["method"]), meta["config"], source=str(path / "method.json"))
    model = cfg.apply(model)
    load_model(model, str(path / "model.safetensors"), strict=True)  # a tied tensor saved once fills both names
    return model


def save_materialized(model: nn.Module, out_dir: str | Path, tokenizer=None, overwrite: bool = False) -> Path:
    """A copy of the from-scratch ``model`` with its layers made dense (the method config's ``materialize``) saved
    as a standalone transformers checkpoint that ``AutoModel*.from_pretrained`` loads, like an adapter's merged
    folder. ``model`` itself is left as it was; the copy costs one dense model's memory."""
    import copy

    from adaptome.core.atomic import atomic_dir

    (name, cfg), = getattr(model, ATTR).items()
    if not hasattr(cfg, "materialize"):
        raise TypeError(f"{name} models cannot be written as a dense checkpoint (no materialize)")
    plain = cfg.materialize(copy.deepcopy(model))
    with atomic_dir(Path(out_dir), overwrite) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)
