"""Audit round 3 of codegen, through the CLI: a right program printing past 1 MB is graded as MultiPL-E
grades it (its output past the first 2 KB discarded, not a failure); few-shot / translation / reference
prompts keep a user's ``#lang racket/base`` line first; ``train`` refuses a reference solution whose
signature line is short or reformatted, drops exact duplicate examples, and reports a held-out loss."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from adaptome.domains.codegen.cli import app

from .conftest import grade_cases, need

R_PROBLEM = {"name": "my_double", "language": "r", "prompt": "# Double x.\ndouble_it <- function(x) {\n",
             "tests": "test_humaneval <- function() {\n    candidate <- double_it\n"
                      "    stopifnot(isTRUE(all.equal(candidate(2), 4)))\n}\ntest_humaneval()"}
RKT_PROBLEM = {"name": "my_double_rkt", "language": "rkt", "prompt": "#lang racket\n\n;; Double x.\n(define (dbl x)\n",
               "tests": "(require rackunit)\n\n(define (test-humaneval) \n  (let (( candidate dbl))\n"
                        "    (check-equal? (candidate 2) 4)\n))\n\n(test-humaneval)"}
# about 1.5 MB of output, then the right answer
R_CHATTY = "  for (i in 1:30000) cat(strrep('y', 50), '\\n')\n  x * 2\n}\n"
RKT_CHATTY = "  (for ([i 30000]) (displayln (make-string 50 #\\y)))\n  (* 2 x))\n"


def test_a_right_program_printing_past_a_megabyte_passes_as_in_multipl_e(tmp_path):
    """MultiPL-E keeps the first 2 KB of output and grades the exit status; the sandbox killed such a run
    at 1 MB and graded it OutputLimit, so pass@k counted a right program as a failure."""
    need("Rscript")
    need("racket")
    got = grade_cases(tmp_path, [R_PROBLEM, RKT_PROBLEM],
                      {"my_double": [(R_CHATTY, "OK")], "my_double_rkt": [(RKT_CHATTY, "OK")]})
    for name, doc in got.items():
        (r,) = doc["results"]
        assert r["status"] == "OK" and r["exit_code"] == 0, (name, r["status"], r["stderr"][:300])
        assert r["stdout"].startswith("y" * 50) and len(r["stdout"]) <= 2048  # MultiPL-E's 2 KB kept
    # the early stop is still there for whoever wants it, as an option
    res = CliRunner().invoke(app, ["execute", "--problems", str(tmp_path / "problems.jsonl"), "--completions",
                                   str(tmp_path / "completions.jsonl"), "--out", str(tmp_path / "capped"),
                                   "--max-output-mb", "1", "--timeout", "20"])
    assert res.exit_code == 0, res.output
    capped = [json.loads(f.read_text())["results"][0] for f in sorted((tmp_path / "capped").glob("*.results.json"))]
    assert [r["status"] for r in capped] == ["OutputLimit", "OutputLimit"]
    res = CliRunner().invoke(app, ["execute", "--problems", str(tmp_path / "problems.jsonl"), "--completions",
                                   str(tmp_path / "completions.jsonl"), "--out", str(tmp_path / "bad"),
                                   "--max-output-mb", "-1"])
    assert res.exit_code == 2 and "output limit" in res.output and "Traceback" not in res.output, res.output


def test_prompts_keep_a_racket_base_lang_line_first(tmp_path):
    """Only ``#lang racket`` was recognised: with ``#lang racket/base`` the worked examples came before the
    ``#lang`` line, which the model then saw in the middle of its context."""
    problem = dict(RKT_PROBLEM, name="base_dbl", prompt="#lang racket/base\n\n;; Double x.\n(define (dbl x)\n")
    (tmp_path / "p.jsonl").write_text(json.dumps(problem) + "\n")
    from adaptome.domains.codegen.problems import load_problems
    from adaptome.domains.codegen.prompts import build_prompt

    res = CliRunner().invoke(app, ["generate", "--problems", str(tmp_path / "p.jsonl"), "--prompt-builder",
                                   "few-shot", "--n", "1", "--max-tokens", "2", "--out", str(tmp_path / "gen")])
    assert res.exit_code == 0, res.output
    for builder in ("few-shot", "translation", "reference"):  # the texts generate gives the model
        text = build_prompt(builder, load_problems(tmp_path / "p.jsonl")[0])
        assert text.startswith("#lang racket/base\n") and text.count("#lang") == 1, (builder, text[:200])
        assert text.endswith(problem["prompt"][len("#lang racket/base\n"):])
    # PLANSEARCH's code prompts too (the plan went above the #lang line)
    res = CliRunner().invoke(app, ["plansearch", "--problems", str(tmp_path / "p.jsonl"), "--num-observations", "1",
                                   "--max-observation-k", "0", "--num-layers", "1", "--without-fix",
                                   "--observation-tokens", "2", "--plan-tokens", "2", "--code-tokens", "2",
                                   "--no-execute", "--out", str(tmp_path / "ps")])
    assert res.exit_code == 0, res.output
    steps = [json.loads(ln) for ln in (tmp_path / "ps" / "plansearch_log.jsonl").read_text().splitlines()]
    codes = [s["prompt"] for s in steps if s["step"] == "code"]
    assert codes and all(c.startswith("#lang racket/base\n") and c.count("#lang") == 1 for c in codes), codes[0]


