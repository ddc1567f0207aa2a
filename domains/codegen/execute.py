"""Execute completions against their problems' tests in the sandbox, in parallel; MultiPL-E results.

``execute_one`` runs one program in a fresh temporary working directory (removed afterwards) and
classifies it: ``Timeout`` / ``OutputLimit`` / ``MemoryError`` from the sandbox first, then the
language's rule (``languages.py``). ``execute_run`` runs every completion of every problem with
``workers`` threads (each run is its own process tree, so threads only wait) and writes one
``<name>.results.json`` per problem in MultiPL-E's format::

    {"name", "language", "prompt", "tests", "stop_tokens", ...,
     "results": [{"program", "stdout", "stderr", "exit_code", "status", "timestamp"}, ...],
     "isolation": {...}, "limits": {...}}

A results file is reused on a re-run only when it holds exactly the same programs and limits;
otherwise it is recomputed (and the summary says how many were reused).

Not covered: MultiPL-E's ``--stop-on-success`` and ``.json.gz`` outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from adaptome.core.atomic import write_text_atomic
from adaptome.domains.codegen import isolation as iso
from adaptome.domains.codegen.languages import get_language, require_interpreter
from adaptome.domains.codegen.problems import Problem
from adaptome.domains.codegen.sandbox import Limits, RunResult, check_address_space, run_sandboxed

STATUSES = ("OK", "SyntaxError", "AssertionError", "Exception", "Timeout", "MemoryError", "OutputLimit")


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
                isolation: iso.Isolation | None = None, tmp_root: str | None = None) -> dict:
    """Run one program; returns a MultiPL-E result entry plus ``wall_s`` and ``isolation``."""
    lang = get_language(language)
    wd = tempfile.mkdtemp(prefix="adaptome-exec-", dir=tmp_root)
    try:
        fname = "program" + lang.suffix
        Path(wd, fname).write_text(program, encoding="utf-8")
        run = run_sandboxed(lang.argv(fname), wd, limits, isolation)
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    return {"program": program, "stdout": run.stdout, "stderr": run.stderr, "exit_code": run.exit_code,
            "status": classify(run, lang.name), "timestamp": int(time.time()), "wall_s": round(run.wall_s, 4),
            "isolation": run.isolation}


def _results_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.results.json"


def _reusable(path: Path, programs: list[str], limits: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if old.get("limits") != limits or [r.get("program") for r in old.get("results", [])] != programs:
        return None
    return old


def execute_run(problems: list[Problem], completions: dict[str, list[str]], out_dir: str | os.PathLike,
                workers: int = 2, limits: Limits | None = None, isolation: iso.Isolation | None = None,
                progress: bool = True) -> dict:
    """Run every completion; write per-problem results; returns a summary with status counts."""
    from adaptome.core.progress import progress_bar

    limits = limits or Limits()
    isolation = isolation or iso.detect()
    for lang in sorted({p.language for p in problems}):
        require_interpreter(get_language(lang))
        if not isolation.memory_cgroup:
            check_address_space(tuple(get_language(lang).argv_probe()), limits)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lim = asdict(limits)
    lim["env_pass"] = list(lim["env_pass"])
    jobs, reused, todo = [], 0, []
    for p in problems:
        programs = [p.program(c) for c in completions.get(p.name, [])]
        if not programs:
            continue
        if _reusable(_results_path(out_dir, p.name), programs, lim) is not None:
            reused += 1
            continue
        todo.append((p, programs))
        jobs.extend((p.name, i, p.language, prog) for i, prog in enumerate(programs))
    results: dict[str, list] = {p.name: [None] * len(progs) for p, progs in todo}
    with progress_bar("executing", total=len(jobs), enabled=progress) as bar, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futs = [(name, i, pool.submit(execute_one, language, prog, limits, isolation))
                for name, i, language, prog in jobs]
        for name, i, fut in futs:
            results[name][i] = fut.result()
            bar.advance(1)
    for p, _ in todo:
        entries = results[p.name]
        for e in entries:
            e.pop("isolation", None)
        doc = {**p.to_json(), "results": entries, "isolation": isolation.describe(), "limits": lim}
        write_text_atomic(_results_path(out_dir, p.name), json.dumps(doc, indent=1))
    return summarize(out_dir, [p.name for p in problems if completions.get(p.name)], reused=reused)


def summarize(out_dir: Path, names: list[str], reused: int = 0) -> dict:
    counts = {s: 0 for s in STATUSES}
    for name in names:
        doc = json.loads(_results_path(out_dir, name).read_text())
        for r in doc["results"]:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {"problems": len(names), "programs": sum(counts.values()), "status_counts": counts,
            "reused_problems": reused, "out_dir": str(out_dir), "isolation": iso.detect().describe()}
