"""Execute completions against their problems' tests in the sandbox, in parallel; MultiPL-E results.

``execute_one`` runs one program in a fresh temporary working directory (removed afterwards) and
classifies it: ``Timeout`` / ``OutputLimit`` / ``MemoryError`` from the sandbox first, then the
language's rule (``languages.py``); a run that rule calls ``OK`` must also have run its tests to the
end with their checks intact (``endcheck.py``: else ``EarlyExit`` or ``TestsBypassed``, with a
``harness_note``). ``execute_run`` runs every completion of every problem with
``workers`` threads (each run is its own process tree, so threads only wait) and writes one
``<name>.results.json`` per problem in MultiPL-E's format::

    {"name", "language", "prompt", "tests", "stop_tokens", ...,
     "results": [{"program", "stdout", "stderr", "exit_code", "status", "timestamp"}, ...],
     "isolation": {...}, "limits": {...}}

Each problem's file is written as soon as its last program finishes. Ctrl-C (or any error) stops the
queued programs and ends the running ones within half a second (``run_sandboxed(cancel=...)``); the
files of finished problems stay and are reused by a re-run.

Each results file also records ``run_problems``, every problem of the run that wrote (or reused) it:
``pass-at-k`` refuses a folder where some of them have no results (an interrupted run would otherwise
be scored on the problems that happened to finish). Before any program runs, a results file that will
be recomputed (other programs, limits, isolation or grading version) is removed, so an interrupted
re-run never leaves an earlier run's results beside the new ones. Problems of ``problems`` without
completions are not run; the summary lists them (``problems_without_completions``).

A results file is reused on a re-run only when it holds exactly the same programs, limits,
isolation and grading version (``endcheck.HARNESS``); otherwise it is recomputed (and the summary
says how many were reused). A folder that holds results of problems outside the run is refused
(``pass-at-k`` would score them with the new ones) unless ``overwrite`` removes them.

Not covered: MultiPL-E's ``--stop-on-success`` and ``.json.gz`` outputs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from adaptome.core.atomic import write_text_atomic
from adaptome.core.errors import AdaptomeError
from adaptome.domains.codegen import endcheck
from adaptome.domains.codegen import isolation as iso
from adaptome.domains.codegen.languages import get_language, require_interpreter
from adaptome.domains.codegen.problems import Problem
from adaptome.domains.codegen.sandbox import Limits, RunResult, check_address_space, run_sandboxed

STATUSES = ("OK", "SyntaxError", "AssertionError", "Exception", "Timeout", "MemoryError", "OutputLimit",
            "EarlyExit", "TestsBypassed")


class StaleResultsError(AdaptomeError, ValueError):
    """An output folder holds results of problems that are not part of this run."""


def classify(run: RunResult, language: str) -> str:
    """The status of a finished run (sandbox limits first, then the language's rule)."""
    lang = get_language(language)
    if run.output_limited:
        return "OutputLimit"
    if run.timed_out:
        return "Timeout"
    if run.memory_exceeded or (run.exit_code != 0 and any(m in run.stderr for m in lang.memory_markers)):
        return "MemoryError"
    return lang.grade(run.exit_code, run.stdout, run.stderr)


def execute_one(language: str, program: str, limits: Limits | None = None,
                isolation: iso.Isolation | None = None, tmp_root: str | None = None,
                check: endcheck.EndCheck | None = None, cancel: threading.Event | None = None) -> dict:
    """Run one program; returns a MultiPL-E result entry plus ``wall_s`` and ``isolation``.

    ``check`` (``endcheck.for_problem``; default: only that the program reached its end) is what
    the trailer appended after ``program`` verifies; the entry's ``program`` is ``program`` alone.
    ``cancel`` set stops the run; the entry then has ``status`` ``Cancelled`` (never written to results).
    """
    lang = get_language(language)
    check = check or endcheck.EndCheck(lang.name)
    nonce = secrets.token_hex(16)
    wd = tempfile.mkdtemp(prefix="adaptome-exec-", dir=tmp_root)
    try:
        fname = "program" + lang.suffix
        end_path = os.path.join(os.path.realpath(wd), endcheck.END_FILE)
        Path(wd, fname).write_text(endcheck.assemble(check, program, end_path, nonce), encoding="utf-8")
        run = run_sandboxed(lang.argv(fname), wd, limits, isolation, cancel=cancel)
        try:
            end_text = Path(end_path).read_text(encoding="utf-8", errors="replace")[:4096]
        except OSError:
            end_text = None
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    status, note = classify(run, lang.name), ""
    if run.cancelled:
        status, note = "Cancelled", "the run was stopped by the caller"
    elif status == "OK":
        status, note = endcheck.verdict(check, end_text, nonce)
        status = status or "OK"
    entry = {"program": program, "stdout": run.stdout, "stderr": run.stderr, "exit_code": run.exit_code,
             "status": status, "timestamp": int(time.time()), "wall_s": round(run.wall_s, 4),
             "isolation": run.isolation}
    if note:
        entry["harness_note"] = note
    return entry


def _results_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.results.json"


def _reusable(path: Path, programs: list[str], limits: dict, isolation: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):  # damaged (a killed copy, another tool's): redone
        return None
    if not isinstance(old, dict) or not isinstance(old.get("results"), list) \
            or not all(isinstance(r, dict) for r in old["results"]):
        return None
    if (old.get("limits") != limits or old.get("isolation") != isolation or old.get("harness") != endcheck.HARNESS
            or [r.get("program") for r in old.get("results", [])] != programs):
        return None
    return old


def _stale_results(out_dir: Path, names: set[str], overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, remove) results files of problems that are not in this run."""
    stale = sorted(f for f in out_dir.glob("*.results.json") if f.name[: -len(".results.json")] not in names)
    if stale and not overwrite:
        shown = ", ".join(f.name for f in stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
        raise StaleResultsError(f"{out_dir}: holds results of {len(stale)} problem(s) not in this run ({shown}); "
                                "pass-at-k would score them too: choose another --out or pass --overwrite "
                                "to remove them")
    for f in stale:
        f.unlink()


def execute_run(problems: list[Problem], completions: dict[str, list[str]], out_dir: str | os.PathLike,
                workers: int = 2, limits: Limits | None = None, isolation: iso.Isolation | None = None,
                progress: bool = True, overwrite: bool = False) -> dict:
    """Run every completion; write per-problem results; returns a summary with status counts.

    ``overwrite`` removes results files of problems outside this run (without it they are refused).
    """
    from adaptome.core.progress import progress_bar

    limits = limits or Limits()
    isolation = isolation or iso.detect()
    for lang in sorted({p.language for p in problems}):
        require_interpreter(get_language(lang))
        if not isolation.memory_cgroup:
            check_address_space(tuple(get_language(lang).argv_probe()), limits)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_names = {p.name for p in problems if completions.get(p.name)}
    _stale_results(out_dir, run_names, overwrite)
    lim = asdict(limits)
    lim["env_pass"] = list(lim["env_pass"])
    described = isolation.describe()
    jobs, reused, todo = [], 0, []
    for p in problems:
        programs = [p.program(c) for c in completions.get(p.name, [])]
        if not programs:
            continue
        path = _results_path(out_dir, p.name)
        old = _reusable(path, programs, lim, described)
        if old is not None:
            reused += 1
            if old.get("run_problems") != sorted(run_names):  # reused by this run: it names this run's problems
                write_text_atomic(path, json.dumps({**old, "run_problems": sorted(run_names)}, indent=1))
            continue
        path.unlink(missing_ok=True)  # an earlier run's, about to be recomputed: never left beside the new ones
        todo.append((p, programs))
        check = endcheck.for_problem(p.language, p.tests, p.prompt)
        jobs.extend((p.name, i, p.language, prog, check) for i, prog in enumerate(programs))
    results: dict[str, list] = {p.name: [None] * len(progs) for p, progs in todo}
    left = {p.name: len(progs) for p, progs in todo}
    by_name = {p.name: p for p, _ in todo}
    cancel = threading.Event()

    def write(p: Problem) -> None:
        entries = results[p.name]
        for e in entries:
            e.pop("isolation", None)
        doc = {**p.to_json(), "results": entries, "isolation": described, "limits": lim,
               "harness": endcheck.HARNESS, "run_problems": sorted(run_names)}
        write_text_atomic(_results_path(out_dir, p.name), json.dumps(doc, indent=1))

    with progress_bar("executing", total=len(jobs), enabled=progress) as bar, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futs = {pool.submit(execute_one, language, prog, limits, isolation, None, check, cancel): (name, i)
                for name, i, language, prog, check in jobs}
        try:
            for fut in as_completed(futs):
                name, i = futs[fut]
                results[name][i] = fut.result()
                bar.advance(1)
                left[name] -= 1
                if not left[name]:  # written as soon as complete: an interrupted run keeps (and reuses) it
                    write(by_name[name])
        except BaseException:  # Ctrl-C, or a sandbox failure: stop queued and running programs now
            cancel.set()
            for fut in futs:
                fut.cancel()
            raise
    summary = summarize(out_dir, [p.name for p in problems if completions.get(p.name)], reused=reused,
                        isolation=isolation)
    summary["problems_without_completions"] = [p.name for p in problems if not completions.get(p.name)]
    return summary


def summarize(out_dir: Path, names: list[str], reused: int = 0, isolation: iso.Isolation | None = None) -> dict:
    counts = {s: 0 for s in STATUSES}
    for name in names:
        doc = json.loads(_results_path(out_dir, name).read_text())
        for r in doc["results"]:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"problems": len(names), "programs": sum(counts.values()), "status_counts": counts,
            "reused_problems": reused, "out_dir": str(out_dir), "isolation": (isolation or iso.detect()).describe()}
