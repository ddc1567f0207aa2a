"""What made a stage's result: one record per result, compared before the result is reused.

Every stage describes what makes one of its results as ``{"params": {...}, "inputs": {...}}``:
``params`` are the options that shape it (``min_tissue``, the slide's MPP override, the encoder and
its weights, the feature width, training options ...), ``inputs`` the files it is computed from,
each stamped by ``file_stamp`` (name, size and modification time, cheap for multi-GB slides) or by
``content_stamp`` (size and SHA-256, for small files such as a label CSV whose edits must be seen
even when the size and time stay). A record is written beside the result before the result itself
(``made_by/<slide_id>.json`` in a stage folder, ``made_by.json`` in a training folder) and
``compare`` says whether a result may be reused:

- same params and inputs: reuse;
- other inputs only (a slide replaced, upstream tiles redone, another label file content): the
  result is stale data, redo it and say why;
- other params, or no record at all (a result of an older version): refuse, naming what changed,
  unless the user passes ``--overwrite``.

Not covered: hashing slide contents (size + time is what TRIDENT-style pipelines can afford; a
same-size rewrite within the file system's time resolution goes unseen), code version changes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adaptome.core.atomic import write_text_atomic
from adaptome.core.train.identity import describe_changes, file_digest, flatten

RECORD_DIR = "made_by"


def file_stamp(path: str | os.PathLike | None) -> dict | None:
    """Name, size and modification time (ns) of a file; ``None`` for no file."""
    if path is None:
        return None
    p = Path(path)
    st = p.stat()
    return {"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def content_stamp(path: str | os.PathLike) -> dict:
    """Size and SHA-256 of a file's bytes (its name and time do not count)."""
    d = file_digest(path)
    return {"size": d["size"], "sha256": d["sha256"]}


def plain(v: Any) -> Any:
    """A JSON value for ``v``: numpy scalars unwrapped, tuples as lists, non-finite floats as ``None``."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return str(v)


def identity(params: dict, inputs: dict, slide: dict | None = None) -> dict:
    """The record of one result as plain JSON values: ``params`` (the stage's options, the same for
    every slide of a folder), ``slide`` (options of this slide only, e.g. its MPP override; compared
    like params) and ``inputs`` (file stamps)."""
    return {"params": plain(params), "slide": plain(slide or {}), "inputs": plain(inputs)}


@dataclass(frozen=True)
class Verdict:
    """``action`` is ``reuse``, ``redo`` (inputs changed) or ``refuse`` (params changed, or no record);
    ``why`` names the keys that changed (``min_tissue: 0.5 -> 0.3``)."""

    action: str
    why: str = ""


def compare(stored: dict | None, current: dict) -> Verdict:
    """Whether a result made by ``stored`` may stand for ``current`` (see the module docstring)."""
    if stored is None:
        return Verdict("refuse", "no record of what made it (written by an older version?)")
    sp = flatten({"params": stored.get("params", {}), "slide": stored.get("slide", {})})
    cp = flatten({"params": current["params"], "slide": current.get("slide", {})})
    if sp != cp:
        return Verdict("refuse", describe_changes(sp, cp))
    si, ci = flatten({"inputs": stored.get("inputs", {})}), flatten({"inputs": current.get("inputs", {})})
    if si != ci:
        return Verdict("redo", "input changed: " + describe_changes(si, ci))
    return Verdict("reuse")


def read_record(path: str | os.PathLike) -> dict | None:
    """A stored record, or ``None`` when there is none (or it is unreadable: treated as missing)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "params" in data else None


def write_record(path: str | os.PathLike, record: dict) -> None:
    write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True, allow_nan=False))


def record_path(stage_dir: str | os.PathLike, slide_id: str) -> Path:
    """Where a stage folder keeps the record of one slide's result."""
    return Path(stage_dir) / RECORD_DIR / f"{slide_id}.json"
