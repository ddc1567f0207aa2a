"""What ``adaptome codegen execute`` does with an output folder that already holds results, and with bad
input, through the real command: nothing stale is scored, nothing written is lost, errors are one line
naming the file and its line."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from adaptome.domains.codegen.cli import app

from .conftest import need


def _problem(name: str, n: int) -> dict:
    return {"name": name, "language": "r", "prompt": f"# n times x\ntimes_{n} <- function(x) {{\n",
            "tests": f"stopifnot(times_{n}(2) == {2 * n})"}


@pytest.fixture
def files(tmp_path):
    need("Rscript")
    (tmp_path / "ab.jsonl").write_text(json.dumps(_problem("a", 2)) + "\n" + json.dumps(_problem("b", 3)) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(_problem("b", 3)) + "\n")
    (tmp_path / "c_ab.jsonl").write_text('{"name": "a", "completions": ["  2 * x\\n}"]}\n'
                                         '{"name": "b", "completions": ["  x\\n}", "  3 * x\\n}"]}\n')
    (tmp_path / "c_b.jsonl").write_text('{"name": "b", "completions": ["  x\\n}"]}\n')
    return tmp_path


def _execute(d, problems, comps, out, *extra):
    return CliRunner().invoke(app, ["execute", "--problems", str(d / problems), "--completions", str(d / comps),
                                    "--out", str(d / out), "--timeout", "20", *extra])


def _score(d, out):
    res = CliRunner().invoke(app, ["pass-at-k", "--run", f"x={d / out}", "--out", str(d / "score"), "--k", "1"])
    assert res.exit_code == 0, res.output
    return res.output


def test_results_of_other_problems_are_refused_not_scored(files):
    d = files
    assert _execute(d, "ab.jsonl", "c_ab.jsonl", "ex").exit_code == 0
    assert "| x | 1 | 75.0% | 2 |" in _score(d, "ex")  # a: 1/1, b: 1/2
    before = {f.name: f.read_text() for f in (d / "ex").iterdir()}
    # a second run on problem b alone into the same folder: a.results.json would be scored with it
    res = _execute(d, "b.jsonl", "c_b.jsonl", "ex")
    assert res.exit_code == 2 and "a.results.json" in res.output and "--overwrite" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert {f.name: f.read_text() for f in (d / "ex").iterdir()} == before  # nothing touched
    res = _execute(d, "b.jsonl", "c_b.jsonl", "ex", "--overwrite")
    assert res.exit_code == 0, res.output
    assert sorted(f.name for f in (d / "ex").iterdir()) == ["b.results.json"]
    assert "| x | 1 | 0.0% | 1 |" in _score(d, "ex")


def test_results_are_not_reused_under_another_isolation(files):
    d = files
    res = _execute(d, "b.jsonl", "c_b.jsonl", "ex")
    assert res.exit_code == 0 and json.loads(res.output[res.output.index("{"):])["reused_problems"] == 0
    auto_level = json.loads((d / "ex" / "b.results.json").read_text())["isolation"]["level"]
    res = _execute(d, "b.jsonl", "c_b.jsonl", "ex")  # the same inputs: reused
    assert json.loads(res.output[res.output.index("{"):])["reused_problems"] == 1
    res = _execute(d, "b.jsonl", "c_b.jsonl", "ex", "--isolation", "rlimits")
    summary = json.loads(res.output[res.output.index("{"):])
    # before: reused the namespaced results and reported the auto-detected level, not the one asked for
    assert summary["reused_problems"] == 0 and summary["isolation"]["level"] == "rlimits"
    assert json.loads((d / "ex" / "b.results.json").read_text())["isolation"]["level"] == "rlimits"
    if auto_level != "rlimits":
        res = _execute(d, "b.jsonl", "c_b.jsonl", "ex")
        assert json.loads(res.output[res.output.index("{"):])["reused_problems"] == 0


def test_old_results_without_the_grader_version_are_recomputed(files):
    d = files
    assert _execute(d, "b.jsonl", "c_b.jsonl", "ex").exit_code == 0
    f = d / "ex" / "b.results.json"
    doc = json.loads(f.read_text())
    del doc["harness"]
    doc["results"][0]["status"] = "OK"  # graded by a lenient older harness
    f.write_text(json.dumps(doc))
    res = _execute(d, "b.jsonl", "c_b.jsonl", "ex")
    assert json.loads(res.output[res.output.index("{"):])["reused_problems"] == 0
    assert json.loads(f.read_text())["results"][0]["status"] == "Exception"


@pytest.mark.parametrize("content,where", [
    ("\n" + json.dumps(_problem("a", 2)) + "\n{not json\n", "p.jsonl:3: not valid JSON"),
    ("\n\n" + json.dumps({**_problem("a", 2), "tests": ""}) + "\n", "p.jsonl:3 (a): empty tests"),
    ("\n" + json.dumps({k: v for k, v in _problem("a", 2).items() if k != "tests"}) + "\n",
     "p.jsonl:2: missing or non-string field(s) tests"),
    ("\n" + json.dumps({**_problem("a", 2), "language": "python"}) + "\n", "p.jsonl:2 (a): unknown language"),
])
def test_bad_problems_are_one_line_and_destroy_nothing(files, content, where):
    d = files
    assert _execute(d, "ab.jsonl", "c_ab.jsonl", "ex").exit_code == 0
    before = {f.name: f.read_text() for f in (d / "ex").iterdir()}
    (d / "p.jsonl").write_text(content)
    res = _execute(d, "p.jsonl", "c_ab.jsonl", "ex", "--overwrite")
    assert res.exit_code == 2 and where in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert {f.name: f.read_text() for f in (d / "ex").iterdir()} == before


def test_executing_an_unfinished_generate_run_says_so(tmp_path):
    """A killed ``generate`` leaves fewer than n completions; ``execute`` of it ran them without a word, so pass@k
    silently used a smaller n than the run's config."""
    need("Rscript")
    runner = CliRunner()
    gen = tmp_path / "gen"
    res = runner.invoke(app, ["generate", "--problems", "humaneval-r", "--limit", "1", "--n", "3", "--batch-size", "1",
                              "--max-tokens", "4", "--out", str(gen)])
    assert res.exit_code == 0, res.output
    lines = (gen / "completions.jsonl").read_text().splitlines(keepends=True)
    (gen / "completions.jsonl").write_text("".join(lines[:1]))  # killed after 1 of 3 batches
    res = runner.invoke(app, ["execute", "--problems", "humaneval-r", "--completions", str(gen), "--out",
                              str(tmp_path / "ex"), "--timeout", "20"])
    assert res.exit_code == 0, res.output
    assert "unfinished generate run: 1 problem(s) have fewer completions than its n = 3" in res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["programs"] == 1 and list(summary["unfinished_generation"].values()) == [[1, 3]]
    res = runner.invoke(app, ["generate", "--problems", "humaneval-r", "--limit", "1", "--n", "3", "--batch-size", "1",
                              "--max-tokens", "4", "--out", str(gen)])  # finish it
    res = runner.invoke(app, ["execute", "--problems", "humaneval-r", "--completions", str(gen), "--out",
                              str(tmp_path / "ex"), "--timeout", "20"])
    assert "warning" not in res.output and json.loads(res.output[res.output.index("{"):])["programs"] == 3


