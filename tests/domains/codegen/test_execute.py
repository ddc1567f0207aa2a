"""The executor grades as MultiPL-E does: hand-written correct solutions pass; wrong, crashing,
non-terminating and malformed ones get the right status. Results are MultiPL-E results files."""

from __future__ import annotations

import json
import os
import shutil
from importlib.resources import files
from pathlib import Path

import pytest

from adaptome.domains.codegen import isolation as iso
from adaptome.domains.codegen.execute import execute_one, execute_run
from adaptome.domains.codegen.problems import load_completions, load_problems

from .conftest import need, short_limits

REF = Path(str(files("adaptome.domains.codegen") / "data" / "reference"))


def _run_references(tmp_path_factory, sets: tuple[str, ...]) -> dict:
    need("Rscript")
    need("racket")
    out = {}
    for lang in ("r", "rkt"):
        probs = [p for s in sets for p in load_problems(f"{s}-{lang}")]
        names = {p.name for p in probs}
        comps = {k: v for k, v in load_completions(REF / f"{lang}.jsonl").items() if k in names}
        folder = tmp_path_factory.mktemp(f"ref_{lang}")
        summary = execute_run(probs, comps, folder, workers=2, limits=short_limits(timeout_s=15, cpu_s=15),
                              progress=False)
        out[lang] = (probs, comps, folder, summary)
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    return _run_references(tmp_path_factory, ("humaneval",))


@pytest.mark.parametrize("lang", ["r", "rkt"])
def test_hand_written_solutions_pass(reference_run, lang):
    probs, comps, folder, summary = reference_run[lang]
    assert len(comps) >= 19  # 19 (R) / 20 (Racket) of the 20 shipped HumanEval problems (all 40: slow test)
    assert summary["status_counts"]["OK"] == len(comps), summary["status_counts"]
    doc = json.loads((folder / f"{next(iter(comps))}.results.json").read_text())
    assert set(doc["results"][0]) >= {"program", "stdout", "stderr", "exit_code", "status", "timestamp"}
    assert doc["isolation"]["level"] == iso.detect().level


@pytest.mark.slow
def test_all_hand_written_solutions_pass_humaneval_and_mbpp(tmp_path_factory):
    runs = _run_references(tmp_path_factory, ("humaneval", "mbpp"))
    for lang, (probs, comps, _, summary) in runs.items():
        assert len(comps) >= 37, lang  # 37 of 40 in R, 38 of 40 in Racket
        assert summary["status_counts"]["OK"] == len(comps), (lang, summary["status_counts"])


def test_results_are_reused_only_for_the_same_programs_and_limits(reference_run, tmp_path):
    probs, comps, ref_folder, _ = reference_run["r"]
    name = "HumanEval_24_largest_divisor"
    p = [q for q in probs if q.name == name]
    folder = tmp_path / "one"  # a folder of this problem alone (others in it would be refused as stale)
    folder.mkdir()
    shutil.copy(ref_folder / f"{name}.results.json", folder)
    again = execute_run(p, {name: comps[name]}, folder, limits=short_limits(timeout_s=15, cpu_s=15), progress=False)
    assert again["reused_problems"] == 1
    wrong = {name: ["\n  n - 1\n}"]}
    redo = execute_run(p, wrong, folder, limits=short_limits(timeout_s=15, cpu_s=15), progress=False)
    assert redo["reused_problems"] == 0 and redo["status_counts"]["Exception"] == 1


R_BAD = {
    "wrong": ("\n  n - 1\n}", "Exception"),  # stopifnot fails: stderr holds the error (MultiPL-E: Exception)
    "crash": ("\n  stop('boom')\n}", "Exception"),
    "syntax": ("\n  n +* ) 1\n}", "SyntaxError"),
    "silent_exit": ("\n  quit(status = 1)\n}", "AssertionError"),  # failure with empty stderr
    "loop": ("\n  while (TRUE) {}\n}", "Timeout"),
}
RKT_BAD = {
    "wrong": ("  (- n 1))", "Exception"),  # rackunit failure: exit 0 but stderr not empty
    "crash": ("  (car '()))", "Exception"),
    "syntax": ("  (+ 1 2", "SyntaxError"),
    "loop": ("  (let loop () (loop)))", "Timeout"),
}


