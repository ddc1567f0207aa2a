"""One interface over both backends (native injection and peft).

``apply_adapter(model, cfg, name)`` returns the model to train: the same module with native layers
swapped in, or a ``peft.PeftModel`` for peft-backed methods. The other functions accept either.

Not covered: mixing native and peft methods on one model (an error), peft's prompt-learning methods.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from adaptome.core.adapters import ADAPTERS, inject
from adaptome.core.adapters.base import AdapterConfig
from adaptome.core.config import from_dict


def is_peft_model(model: nn.Module) -> bool:
    try:
        import peft
    except ImportError:  # pragma: no cover - peft is a core dependency
        return False
    return isinstance(model, peft.PeftModel)


def make_config(method: str, options: dict[str, Any] | None = None, source: str | None = None,
                prefix: str | None = None) -> AdapterConfig:
    """Build a method's config from its registry name and a mapping of options (strictly checked; an error
    names ``source`` and the key under ``prefix``, by default ``adapter[<method>]``)."""
    cls = ADAPTERS.get(method)
    return from_dict(cls, dict(options or {}), source=source, prefix=prefix or f"adapter[{method}]")


def apply_adapter(model: nn.Module, cfg: AdapterConfig, adapter_name: str = "default") -> nn.Module:
    """Add adapter ``adapter_name`` to ``model``; returns the model to train."""
    if cfg.backend == "peft":
        import peft

        pcfg = cfg.to_peft(model.base_model.model if is_peft_model(model) else model)
        if is_peft_model(model):
            model.add_adapter(adapter_name, pcfg)
            model.set_adapter(adapter_name)
            return model
        if inject.adapter_configs(model):
            raise ValueError("this model already holds native adapters; peft and native methods do not mix")
        pmodel = peft.get_peft_model(model, pcfg, adapter_name=adapter_name)
        pmodel.adaptome_method = {adapter_name: cfg}
        return pmodel
    if is_peft_model(model):
        raise ValueError("this model is a peft model; native and peft methods do not mix on one model")
    return inject.inject_adapter(model, cfg, adapter_name)


def adapter_config_of(model: nn.Module, adapter_name: str = "default") -> AdapterConfig:
    if is_peft_model(model):
        return getattr(model, "adaptome_method", {})[adapter_name]
    return inject.adapter_configs(model)[adapter_name]


def adapter_names(model: nn.Module) -> list[str]:
    if is_peft_model(model):
        return list(model.peft_config)
    return list(inject.adapter_configs(model))


def set_adapter(model: nn.Module, names: str | list[str]) -> None:
    if is_peft_model(model):
        model.base_model.set_adapter(names)
    else:
        inject.set_adapter(model, names)


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    if is_peft_model(model):
        with model.disable_adapter():
            yield
    else:
        with inject.disable_adapters(model):
            yield


def merge(model: nn.Module) -> None:
    """Merge the active adapters into the base weights (reversible with ``unmerge``)."""
    if is_peft_model(model):
        model.merge_adapter()
    else:
        inject.merge_adapter(model)


def unmerge(model: nn.Module) -> None:
    if is_peft_model(model):
        model.unmerge_adapter()
    else:
        inject.unmerge_adapter(model)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """The plain base model with the active adapters merged in (modifies ``model``)."""
    if is_peft_model(model):
        return model.merge_and_unload()
    return inject.unload(model, merge=True)


def unload(model: nn.Module) -> nn.Module:
    """The plain base model with every adapter removed and nothing merged."""
    if is_peft_model(model):
        return model.unload()
    return inject.unload(model, merge=False)


def adapter_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors only (keys without the adapter name, as saved)."""
    if is_peft_model(model):
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()}
    return inject.adapter_state_dict(model, adapter_name)


def trainable_report(model: nn.Module) -> dict[str, float]:
    return inject.trainable_report(model)