def _procs_with(text: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if text in open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(d))
            except OSError:
                pass
    return out


@pytest.mark.parametrize("sig,level", [(signal.SIGINT, "auto"), (signal.SIGTERM, "rlimits")])
def test_ctrl_c_stops_running_and_queued_programs_and_keeps_finished_problems(files, sig, level):
    """Ctrl-C used to leave the harness running every queued program to its full timeout (minutes), with
    their daemons alive, and wrote nothing; now it stops within a second or two, leaves no process of
    the run, and keeps the results of problems that had finished (a re-run reuses them). SIGTERM ended the
    harness at once, leaving at the rlimits level the looping programs (until RLIMIT_CPU) and their setsid
    daemons alive, and their cgroups behind; now it stops as Ctrl-C does."""
    d = files
    mark = f"{secrets.randbelow(10**6) + 10**6}"
    loop = "  system('setsid sh -c \"exec sleep " + mark + "\" &'); while (TRUE) {}\n}"
    (d / "c_loop.jsonl").write_text('{"name": "a", "completions": ["  2 * x\\n}"]}\n'
                                    f'{{"name": "b", "completions": {json.dumps([loop] * 6)}}}\n')
    cmd = [sys.executable, "-c", "from adaptome.core.cli import main; main()", "codegen", "execute", "--problems",
           str(d / "ab.jsonl"), "--completions", str(d / "c_loop.jsonl"), "--out", str(d / "ex"), "--timeout", "120",
           "--isolation", level]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ((d / "ex" / "a.results.json").exists() and len(_procs_with(f"sleep {mark}")) >= 2):
            assert time.monotonic() < deadline and proc.poll() is None, "a's results never appeared while b ran"
            time.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=30)
        assert time.monotonic() - t0 < 10  # before: 3 rounds of the 120 s timeout
    finally:
        if proc.poll() is None:
            proc.kill()  # the waiters die with it (PDEATHSIG), and the namespaces with them
            proc.wait()
    deadline = time.monotonic() + 5
    while _procs_with(f"sleep {mark}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _procs_with(f"sleep {mark}")
    assert (d / "ex" / "a.results.json").exists() and not (d / "ex" / "b.results.json").exists()
    assert json.loads((d / "ex" / "a.results.json").read_text())["results"][0]["status"] == "OK"


@pytest.mark.parametrize("bad_line", ['{"name": "HumanEval_1', '{"nam": 1}'])
def test_a_corrupt_generate_folder_is_one_line_and_is_not_rewritten(tmp_path, bad_line):
    """A damaged line inside a generate folder's completions.jsonl was a JSONDecodeError / KeyError traceback in
    execute and in generate's resume."""
    runner = CliRunner()
    gen = tmp_path / "gen"
    args = ["generate", "--problems", "humaneval-r", "--limit", "1", "--n", "2", "--batch-size", "1",
            "--max-tokens", "4", "--out", str(gen)]
    assert runner.invoke(app, args).exit_code == 0
    lines = (gen / "completions.jsonl").read_text().splitlines(keepends=True)
    damaged = lines[0] + bad_line + "\n"
    (gen / "completions.jsonl").write_text(damaged)
    for res in (runner.invoke(app, ["execute", "--problems", "humaneval-r", "--completions", str(gen), "--out",
                                    str(tmp_path / "ex")]), runner.invoke(app, args)):
        assert res.exit_code == 2 and "completions.jsonl:2: not" in res.output, res.output
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert (gen / "completions.jsonl").read_text() == damaged
