"""Running one stage over many slides: reuse only what the same inputs made, go past bad slides,
write an honest summary.

Every stage writes into a folder named after its parameters (``tiles_20x_256px_0ov/``,
``features_baseline/`` ...) holding its resolved ``config.yaml``. A slide's result is its output
file (written under a temporary name and renamed, so a file that exists is complete) plus a record
of what made it (``made_by/<slide_id>.json``, see ``made_by.py``). Before any file is written,
``begin_stage`` compares every existing result of the folder with what this run would make:

- same parameters and input files: reused, unless the output file itself is damaged (empty, or an HDF5
  file cut short after it was written: ``damaged``), which is redone, the reason listed under ``redone``;
- other input files (a replaced slide, redone tiles): redone, the reason listed under ``redone``;
- other parameters (``min_tissue``, an MPP override, the encoder's weights ...) or no record:
  the run is refused with one line naming what changed and ``--overwrite``; nothing is written
  (not even ``config.yaml``). With ``overwrite`` those results are redone; results of slides
  not in this run that were made with other parameters are removed (listed under ``removed``),
  so that everything in the folder matches its ``config.yaml``.

A slide that fails (corrupt file, missing MPP, a tile that cannot be decoded in a reader worker)
is one line naming the slide and the cause; with ``skip_errors`` it is recorded under ``failed``
and the run goes on, otherwise the run stops with that line and the finished slides stay.
``summary.json`` / ``summary.md`` are written atomically: ``status: running`` when the work
starts (replacing an earlier summary), and the final counts last; a run stopped by an error or
interrupted says so (``status``) and lists only the slides whose files exist.

Not covered: ``.lock`` files for several processes sharing one stage folder (TRIDENT), retries.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from adaptome.core.atomic import write_text_atomic
from adaptome.core.errors import AdaptomeError
from adaptome.core.progress import progress_bar
from adaptome.domains.pathology.made_by import RECORD_DIR, compare, plain, read_record, record_path, write_record
from adaptome.domains.pathology.slide import SlideError


class StaleResultError(AdaptomeError, ValueError):
    """Existing results were made with other parameters; the message names the option to pass."""


def write_json(path: str | os.PathLike, data) -> Path:
    """Strict JSON (non-finite numbers become ``null``), written atomically."""
    return write_text_atomic(path, json.dumps(plain(data), indent=2, allow_nan=False))


@dataclass
class StageSummary:
    """What a stage run did, per slide id: ``done`` (made now; ``redone`` says why for those that
    replaced a stale result), ``reused`` (same inputs), ``skipped`` (not attempted, with the reason),
    ``failed`` (one line each), ``removed`` (stale results of slides outside the run)."""

    stage: str
    out_dir: str
    done: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    redone: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    status: str = "running"
    #: where ``write`` puts the summary files when not ``out_dir`` (one rank's share of a launched run,
    #: merged by ``extract.gather_summary``); results and their records always go to ``out_dir``
    summary_dir: str | None = None

    def line(self) -> str:
        return (f"{self.stage}: {len(self.done)} done, {len(self.reused)} reused (same inputs), "
                f"{len(self.skipped)} skipped, {len(self.failed)} failed -> {self.summary_dir or self.out_dir}")

    def write(self) -> None:
        """``summary.json`` and ``summary.md``, each replaced atomically."""
        out = Path(self.summary_dir or self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "summary.json", {"stage": self.stage, "status": self.status, "done": self.done,
                                          "reused": self.reused, "skipped": self.skipped, "failed": self.failed,
                                          "redone": self.redone, "removed": self.removed})
        lines = [f"# {self.stage} summary", "", f"- status: {self.status}", f"- done: {len(self.done)}"]
        lines += [f"  - `{k}` redone: {v}" for k, v in self.redone.items()]
        lines += [f"- reused (same inputs): {len(self.reused)}", f"- skipped: {len(self.skipped)}"]
        lines += [f"  - `{k}`: {v}" for k, v in self.skipped.items()]
        lines += [f"- failed: {len(self.failed)}"]
        lines += [f"  - `{k}`: {v}" for k, v in self.failed.items()]
        if self.removed:
            lines += [f"- removed (made with other parameters or model files): {', '.join(self.removed)}"]
        write_text_atomic(out / "summary.md", "\n".join(lines) + "\n")


@dataclass
class Job:
    """One slide to do: its id, file, output file and why an earlier result is redone ('' if none)."""

    sid: str
    path: Path
    target: Path
    redo: str = ""
    record: dict | None = None


def damaged(target: Path) -> str:
    """Why an existing result file cannot be reused although its record matches ('' if it can): an empty file,
    or an HDF5 file h5py cannot open (cut short by a killed copy or a full disk after it was written)."""
    try:
        if target.is_dir():
            return "a folder, not a file"
        if target.stat().st_size == 0:
            return "an empty file"
        if target.suffix == ".h5":
            import h5py

            with h5py.File(target, "r"):
                pass
    except OSError as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return ""


def begin_stage(stage: str, items: list[tuple[str, Path]], out_dir: str | os.PathLike,
                output_of: Callable[[str], Path], identity: Callable[[str, Path], dict] | None = None,
                overwrite: bool = False, skipped: dict[str, str] | None = None,
                on_start: Callable[[], None] | None = None, others: Iterable[str] = (),
                summary_dir: str | os.PathLike | None = None,
                shared_inputs: tuple[str, ...] = ()) -> tuple[StageSummary, list[Job]]:
    """Decide per slide: reuse, redo or refuse (see the module docstring); then (and only then)
    create the folder, call ``on_start`` (the stage saves its config) and write a ``running``
    summary. ``identity(slide_id, path)`` describes what would make the slide's result; a slide whose
    identity cannot be computed (its file vanished) is left to fail in the work loop. ``others``:
    slides of the same run done by other processes (a launched run's other ranks), never treated
    as results outside the run. ``summary_dir``: where this process's summary goes (``out_dir`` if
    None). ``shared_inputs``: keys of the records' ``inputs`` that every slide's result is made from
    (``score``: the model files); a result of a slide outside the run made from other ones is stale
    (a ``slides.csv`` would mix two models' scores): refused like other parameters, removed with
    ``overwrite``."""
    out = Path(out_dir)
    summary = StageSummary(stage, str(out), skipped=dict(skipped or {}),
                           summary_dir=str(summary_dir) if summary_dir is not None and Path(summary_dir) != out
                           else None)
    jobs, refused, remove, stale = [], [], [], []
    for sid, path in items:
        if sid in summary.skipped:
            continue
        target = output_of(sid)
        current = None
        if identity is not None:
            with contextlib.suppress(AdaptomeError, OSError):
                current = identity(sid, path)
        job = Job(sid, Path(path), target, record=current)
        if target.exists() and current is not None:
            verdict = compare(read_record(record_path(out, sid)), current)
            damage = damaged(target) if verdict.action == "reuse" else ""
            if verdict.action == "reuse" and not damage:
                summary.reused.append(sid)
                continue
            if damage:  # same inputs, but the file itself was cut (a killed copy, a full disk): redone
                job.redo = f"the earlier result {target.name} is damaged ({damage})"
                jobs.append(job)
                continue
            if verdict.action == "refuse" and not overwrite:
                refused.append(f"{sid}: {verdict.why}")
            job.redo = verdict.why
        elif target.exists() and identity is None:
            summary.reused.append(sid)
            continue
        jobs.append(job)
    if identity is not None:  # results of slides outside this run must match its parameters too
        in_run = {sid for sid, _ in items} | set(others)
        src = next((j.record for j in jobs if j.record), None) or next(
            (r for s in summary.reused if (r := read_record(record_path(out, s)))), None)
        params = src["params"] if src else None
        shared = {k: (src.get("inputs") or {}).get(k) for k in shared_inputs} if src and shared_inputs else {}
        for rec in sorted((out / RECORD_DIR).glob("*.json")) if params is not None else []:
            sid = rec.stem
            old = read_record(rec)
            if sid in in_run or not output_of(sid).exists() or old is None:
                continue
            verdict = compare(old, {**old, "params": params})
            if verdict.action != "reuse":
                (remove if overwrite else refused).append(f"{sid}: {verdict.why}" if not overwrite else sid)
            elif shared and compare(old, {**old, "inputs": {**old.get("inputs", {}), **shared}}).action != "reuse":
                (remove if overwrite else stale).append(sid)
    if stale:
        raise StaleResultError(f"{out}: {len(stale)} slide(s) outside this run (e.g. {', '.join(stale[:3])}) were "
                               f"made from other {' / '.join(shared_inputs)} than this run's; their results would "
                               f"stand beside this run's as if made alike: give those slides too, pass --overwrite "
                               f"to remove them, or write to another folder")
    if refused:
        more = f" (and {len(refused) - 1} more slide(s))" if len(refused) > 1 else ""
        raise StaleResultError(f"{out}: results were made with other parameters ({refused[0]}){more}; pass "
                               f"--overwrite to redo them, or write to another folder")
    out.mkdir(parents=True, exist_ok=True)
    for sid in remove:
        output_of(sid).unlink(missing_ok=True)
        record_path(out, sid).unlink(missing_ok=True)
        summary.removed.append(sid)
    if on_start is not None:
        on_start()
    summary.write()
    return summary, jobs


def user_failure(e: BaseException, path: Path) -> str | None:
    """One line naming the slide and the cause for a user's bad slide or file (an ``AdaptomeError``,
    an ``OSError`` or an OpenSlide read error); ``None`` for anything else (a bug: let it through)."""
    import openslide

    if not isinstance(e, (AdaptomeError, OSError, openslide.OpenSlideError)):
        return None
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, openslide.OpenSlideError):  # raised by OpenSlide itself: a libtiff / codec message
        msg = f"cannot read the slide ({msg})"
    return msg if str(path) in msg else f"{path}: {msg}"


def start_job(summary: StageSummary, job: Job) -> None:
    """Before the work of one slide: the stale output and record go, the new record is written (the
    output, written last by the work, marks the slide done)."""
    out = Path(summary.out_dir)
    if job.redo:
        job.target.unlink(missing_ok=True)
    rec = record_path(out, job.sid)
    rec.unlink(missing_ok=True)
    if job.record is not None:
        rec.parent.mkdir(parents=True, exist_ok=True)
        write_record(rec, job.record)


def job_done(summary: StageSummary, job: Job) -> None:
    summary.done.append(job.sid)
    if job.redo:
        summary.redone[job.sid] = job.redo


def do_job(summary: StageSummary, job: Job, work: Callable[[str, Path, Path], None], skip_errors: bool) -> None:
    """Run ``work`` for one slide (``start_job`` first); a user failure is recorded (and raised as
    ``SlideError`` unless ``skip_errors``), anything else propagates."""
    start_job(summary, job)
    try:
        work(job.sid, job.path, job.target)
    except Exception as e:
        msg = user_failure(e, job.path)
        if msg is None:
            raise
        fail(summary, job.sid, msg, skip_errors)
        return
    job_done(summary, job)


def fail(summary: StageSummary, sid: str, msg: str, skip_errors: bool) -> None:
    """Record a slide's failure; without ``skip_errors`` write the summary and raise ``SlideError``."""
    summary.failed[sid] = msg
    if not skip_errors:
        summary.status = f"stopped at the failure of {sid} (pass --skip-errors to go on)"
        summary.write()
        raise SlideError(msg) from None


