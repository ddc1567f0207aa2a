"""Adapters: the ``ADAPTERS`` registry (method name -> config class) and the public functions.

Method modules in this package register themselves with ``@ADAPTERS.register("name")``. They are
imported on the first registry lookup (not at package import), so a new method file is picked up
by the CLI and the contract tests with no other edit. The decorator also sets the config class's
``method`` attribute, so the name is written once.
"""

from __future__ import annotations

import importlib
import pkgutil

from adaptome.core.registry import Registry

#: modules of this package that hold infrastructure, not methods
_INFRA = {"base", "inject", "io", "targets", "peft_backend", "api", "modules_to_save", "truncate",
          "from_scratch"}


def _load_methods() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in _INFRA:
            continue
        importlib.import_module(f"{__name__}.{info.name}")
    importlib.import_module(f"{__name__}.peft_backend")


ADAPTERS: Registry = Registry("adapter method", loader=_load_methods, name_attr="method")

__all__ = ["ADAPTERS"]