def _train(out, *data, extra=()):
    args = ["train", "--out", str(out), "--max-steps", "2", "--warmup-steps", "1", "--batch-size", "2",
            "--block-size", "64", *extra]
    for d in data:
        args += ["--data", str(d)]
    return CliRunner().invoke(app, args)


def test_a_short_or_reformatted_reference_signature_is_refused(tmp_path):
    """``(define (add lst)`` (17 characters) and ``words_string<-function(s){`` (no spaces) passed the 20-character
    shared-line check: a solution of HumanEval_85_add / _101_words_string trained without a word."""
    cases = {"add.rkt": "#lang racket\n(define (add lst)\n  (for/sum ([x lst] [i (in-naturals)] #:when (odd? i)"
                        " #:when (even? x)) x))\n",
             "ws.R": "words_string<-function(s){\n  strsplit(s, '[, ]+')[[1]]\n}\n",
             "ws2.R": "words_string = function(s)\n{\n  strsplit(s, '[, ]+')[[1]]\n}\n",
             # an editor's byte-order mark before the leaked line
             "bom.R": "\ufeffwords_string <- function(s) {\n  strsplit(s, '[, ]+')[[1]]\n}\n",
             # a line of the prompt reformatted inside (spaces around the punctuation)
             "cmt.R": "f <- function(x) x\n#>>> words_string( 'Hi, my name is John' )\n"}
    for name, text in cases.items():
        src = tmp_path / name.split(".")[0]
        src.mkdir()
        (src / name).write_text(text, encoding="utf-8")
        res = _train(tmp_path / f"run_{name}", src, extra=("--batch-size", "1"))
        assert res.exit_code == 2 and "evaluation problem HumanEval_" in res.output, (name, res.output)
        assert name in res.output and "Traceback" not in res.output
        assert not (tmp_path / f"run_{name}").exists()
    # ordinary code is not flagged: the same name with other parameters, other functions, short lines
    ok = tmp_path / "ok"
    ok.mkdir()
    (ok / "a.rkt").write_text("#lang racket\n(define (add a b) (+ a b))\n(define (f x)\n  x)\n")
    (ok / "b.R").write_text("words_string <- function(text, sep) {\n  strsplit(text, sep)[[1]]\n}\nx <- 1\n")
    res = _train(tmp_path / "run_ok", ok)
    assert res.exit_code == 0, res.output


