"""JSONL metrics: one JSON object a line in ``<output_dir>/metrics.jsonl``.

Training lines carry ``step``, ``loss``, ``lr`` (the rate that step's update used), ``epoch`` and
``elapsed_s``; evaluation lines carry ``step`` and ``eval/<name>`` keys. Each line is appended whole
with one ``write`` on a file opened in append mode and flushed, so a crash leaves at worst one torn
last line. Reading drops a line that does not parse, with a warning naming the file and the line. On
resume the lines after the resumed step are dropped (the file is rewritten atomically), so the file
reads as one uninterrupted run.

Not covered: TensorBoard / W&B trackers (accelerate's trackers can be added beside it).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from adaptome.core.atomic import write_text_atomic

log = logging.getLogger(__name__)


class MetricsLog:
    """The run's metrics file; every method does nothing when ``enabled`` is false (other processes)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Keep the lines of steps <= ``step`` (a resumed run rewrites what follows)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def remove(self) -> None:
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        data = (json.dumps(clean) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, data)
                if written != len(data):  # a short write: the disk filled up mid-line
                    raise OSError(28, "No space left on device (metrics line cut short)", str(self.path))
            finally:
                os.close(fd)
        except OSError as e:
            if e.filename:
                raise
            raise OSError(e.errno, e.strerror or str(e), str(self.path)) from e


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a line that does not parse (a torn last line) is dropped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    raw = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    for i, line in enumerate(raw, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError:
            where = "torn last line" if i >= len(raw) - 1 else "unreadable line"
            log.warning(f"{path}:{i}: {where} dropped ({line[:40]!r})")
            continue
        out.append(rec)
    return out
