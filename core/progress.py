"""One progress bar for long work (training, sampling, slides, executions).

``with progress_bar("train", total=n, enabled=is_main) as bar: bar.advance(description=...)``.
When ``enabled`` is false (another process than the main one, or the caller asked for quiet) the
bar does nothing, so call sites need no branches. Built on rich; imported lazily.

Not covered: nested bars, and bars on a stream that is not a terminal (rich prints the final
state only).
"""

from __future__ import annotations

import contextlib
from typing import Iterator


class Bar:
    """A handle on one running bar; ``advance`` is a no-op when the bar is disabled."""

    def __init__(self, progress=None, task=None):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, description: str | None = None) -> None:
        if self._progress is None:
            return
        kw = {"description": description} if description is not None else {}
        self._progress.update(self._task, advance=n, **kw)


@contextlib.contextmanager
def progress_bar(label: str, total: int | None, start: int = 0, enabled: bool = True,
                 transient: bool = False) -> Iterator[Bar]:
    """A bar labelled ``label`` counting ``start .. total``; stopped when the block exits."""
    if not enabled:
        yield Bar()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                 TimeRemainingColumn(), transient=transient)
    task = p.add_task("", total=total, completed=start)
    p.start()
    try:
        yield Bar(p, task)
    finally:
        p.stop()