def test_completions_are_run_as_given_not_cut_at_stop_tokens(tmp_path):
    """As MultiPL-E's executor, ``execute`` runs a completion as given: only generation cuts at stop tokens.
    The README said "Completions are cut at the first stop token" of the problems' completions in general."""
    need("Rscript")
    p = next(q for q in load_problems("humaneval-r") if q.name == "HumanEval_24_largest_divisor")
    # right up to the stop token "\n#"; after it, a redefinition that makes the tests fail
    completion = ("\n  for (d in seq(n - 1, 1)) if (n %% d == 0) return(d)\n}\n# after the stop token\n"
                  "largest_divisor <- function(n) 0\n")
    assert "\n#" in p.stop_tokens and "\n#" in completion
    res = execute_run([p], {p.name: [completion]}, tmp_path, workers=1, limits=short_limits(), progress=False)
    assert res["status_counts"]["Exception"] == 1, res["status_counts"]
    doc = json.loads((tmp_path / f"{p.name}.results.json").read_text())
    assert doc["results"][0]["program"] == p.program(completion)  # uncut
    readme = Path(__file__).parents[3] / "domains" / "codegen" / "README.md"
    if readme.is_file():  # a source checkout: the README says where the cut happens
        assert "`execute` runs the completions it is given as they are" in " ".join(readme.read_text().split())


@pytest.mark.parametrize("lang,case", [("r", c) for c in R_BAD] + [("rkt", c) for c in RKT_BAD])
def test_bad_completions_get_the_right_status(lang, case):
    need("Rscript" if lang == "r" else "racket")
    completion, status = (R_BAD if lang == "r" else RKT_BAD)[case]
    p = next(q for q in load_problems(f"humaneval-{lang}") if q.name == "HumanEval_24_largest_divisor")
    # a generous limit for programs that end on their own: a loaded machine can take seconds to start racket
    timeout = 2.5 if case == "loop" else 20.0
    r = execute_one(lang, p.program(completion), short_limits(timeout_s=timeout, cpu_s=int(timeout) + 1))
    assert r["status"] == status, (r["exit_code"], r["stderr"][:300])
    if case == "wrong" and lang == "rkt":
        assert r["exit_code"] == 0 and "FAILURE" in r["stderr"]  # why Racket needs the stderr rule


def test_weakest_isolation_still_kills_setsid_daemons_and_loops():
    need("Rscript")
    weak = iso.detect("rlimits")
    assert weak.level == "rlimits"
    mark = "8888.5"
    prog = f"system(\"setsid sh -c 'exec sleep {mark}' &\")\nrepeat {{}}\n"
    r = execute_one("r", prog, short_limits(timeout_s=4), isolation=weak)
    assert r["status"] == "Timeout" and r["isolation"]["level"] == "rlimits"
    left = [d for d in Path("/proc").iterdir() if d.name.isdigit() and _cmd(d).find(mark) >= 0]
    if weak.pids_cgroup:  # the pids cgroup sweep is what reaches a process that left the group
        assert left == []


