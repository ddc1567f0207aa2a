"""On-disk cache of the merge benchmark's trained models (the base and the task LoRAs), so that merge
variants can be re-evaluated without re-training.

An entry's key is the SHA-256 of everything that made it: the training settings, the token ids of its
training data, the key of the model it started from, the torch / peft / transformers versions, and the
source of the adaptome modules that build and train the models (``CODE``). A changed setting, data
file, package version or training code gives a new key (a re-train), never a stale model.
Entries are written atomically (``adaptome.core.atomic.atomic_dir``), so an interrupted run leaves no
half-written entry.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from importlib.metadata import version
from pathlib import Path

import torch

#: adaptome modules whose source is part of every key (model construction, adapters, training loop)
CODE = ("adaptome.core.text", "adaptome.core.adapters.api", "adaptome.core.train.loop")


def code_digest() -> str:
    """SHA-256 of the source files of ``CODE``."""
    h = hashlib.sha256()
    for name in CODE:
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()


def data_digest(examples: list[dict]) -> str:
    """SHA-256 of the token ids of ``examples`` (in order)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex["input_ids"].to(torch.int64).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()


def key(settings: dict) -> str:
    """The cache key of a model made by ``settings`` (JSON-serialisable) with the current packages."""
    full = dict(settings, versions={p: version(p) for p in ("torch", "peft", "transformers")}, code=code_digest())
    return hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:24]


def entry(root: Path, kind: str, settings: dict) -> Path:
    """The entry's folder (it may not exist yet); ``settings.json`` in it records what made it."""
    return root / f"{kind}-{key(settings)}"
