"""Merging several LoRAs into one peft-format LoRA: LoRA-LEGO (``lego``) and the baselines ``linear``,
``cat``, ``ties`` and ``dare``, one file each, registered by name in ``MERGERS`` (name -> config
dataclass with a ``merge(loras, rank)`` method). ``api.merge_adapters`` runs one by name and writes
the folder. Inputs and output are plain peft LoRA folders (``factors.py``).

Method modules are imported on the first registry lookup, not at package import.
"""

from __future__ import annotations

import importlib

from adaptome.core.registry import Registry

_METHODS = ("lego", "linear", "cat", "ties", "dare")


def _load() -> None:
    for name in _METHODS:
        importlib.import_module(f"{__name__}.{name}")


MERGERS: Registry = Registry("merge method", loader=_load)

__all__ = ["MERGERS"]
