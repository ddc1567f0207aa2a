"""Check a local model folder's files before ``from_pretrained`` reads them, so a truncated or empty file is one
line naming it instead of a safetensors / JSON traceback from deep inside transformers.

``check_model_folder(name_or_path)`` looks at a local folder only (a hub id, or a path that does not exist, is
left to the loader): every ``*.safetensors`` file must be as long as its own header says (8-byte little-endian
header length, the JSON header, then the tensor bytes), and every ``*.json`` file (``config.json``,
``tokenizer.json``, ``tokenizer_config.json``, ...) must parse. A directory where a file is expected is named
too. Used by ``adaptome train`` (``model.name_or_path``), ``compress --model``, ``select-data --model``,
``adapters export --base`` and the protein commands (``domains/protein/model.py``).

Not covered: sharded checkpoints' index against their shards, ``pytorch_model.bin`` (pickle) files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from adaptome.core.errors import AdaptomeError


class CorruptModelFile(AdaptomeError):
    """A file of a model folder is truncated, empty, not of its kind, or a directory."""


def check_safetensors(path: str | os.PathLike, error: type[Exception] = CorruptModelFile) -> None:
    """Raise ``error`` naming ``path`` when the file is shorter than its header says or its header is not
    safetensors JSON."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: a directory, not a safetensors file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise error(f"{path}: truncated or not a safetensors file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise error(f"{path}: corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise error(f"{path}: corrupt safetensors header")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and "data_offsets" in v]
    need = 8 + n + max(ends, default=0)
    if need > size:
        raise error(f"{path}: truncated safetensors file ({size} bytes, its header describes {need}); "
                    "save or download the checkpoint again")


def check_json(path: str | os.PathLike, error: type[Exception] = CorruptModelFile) -> None:
    """Raise ``error`` naming ``path`` when it is a directory, empty, or not valid UTF-8 JSON."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: a directory, not a JSON file")
    try:
        json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text, not a JSON file") from None
    except json.JSONDecodeError as e:
        what = "empty" if not path.stat().st_size else f"not valid JSON, truncated? ({e})"
        raise error(f"{path}: {what}") from None


def check_model_folder(name_or_path: str | os.PathLike, error: type[Exception] = CorruptModelFile) -> None:
    """``check_safetensors`` and ``check_json`` on every such file of ``name_or_path`` when it is a local folder
    (anything else is left to the loader)."""
    folder = Path(name_or_path).expanduser()
    try:
        if not folder.is_dir():
            return
    except OSError:
        return
    for f in sorted(folder.glob("*.safetensors")):
        check_safetensors(f, error)
    for f in sorted(folder.glob("*.json")):
        check_json(f, error)
