"""Write a smaller copy of a saved DyLoRA adapter at rank k (DyLoRA, arXiv 2210.07558, Sec. 3).

A DyLoRA adapter trained with nested dropout works at every rank k <= r with scale alpha / k. The
truncated folder is a plain rank-k DyLoRA adapter: A[:k], B[:, :k], the same alpha, so its full-rank
scale alpha / k reproduces ``set_rank(model, k)`` of the original. No base model is needed: only
the adapter's safetensors and JSON are read. The write is atomic (``core.atomic.atomic_dir``); an existing
output is never replaced unless ``overwrite``.

Not covered: other methods (a LoRA adapter truncated this way would change its outputs).
"""

from __future__ import annotations

import json
from pathlib import Path


def truncate_adapter_dir(src: str | Path, dst: str | Path, rank: int, overwrite: bool = False) -> Path:
    """Copy the DyLoRA adapter in ``src`` to ``dst`` keeping its first ``rank`` components."""
    from safetensors.torch import save_file

    from adaptome.core.adapters.io import (
        META,
        PEFT_CONFIG,
        WEIGHTS,
        CheckpointError,
        read_adapter_meta,
        read_adapter_weights,
        weights_sha256,
    )
    from adaptome.core.atomic import atomic_dir

    src, dst = Path(src), Path(dst)
    meta = read_adapter_meta(src)
    if meta["method"] != "dylora":
        raise CheckpointError(f"{src / META}: method is {meta['method']!r}; only dylora adapters can be truncated")
    r = int(meta["config"]["r"])
    if not 1 <= rank <= r:
        raise CheckpointError(f"{src}: rank must be in 1..{r} (the adapter's rank), got {rank}")
    state = read_adapter_weights(src)
    out = {}
    for key, t in state.items():
        if ".dylora_A" in key:
            out[key] = t[:rank].contiguous()  # (R, I) -> (K, I)
        elif ".dylora_B" in key:
            out[key] = t[:, :rank].contiguous()  # (O, R) -> (O, K)
        else:
            out[key] = t
    meta = dict(meta, config=dict(meta["config"], r=rank, eval_rank=None), truncated_from=str(src))
    with atomic_dir(dst, overwrite) as tmp:
        save_file(out, str(tmp / WEIGHTS), metadata={"format": "pt", "method": "dylora"})
        (tmp / PEFT_CONFIG).write_text(json.dumps({"adaptome_method": "dylora", **meta["config"]}, indent=2),
                                       encoding="utf-8")
        meta["weights_sha256"] = weights_sha256(tmp / WEIGHTS)
        (tmp / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return dst