@contextlib.contextmanager
def finishing(summary: StageSummary) -> Iterator[StageSummary]:
    """Write the final summary when the block ends; an interruption or a bug is recorded as the
    status (with the slides finished so far) before it propagates."""
    try:
        yield summary
    except SlideError:
        raise  # ``fail`` wrote the summary
    except BaseException as e:
        summary.status = f"interrupted ({type(e).__name__}); only the slides listed as done are finished"
        summary.write()
        raise
    summary.status = "complete" if not summary.failed else "complete, with failed slides"
    summary.write()


def run_stage(stage: str, items: list[tuple[str, Path]], out_dir: str | os.PathLike,
              output_of: Callable[[str], Path], work: Callable[[str, Path, Path], None],
              skip_errors: bool = False, progress: bool = True, identity: Callable[[str, Path], dict] | None = None,
              overwrite: bool = False, skipped: dict[str, str] | None = None,
              on_start: Callable[[], None] | None = None, shared_inputs: tuple[str, ...] = ()) -> StageSummary:
    """Run ``work(slide_id, slide_path, out_file)`` for each slide whose result cannot be reused
    (``begin_stage``); failures as in ``do_job``; the summary is written last."""
    summary, jobs = begin_stage(stage, items, out_dir, output_of, identity, overwrite, skipped, on_start,
                                shared_inputs=shared_inputs)
    with finishing(summary), progress_bar(stage, len(jobs), enabled=progress, transient=True) as bar:
        for job in jobs:
            do_job(summary, job, work, skip_errors)
            bar.advance()
    return summary
