"""Modules trained fully beside an adapter (``modules_to_save``), one copy per adapter name.

As in peft, the original module is kept untouched in ``original_module`` and each adapter gets its
own trainable copy in ``modules_to_save[name]``; the active adapter's copy runs. Unloading without
merging puts the original back, so the base model is restored exactly.

Not covered: tied weights. A copy of ``lm_head`` no longer shares its weight with the input
embeddings; models trained this way should use ``tie_word_embeddings=False`` (as LLaMA-2 does).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn


class ModulesToSaveWrapper(nn.Module):
    def __init__(self, original_module: nn.Module):
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active: list[str] = []
        self.disabled = False

    def add_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.modules_to_save:
            self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module)
        if not self.active:
            self.active = [adapter_name]

    def set_adapter(self, names: list[str]) -> None:
        mine = [n for n in names if n in self.modules_to_save]
        if len(mine) > 1:
            raise ValueError(f"modules_to_save can follow one adapter at a time, got {mine}")
        self.active = mine

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.modules_to_save:
            del self.modules_to_save[adapter_name]
        self.active = [a for a in self.active if a != adapter_name]

    def active_module(self) -> nn.Module:
        if self.disabled or not self.active:
            return self.original_module
        return self.modules_to_save[self.active[0]]

    def mark_trainable(self) -> None:
        for name, mod in self.modules_to_save.items():
            mod.requires_grad_(name in self.active)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.active_module()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # expose the wrapped module's attributes (``weight``, ``num_embeddings``...) to callers
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.active_module(), name)


def wrap_modules_to_save(model: nn.Module, names: list[str], adapter_name: str) -> None:
    """Wrap every module whose path equals or ends with one of ``names``; error if one matches nothing."""
    for target in names:
        hits = [p for p, _ in model.named_modules()
                if (p == target or p.endswith("." + target))
                and ".modules_to_save." not in p and ".original_module" not in p]
        if not hits:
            raise ValueError(f"modules_to_save entry {target!r} matched no module in {type(model).__name__}")
        for path in hits:
            mod = model.get_submodule(path)
            if not isinstance(mod, ModulesToSaveWrapper):
                parent_path, _, child = path.rpartition(".")
                parent = model.get_submodule(parent_path) if parent_path else model
                mod = ModulesToSaveWrapper(mod)
                setattr(parent, child, mod)
            mod.add_adapter(adapter_name)
