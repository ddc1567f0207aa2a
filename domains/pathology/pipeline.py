"""Running one stage over many slides: skip finished slides, go past bad ones, write a summary.

Every stage writes into a folder named after its parameters (``tiles_20x_256px_0ov/``,
``features_baseline/`` ...) holding its resolved ``config.yaml``. A slide is done when its output
file exists (outputs are written under a temporary name and renamed, so a file that exists is
complete). With ``skip_errors`` a slide that fails (corrupt file, missing MPP ...) is recorded
and the run goes on; without it the run stops with the one-line error, and the outputs of the
slides already finished stay in place. ``summary.json`` / ``summary.md`` list done, skipped and
failed slides.

Not covered: ``.lock`` files for several processes sharing one stage folder (TRIDENT), retries.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from adaptome.core.errors import AdaptomeError
from adaptome.core.progress import progress_bar
from adaptome.domains.pathology.slide import SlideError


@dataclass
class StageSummary:
    """What a stage run did, per slide id."""

    stage: str
    out_dir: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        return (f"{self.stage}: {len(self.done)} done, {len(self.skipped)} already done (reused), "
                f"{len(self.failed)} failed -> {self.out_dir}")

    def write(self) -> None:
        out = Path(self.out_dir)
        data = {"stage": self.stage, "done": self.done, "skipped": self.skipped, "failed": self.failed}
        (out / "summary.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
        lines = [f"# {self.stage} summary", "", f"- done: {len(self.done)}",
                 f"- reused (already done): {len(self.skipped)}", f"- failed: {len(self.failed)}"]
        lines += [f"  - `{k}`: {v}" for k, v in self.failed.items()]
        (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_stage(stage: str, items: list[tuple[str, Path]], out_dir: str | os.PathLike,
              output_of: Callable[[str], Path], work: Callable[[str, Path, Path], None],
              skip_errors: bool = False, progress: bool = True) -> StageSummary:
    """Run ``work(slide_id, slide_path, out_file)`` for each item whose ``output_of(slide_id)`` is
    missing. Errors: ``SlideError`` / ``ValueError`` / ``OSError`` of one slide are recorded when
    ``skip_errors``, else re-raised after the summary is written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = StageSummary(stage, str(out))
    with progress_bar(stage, len(items), enabled=progress, transient=True) as bar:
        for sid, path in items:
            target = output_of(sid)
            if target.exists():
                summary.skipped.append(sid)
            else:
                try:
                    work(sid, path, target)
                    summary.done.append(sid)
                except (AdaptomeError, OSError) as e:  # a user's bad slide or file; a bug propagates
                    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                    if str(path) not in msg:
                        msg = f"{path}: {msg}"
                    summary.failed[sid] = msg
                    if not skip_errors:
                        summary.write()
                        raise SlideError(msg) from None
            bar.advance()
    summary.write()
    return summary
