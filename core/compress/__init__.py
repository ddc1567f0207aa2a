"""Compression methods: the ``COMPRESSORS`` registry (method name -> method class) and the public functions.

Each method file registers a class with ``@COMPRESSORS.register("name")``; the class carries its
config dataclass (``Config``), the name of the config field that ``--budget`` sets
(``budget_field``), the options that replace the budget when given (``overrides_budget``),
``compress(model, targets, cfg, calib=None) -> list[dict]`` (replaces the target
``nn.Linear`` modules in place and returns one report row per matrix) and ``mark_trainable(model)``
(the parameters its fine-tuning step trains). Method files are imported on the first registry
lookup, so importing this package does no work.

Layout: ``layers.py`` (the low-rank layer shared by WeLore and LRT), ``io.py`` (save /
``load_compressed``), ``run.py`` (the pipeline behind ``adaptome compress``), one file per method
(``welore.py``, ``lqlora.py`` + ``nf_quant.py``, ``dsformer.py``, ``lrt.py``).
"""

from __future__ import annotations

import importlib

from adaptome.core.registry import Registry

_METHOD_MODULES = ("welore", "lqlora", "dsformer", "lrt")


def _load_methods() -> None:
    for name in _METHOD_MODULES:
        importlib.import_module(f"{__name__}.{name}")


COMPRESSORS: Registry = Registry("compression method", loader=_load_methods)

__all__ = ["COMPRESSORS"]
