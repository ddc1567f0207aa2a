"""What a ``build-dataset`` folder was made from: ``inputs.json`` holds the size and SHA-256 of every input file
(the FASTA / Stockholm files, the label table, a vocabulary file) and the options that shaped the records, and a
stage trained on one of the folder's files is told when an input has changed or gone since (``stale_inputs``), so
a dataset built from an old FASTA is never trained on without a word.

Not covered: inputs read from the shipped data (``--shipped``: recorded by name; they change only with the
package), a dataset file copied out of its folder (nothing beside it to compare with).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

INPUTS_FILE = "inputs.json"


def inputs_record(files: list[Path], options: dict[str, Any]) -> dict[str, Any]:
    """``inputs.json``'s content: ``files`` by absolute path, size and SHA-256, and ``options``."""
    from adaptome.core.train.identity import file_digest

    return {"files": [{**file_digest(f), "path": str(Path(f).resolve())} for f in files], "options": options}


def write_inputs(folder: Path, files: list[Path], options: dict[str, Any], final: Path | None = None) -> None:
    """Write ``inputs.json`` into ``folder``; each file also by its path relative to ``final`` (the folder's place
    once written, default ``folder``), so a project moved with its inputs is still checked."""
    record = inputs_record(files, options)
    for rec in record["files"]:
        rec["relative"] = os.path.relpath(rec["path"], Path(final or folder).resolve())
    (Path(folder) / INPUTS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _located(folder: Path, rec: dict[str, Any]) -> Path | None:
    """Where an input is now: its absolute path, else its path relative to the dataset folder (both moved)."""
    for path in (Path(rec["path"]), folder / rec["relative"] if rec.get("relative") else None):
        if path is not None and path.is_file():
            return path
    return None


def stale_inputs(train_files: list[str | Path]) -> list[str]:
    """One warning per input of a dataset folder (the folder of a training file holding ``inputs.json``) that has
    changed or is missing since the folder was built."""
    from adaptome.core.train.identity import file_digest

    out: list[str] = []
    seen: set[Path] = set()
    for f in train_files:
        folder = Path(f).resolve().parent
        record = folder / INPUTS_FILE
        if folder in seen or not record.is_file():
            continue
        seen.add(folder)
        try:
            files = json.loads(record.read_text(encoding="utf-8")).get("files") or []
        except (OSError, ValueError):
            out.append(f"{record}: unreadable; cannot check that {folder} is up to date with its inputs")
            continue
        for rec in files:
            path = _located(folder, rec)
            if path is None:
                out.append(f"{folder} was built from {rec['path']}, which no longer exists")
            elif file_digest(path)["sha256"] != rec.get("sha256"):
                out.append(f"{folder} was built from {path}, which has changed since (SHA-256 "
                           f"{rec.get('sha256', '?')[:12]} then, {file_digest(path)['sha256'][:12]} now): the stage "
                           "trains on the old records; rebuild it with build-dataset --overwrite")
    return out