def _cmd(d: Path) -> str:
    try:
        return (d / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
def test_without_a_memory_cgroup_rlimit_as_is_measured_and_bounds_memory(tmp_path):
    import dataclasses

    from adaptome.domains.codegen.sandbox import SandboxError, min_address_space_mb

    need("Rscript")
    no_cg = dataclasses.replace(iso.detect(), memory_cgroup=None)
    start = min_address_space_mb(("Rscript", "-e", "1"))
    assert 16 < start < 1024
    p = next(q for q in load_problems("humaneval-r") if q.name == "HumanEval_24_largest_divisor")
    bomb = "\n  x <- list(); repeat { x[[length(x) + 1]] <- runif(5e6) }\n}"
    r = execute_one("r", p.program(bomb), short_limits(memory_mb=start + 200), isolation=no_cg)
    assert r["status"] == "MemoryError" and r["isolation"]["memory"] == "rlimit_as", r["stderr"][:300]
    with pytest.raises(SandboxError, match="too small"):
        execute_run([p], {p.name: ["\n  1\n}"]}, tmp_path / "never", limits=short_limits(memory_mb=start),
                    isolation=no_cg, progress=False)
    assert not (tmp_path / "never").exists()


def test_user_namespace_path_contains_network_writes_and_daemons(tmp_path):
    """The non-root path (a user namespace holding the PID / network / mount namespaces)."""
    need("Rscript")
    import os
    import shutil
    import socket
    import tempfile

    userns = iso.detect("userns")
    if userns.level != "userns":
        pytest.skip(f"user namespaces are not allowed here: {userns.notes}")
    target = Path(tempfile.mkdtemp(prefix="adaptome-outside-"))
    os.chmod(target, 0o777)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    mark = "9191.5"
    prog = (f"system(\"setsid sh -c 'exec sleep {mark}' &\")\n"
            f"try(writeLines('x', '{target}/f.txt'))\n"
            f"try(socketConnection('127.0.0.1', {listener.getsockname()[1]}, blocking = TRUE, open = 'r+', "
            f"timeout = 2))\n"
            "cat(Sys.getenv('HOME'), '\\n')\nrepeat {}\n")
    try:
        r = execute_one("r", prog, short_limits(timeout_s=8), isolation=userns)
        with pytest.raises(TimeoutError):
            listener.accept()
        assert list(target.iterdir()) == []
    finally:
        listener.close()
        shutil.rmtree(target, ignore_errors=True)
    assert r["status"] == "Timeout" and r["isolation"]["level"] == "userns"
    assert "Read-only file system" in r["stderr"] and "adaptome-exec-" in r["stdout"]
    left = [d for d in Path("/proc").iterdir() if d.name.isdigit() and _cmd(d).find(mark) >= 0]
    assert left == []


def test_weakest_isolation_does_not_wait_for_a_daemon_holding_the_pipes():
    need("Rscript")
    weak = iso.detect("rlimits")
    mark = "8787.5"
    r = execute_one("r", f"system(\"setsid sh -c 'exec sleep {mark}' &\")\ncat('done\\n')\n",
                    short_limits(timeout_s=20), isolation=weak)
    assert r["status"] == "OK" and "done" in r["stdout"] and r["wall_s"] < 10  # not the 20 s timeout
    left = [d for d in Path("/proc").iterdir() if d.name.isdigit() and _cmd(d).find(mark) >= 0]
    if weak.pids_cgroup:
        assert left == []


@pytest.mark.parametrize("lang,prog", [
    ("r", 'writeBin(raw(10e6), "big.bin")\n'),
    ("rkt", '#lang racket\n(with-output-to-file "big.bin" (lambda () (write-bytes (make-bytes 10000000 65))))\n'),
])
def test_a_file_past_the_size_limit_is_an_output_limit(lang, prog):
    need("Rscript" if lang == "r" else "racket")
    r = execute_one(lang, prog, short_limits(file_size_mb=4))
    assert r["status"] == "OutputLimit" and r["exit_code"] == -25  # SIGXFSZ
    r = execute_one(lang, prog, short_limits(file_size_mb=16))  # the same program within the limit
    assert r["status"] == "OK"


def test_cpu_time_limit_ends_a_busy_program_before_the_wall_clock():
    need("Rscript")
    r = execute_one("r", "repeat {}\n", short_limits(timeout_s=20, cpu_s=1))
    assert r["status"] == "Timeout" and r["exit_code"] in (-24, -9) and r["wall_s"] < 15  # SIGXCPU, not the 20 s


def test_a_killed_harness_per_run_cgroups_are_removed_by_the_next_run():
    """A per-run cgroup whose owner process is gone and that holds no process is removed when the next run
    creates its own; one whose owner lives, and one of the old unowned names, are left alone."""
    import subprocess
    from pathlib import Path

    from adaptome.domains.codegen.sandbox import _Cgroups, remove_stale

    i = iso.detect()
    parents = [Path(p) for p in (i.memory_cgroup, i.pids_cgroup) if p]
    if not parents:
        pytest.skip("no memory or pids cgroup to create per-run cgroups in on this machine")
    gone = subprocess.Popen(["true"])
    gone.wait()
    made = []
    for parent in parents:
        for name in (f"adaptome-run-{gone.pid}-deadbeef0001", f"adaptome-run-{os.getpid()}-livebeef0001",
                     "adaptome-run-0123456789ab"):
            (parent / name).mkdir()
            made.append(parent / name)
    try:
        cg = _Cgroups(i, short_limits())  # a fresh run's cgroups: the sweep runs first
        try:
            for parent in parents:
                assert not (parent / f"adaptome-run-{gone.pid}-deadbeef0001").exists()
                assert (parent / f"adaptome-run-{os.getpid()}-livebeef0001").is_dir()
                assert (parent / "adaptome-run-0123456789ab").is_dir()
            assert all(d.name.startswith(f"adaptome-run-{os.getpid()}-") for d in cg.dirs)
        finally:
            cg.sweep_and_remove()
        assert remove_stale(parents[0]) == []  # nothing stale is left; live and unowned ones stay
    finally:
        for d in made:
            if d.exists():
                d.rmdir()