def test_duplicates_are_dropped_and_a_held_out_loss_is_reported(tmp_path):
    """The same file twice was trained on twice without a word, and only the loss on the training examples
    themselves was reported (it falls under pure memorization)."""
    src = tmp_path / "src"
    src.mkdir()
    body = "scale_values_by <- function(values, factor) {\n  values * factor\n}\n"
    for i, text in enumerate([body, body, "#lang racket\n(define (triple-it q) (* 3 q))\n",
                              "clamp_to_range <- function(v, lo, hi) {\n  pmin(pmax(v, lo), hi)\n}\n",
                              "#lang racket\n(define (sum-squares xs) (for/sum ([x xs]) (* x x)))\n"]):
        (src / f"f{i}{'.rkt' if 'racket' in text else '.R'}").write_text(text)
    pairs = tmp_path / "pairs.jsonl"
    line = json.dumps({"source": "def inc(v):\n    return v + 1", "target": "inc_value <- function(v) v + 1",
                       "target_language": "r"}) + "\n"
    pairs.write_text(line + line)
    out = tmp_path / "run"
    res = _train(out, src, pairs, extra=("--holdout", "0.25"))
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["duplicate_examples"] == 2  # f1.R repeats f0.R; pairs.jsonl:2 repeats pairs.jsonl:1
    assert s["heldout_examples"] == 1 and s["examples"] == 4  # 5 distinct: 1 held out, 4 trained on
    assert s["heldout_loss_before"] > 0 and s["heldout_loss_after"] > 0
    plain = _train(tmp_path / "plain", src, src)  # the same folder given twice: once
    assert plain.exit_code == 0, plain.output
    s = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert s["heldout_examples"] == 0 and s["heldout_loss_after"] is None and s["examples"] == 4
    assert s["duplicate_examples"] == 6  # f1.R, then the second copy of all five files
    for bad in ("1", "-0.1"):
        res = _train(tmp_path / f"bad{bad}", src, extra=("--holdout", bad))
        assert res.exit_code == 2 and f"--holdout {float(bad)}" in res.output, res.output
        assert "Traceback" not in res.output and not (tmp_path / f"bad{bad}").exists()
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.R").write_text(body)
    res = _train(tmp_path / "one_run", one, extra=("--holdout", "0.5"))
    assert res.exit_code == 2 and "none to train on" in res.output and "Traceback" not in res.output, res.output


def test_no_process_of_a_timed_out_user_namespace_run_outlives_it():
    """Without a pids cgroup to sweep (the user-namespace level), the harness killed the waiter and returned
    while the kernel was still killing the namespace: 30 `setsid` daemons were left for a moment after the
    run, in about half the runs (a flaky failure of test_execute's userns test on a loaded machine)."""
    need("Rscript")
    import time
    from pathlib import Path

    from adaptome.domains.codegen import isolation as iso
    from adaptome.domains.codegen.execute import execute_one
    from adaptome.domains.codegen.sandbox import Limits

    userns = iso.detect("userns")
    if userns.level != "userns":
        import pytest

        pytest.skip(f"user namespaces are not allowed here: {userns.notes}")
    mark = "6161.25"

    def left() -> int:
        n = 0
        for d in Path("/proc").iterdir():
            try:
                n += d.name.isdigit() and mark.encode() in (d / "cmdline").read_bytes()
            except OSError:
                pass
        return n

    prog = f"for (i in 1:30) system(\"setsid sh -c 'exec sleep {mark}' &\")\nrepeat {{}}\n"
    counts = []
    for _ in range(4):
        r = execute_one("r", prog, Limits(timeout_s=2.5, cpu_s=3, memory_mb=256, max_procs=64), isolation=userns)
        counts.append(left())  # at once, as a caller starting the next program sees the machine
        assert r["status"] == "Timeout", r["stderr"][:300]
        time.sleep(0.2)
    assert counts == [0, 0, 0, 0]


def test_racket_tests_in_a_test_or_main_submodule_are_refused(tmp_path):
    """Tests written the `raco test` way, in `(module+ test ...)`: `racket program.rkt` never ran them, so the
    right program and the wrong one were both graded TestsBypassed (0 checks logged); in `(module+ main ...)`
    they run after the end check, and the wrong program's failure was graded Exception, the right one
    TestsBypassed. Now the problems file is refused, naming the file, line and problem."""
    for i, sub in enumerate(("module+ test", "module+ main", "module test racket")):
        problem = dict(RKT_PROBLEM, name=f"sub{i}",
                       tests=f"({sub}\n  (require rackunit)\n  (check-equal? (dbl 2) 4))\n")
        (tmp_path / "p.jsonl").write_text(json.dumps(RKT_PROBLEM) + "\n" + json.dumps(problem) + "\n")
        (tmp_path / "c.jsonl").write_text(json.dumps({"name": f"sub{i}", "completions": ["  (* 2 x))\n"]}) + "\n")
        res = CliRunner().invoke(app, ["execute", "--problems", str(tmp_path / "p.jsonl"), "--completions",
                                       str(tmp_path / "c.jsonl"), "--out", str(tmp_path / f"ex{i}")])
        assert res.exit_code == 2 and f"p.jsonl:2 (sub{i})" in res.output and "submodule" in res.output, res.output
        assert "Traceback" not in res.output and not (tmp_path / f"ex{i}").exists()
