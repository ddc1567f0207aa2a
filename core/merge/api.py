"""``merge_adapters``: read peft LoRA folders, merge them with one method, write a peft LoRA folder.

The methods are the ``MERGERS`` registry's (name -> config dataclass); options are checked against
the method's config. The summary reports, per merge, how far the merged update is
from the weighted sum of the inputs' updates (relative Frobenius distance over all modules), so a
user sees what a rank-k merge gave up.

Inputs that adaptome saved record a sample of their base weights' values (``base_weights_sample``) and a digest
(``base_weights``); two such inputs whose samples differ beyond bf16 / fp16 rounding are refused (one name, other
weights: a base folder trained again in place), naming both folders, while one base loaded in float32 and in
bfloat16 passes. Inputs saved before samples were recorded are compared by their digests (exact, dtype included).
The merged folder records the first input's sample and digest when every input agrees.
Other inputs whose configs name different base models
(``base_model_name_or_path``; a local folder compared by its resolved path) are refused unless
``allow_different_bases``: LoRAs of two same-shaped bases would otherwise merge
into an update that fits neither. Bases of different shapes are refused by shape in any case.

Not covered: merging adapters trained on different base models, embedding LoRAs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from adaptome.core.merge import MERGERS
from adaptome.core.merge.factors import (
    MergeError,
    check_compatible,
    check_same_base,
    common_base,
    modules,
    read_lora,
    write_lora,
)
from adaptome.core.merge.linear import weighted_delta


def make_config(method: str, options: dict[str, Any] | None = None):
    """The registered method's config from ``options`` (unknown options are an error)."""
    cls = MERGERS.get(method)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options or {}) - names)
    if unknown:
        raise MergeError(f"{method} does not take {unknown}; its options are {sorted(names)}")
    return cls(**(options or {}))


def merge_adapters(paths: list[str | os.PathLike], method: str, out: str | os.PathLike, rank: int | None = None,
                   overwrite: bool = False, allow_different_bases: bool = False, **options: Any) -> dict:
    """Merge the peft LoRA folders ``paths`` into ``out``; returns a summary."""
    cfg = make_config(method, options)
    if len(paths) < 2:
        raise MergeError("give at least two adapters to merge")
    weights = getattr(cfg, "weights", None)
    if weights is not None and len(weights) != len(paths):
        raise MergeError(f"{len(weights)} weights for {len(paths)} adapters")
    if method == "cat":
        if rank is not None:
            raise MergeError("cat's rank is the sum of the inputs' ranks; do not pass --rank (or use linear / lego)")
    elif rank is None or rank <= 0:
        raise MergeError(f"{method} needs a positive --rank")
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite (overwrite=True) to replace it")
    loras = [read_lora(p) for p in paths]
    if not allow_different_bases:
        check_same_base(loras)
    check_compatible(loras)
    factors = cfg.merge(loras, rank)
    w = weights or [1.0] * len(loras)
    num = den = 0.0
    for m in modules(loras):
        target = weighted_delta(loras, m, w)  # (O, I)
        b, a = factors[m]
        num += float(torch.linalg.matrix_norm(b @ a - target) ** 2)
        den += float(torch.linalg.matrix_norm(target) ** 2)
    summary = {"method": method, "inputs": [str(p) for p in paths], "rank": rank,
               "ranks_in": [sorted({a.shape[0] for _, a in lo.factors.values()}) for lo in loras],
               "options": dataclasses.asdict(cfg), "modules": len(factors),
               "relative_distance_to_weighted_sum": (num / den) ** 0.5 if den else 0.0}
    summary.update(common_base(loras))  # so the merged LoRA can be merged again with the same check
    write_lora(out, factors, loras[0].config, summary, overwrite=overwrite)
    return summary
