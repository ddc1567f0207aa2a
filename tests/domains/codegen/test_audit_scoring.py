"""What ``pass-at-k`` scores after an interrupted or partial ``execute``, and what a rerun into one folder
keeps, through the real commands (problems written here, in MultiPL-E's format).

Before: pass-at-k scored an interrupted execute folder on the problems that happened to finish, with no
word about the others, and an interrupted re-run (another model's completions) into a folder left the
earlier run's results of the unfinished problems beside the new ones, scored together; a rerun of
pass-at-k without ``--compare`` left the earlier run's ``mcnemar.json`` beside the new tables; problems of
``--problems`` missing from a completions file were dropped unsaid.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

from typer.testing import CliRunner

from adaptome.domains.codegen.cli import app

from .conftest import need


def _problem(name: str, n: int) -> dict:
    return {"name": name, "language": "r", "prompt": f"# n times x\ntimes_{n} <- function(x) {{\n",
            "tests": f"stopifnot(isTRUE(all.equal(times_{n}(0.1), {0.1 * n})))"}


def _files(d, comps: dict) -> None:
    (d / "p.jsonl").write_text(json.dumps(_problem("a", 2)) + "\n" + json.dumps(_problem("b", 3)) + "\n")
    (d / "c.jsonl").write_text("".join(json.dumps({"name": k, "completions": v}) + "\n" for k, v in comps.items()))


def test_an_interrupted_execute_is_not_scored_as_if_complete(tmp_path):
    need("Rscript")
    d = tmp_path
    _files(d, {"a": ["  0\n}"], "b": ["  3 * x\n}"]})  # an earlier model's run: a fails, b passes
    res = CliRunner().invoke(app, ["execute", "--problems", str(d / "p.jsonl"), "--completions", str(d / "c.jsonl"),
                                   "--out", str(d / "ex")])
    assert res.exit_code == 0, res.output
    _files(d, {"a": ["  2 * x\n}"], "b": ["  while (TRUE) {}\n}"]})  # the new model's, interrupted during b
    cmd = [sys.executable, "-c", "from adaptome.core.cli import main; main()", "codegen", "execute", "--problems",
           str(d / "p.jsonl"), "--completions", str(d / "c.jsonl"), "--out", str(d / "ex"), "--timeout", "120"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        new_a = d / "ex" / "a.results.json"
        while not (new_a.exists() and "2 * x" in new_a.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None, "a's new results never appeared"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    runner = CliRunner()
    res = runner.invoke(app, ["pass-at-k", "--run", f"x={d / 'ex'}", "--out", str(d / "score"), "--k", "1"])
    # before: exit 0 and pass@1 = 100%, the new a scored with the earlier model's b
    assert not (d / "ex" / "b.results.json").exists()
    assert res.exit_code == 2 and "unfinished execute run: 1 of 2 problems" in res.output, res.output
    assert "Traceback" not in res.output and not (d / "score" / "pass_at_k.csv").exists()
    # finished (the loop now times out), it is scored over both problems
    res = runner.invoke(app, ["execute", "--problems", str(d / "p.jsonl"), "--completions", str(d / "c.jsonl"),
                              "--out", str(d / "ex"), "--timeout", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["pass-at-k", "--run", f"x={d / 'ex'}", "--out", str(d / "score"), "--k", "1"])
    assert res.exit_code == 0, res.output
    row = next(csv.DictReader((d / "score" / "pass_at_k.csv").open()))
    assert row["num_problems"] == "2" and float(row["estimate"]) == 0.5


def test_problems_without_completions_are_named(tmp_path):
    need("Rscript")
    _files(tmp_path, {"a": ["  2 * x\n}"]})
    res = CliRunner().invoke(app, ["execute", "--problems", str(tmp_path / "p.jsonl"), "--completions",
                                   str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "ex")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["problems_without_completions"] == ["b"]


def _results(folder, outcomes: dict) -> str:
    folder.mkdir()
    for name, ok in outcomes.items():
        (folder / f"{name}.results.json").write_text(json.dumps({"name": name, "results": [
            {"status": "OK" if o else "Exception", "exit_code": 0 if o else 1} for o in ok]}))
    return str(folder)


def test_a_rerun_without_compare_drops_the_earlier_comparison(tmp_path):
    a = _results(tmp_path / "a", {"p": [True], "q": [True]})
    b = _results(tmp_path / "b", {"p": [False], "q": [True]})
    out = tmp_path / "score"
    runner = CliRunner()
    res = runner.invoke(app, ["pass-at-k", "--run", f"a={a}", "--out", str(out), "--k", "1", "--compare", a,
                              "--compare", b])
    assert res.exit_code == 0 and (out / "mcnemar.json").exists(), res.output
    res = runner.invoke(app, ["pass-at-k", "--run", f"b={b}", "--out", str(out), "--k", "1"])
    assert res.exit_code == 0, res.output
    # before: the comparison of a and b stayed beside the table of b alone
    assert not (out / "mcnemar.json").exists()


def test_files_that_are_not_utf8_are_one_line_naming_the_file(tmp_path):
    """A Latin-1 training source or completions file was a UnicodeDecodeError traceback."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "cafe.r").write_bytes(b"f <- function(x) {\n  # caf\xe9\n  x\n}\n")
    (tmp_path / "c.jsonl").write_bytes(b'{"name": "HumanEval_101_words_string", "completions": ["caf\xe9"]}\n')
    runner = CliRunner()
    for args, where in [
        (["train", "--data", str(tmp_path / "src"), "--out", str(tmp_path / "tr"), "--max-steps", "1"],
         f"{tmp_path / 'src' / 'cafe.r'}:2: not UTF-8 text (byte 0xe9 at column 8)"),
        (["execute", "--problems", "humaneval-r", "--completions", str(tmp_path / "c.jsonl"), "--out",
          str(tmp_path / "ex")], f"{tmp_path / 'c.jsonl'}:1: not UTF-8 text (byte 0xe9 at column 60)"),
    ]:
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and where in res.output, res.output
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "tr").exists() and not (tmp_path / "ex").exists()


def test_completions_of_other_prompts_are_refused(tmp_path):
    """MultiPL-E's R and Racket problems share their names: R completions executed with --problems humaneval-rkt
    ran as Racket programs (every one a SyntaxError), without a word."""
    need("Rscript")
    need("racket")
    runner = CliRunner()
    gen = tmp_path / "gen"
    res = runner.invoke(app, ["generate", "--problems", "humaneval-r", "--limit", "2", "--max-tokens", "4",
                              "--out", str(gen)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["execute", "--problems", "humaneval-rkt", "--completions", str(gen), "--out",
                              str(tmp_path / "ex")])
    assert res.exit_code == 2 and "2 problem(s) were generated from another language or prompt" in res.output, \
        res.output
    assert not (tmp_path / "ex").exists()
    res = runner.invoke(app, ["execute", "--problems", "humaneval-r", "--completions", str(gen), "--out",
                              str(tmp_path / "ex"), "--timeout", "5"])
    assert res.exit_code == 0, res.output
