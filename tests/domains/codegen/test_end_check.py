"""A pass needs the tests to have run to their end with their checks intact, through the real command.

Problems written here (not shipped), in MultiPL-E's format; each completion is graded by
``adaptome codegen execute`` and scored by ``adaptome codegen pass-at-k``. Before the end marker, an
early ``quit(status = 0)`` / ``(exit 0)``, an R completion masking ``stopifnot`` / ``isTRUE`` and a Racket
one silencing rackunit (error port to nowhere, or its own ``check-equal?``) were all graded ``OK``, and so
was an R one setting ``options(error = ...)`` (Rscript then goes on after a failed ``stopifnot`` and exits 0),
and (until grading version 2) an R one adding an S3 method of a generic the tests call
(``all.equal.numeric <- function(...) TRUE``, or ``all.equal.<class>`` for a result of its own class).
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from adaptome.domains.codegen import endcheck
from adaptome.domains.codegen.cli import app

from .conftest import grade_cases, need

R_TESTS = ("test_humaneval <- function() {\n    candidate <- sum_sq\n"
           "    stopifnot(isTRUE(all.equal(candidate(c(1, 2, 3)), 14)))\n"
           "    stopifnot(isTRUE(all.equal(candidate(c(-2)), 4)))\n}\ntest_humaneval()")
RKT_TESTS = ("(require rackunit)\n\n(define (test-humaneval) \n\n  (let (( candidate sum_sq))\n"
             "    (check-equal? (candidate (list 1 2 3)) 14)\n    (check-equal? (candidate (list -2)) 4)\n))\n\n"
             "(test-humaneval)")
PROBLEMS = [
    {"name": "sq_r", "language": "r", "prompt": "# Sum of squares.\nsum_sq <- function(x) {\n", "tests": R_TESTS},
    {"name": "sq_rkt", "language": "rkt", "prompt": "#lang racket\n;; Sum of squares.\n(define (sum_sq x)\n",
     "tests": RKT_TESTS},
    # the prompt's own function is named like a method of `sum` (an S3 generic the tests call): not masking
    {"name": "sos_r", "language": "r", "prompt": "sum.of.squares <- function(x) {\n",
     "tests": "test_humaneval <- function() {\n    candidate <- sum.of.squares\n"
              "    stopifnot(isTRUE(all.equal(candidate(c(1, 2)), sum(c(1, 4)))))\n}\ntest_humaneval()"},
]
# (completion, status the executor must give)
CASES = {
    "sq_r": [
        ("  sum(x^2)\n}\n", "OK"),
        ("  sum(x)\n}\n", "Exception"),
        ("  sum(x)\n}\nquit(status = 0)\n", "EarlyExit"),  # before the tests
        ("  quit(save = 'no', status = 0)\n}\n", "EarlyExit"),  # inside the candidate, mid-test
        ("  sum(x)\n}\nstopifnot <- function(...) invisible(TRUE)\n", "TestsBypassed"),
        ("  sum(x)\n}\nisTRUE <- function(x) TRUE\n", "TestsBypassed"),
        ("  sum(x)\n}\nattach(list(isTRUE = function(x) TRUE), name = 'helpers')\n", "TestsBypassed"),
        # Rscript goes on after the failed stopifnot and exits 0: the tests' block (and its trailer) stops
        ("  sum(x)\n}\noptions(error = function() NULL)\n", "EarlyExit"),
        ("  sq(x)\n}\nsq <- function(v) sum(v^2)\nc <- 3\n", "OK"),  # a helper, and a non-function `c`: fine
        # S3 methods of a generic the tests call (all.equal) hide their comparison
        ("  sum(x)\n}\nall.equal.numeric <- function(target, current, ...) TRUE\n", "TestsBypassed"),
        ("  structure(sum(x), class = 'sq')\n}\nall.equal.sq <- function(target, current, ...) TRUE\n",
         "TestsBypassed"),
        ("  sum(x)\n}\n.S3method('all.equal', 'numeric', function(target, current, ...) TRUE)\n", "TestsBypassed"),
        ("  sum(x)\n}\nsetMethod('all.equal', 'numeric', function(target, current, ...) TRUE)\n", "TestsBypassed"),
        # a method of a function the tests never call, a dotted name of a non-generic they call: fine
        ("  sum(x^2)\n}\nprint.sq <- function(x, ...) cat('sq', unclass(x))\n"
         "isTRUE.strict <- function(x) identical(x, TRUE)\n", "OK"),
    ],
    "sq_rkt": [
        ("  (for/sum ([v x]) (* v v)))\n", "OK"),
        ("  (for/sum ([v x]) v))\n", "Exception"),  # rackunit prints the failure, exits 0
        ("  (for/sum ([v x]) v))\n(exit 0)\n", "EarlyExit"),
        ("  (for/sum ([v x]) v))\n(current-error-port (open-output-nowhere))\n", "TestsBypassed"),
        ("  (for/sum ([v x]) v))\n(define (check-equal? a b) (void))\n", "TestsBypassed"),
    ],
    "sos_r": [
        ("  sum(x^2)\n}\n", "OK"),
        ("  sum(x)\n}\n", "Exception"),
    ],
}
BY_NAME = {p["name"]: p for p in PROBLEMS}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    need("Rscript")
    need("racket")
    d = tmp_path_factory.mktemp("endcheck")
    return d, grade_cases(d, PROBLEMS, CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_only_programs_whose_tests_ran_to_the_end_pass(graded, name):
    _, docs = graded
    got = [(r["status"], r.get("harness_note", "")) for r in docs[name]["results"]]
    want = [s for _, s in CASES[name]]
    assert [s for s, _ in got] == want, got
    assert all(note for s, note in got if s in ("EarlyExit", "TestsBypassed"))
    assert docs[name]["harness"] == endcheck.HARNESS
    # the recorded program is MultiPL-E's (prompt + completion + tests), without the marker trailer
    assert docs[name]["results"][0]["program"] == BY_NAME[name]["prompt"] + CASES[name][0][0] + "\n" + \
        BY_NAME[name]["tests"]


def test_pass_at_k_counts_only_real_passes(graded):
    d, _ = graded
    r = CliRunner().invoke(app, ["pass-at-k", "--run", f"u={d / 'exec'}", "--out", str(d / "score"), "--k", "1"])
    assert r.exit_code == 0, r.output
    rows = list(__import__("csv").DictReader((d / "score" / "pass_at_k.csv").open()))
    # R: the correct solution, the helper one and the one with print / isTRUE.strict; Racket: the correct one
    want = (3 / 14 + 1 / 5 + 1 / 2) / 3
    assert float(rows[0]["estimate"]) == pytest.approx(want, abs=1e-6)


def test_check_extraction():
    r = endcheck.for_problem("r", R_TESTS, PROBLEMS[0]["prompt"])
    assert set(r.watched) == {"candidate", "test_humaneval", "stopifnot", "isTRUE", "all.equal", "c"}
    assert r.defined == ("sum_sq",)  # the prompt's own functions: never masking, nor methods
    assert endcheck.for_problem("rkt", RKT_TESTS).min_checks == 2
    looped = "(require rackunit)\n(for ([i 3]) (check-equal? i i))\n(check-true #t)"
    assert endcheck.for_problem("rkt", looped).min_checks == 1  # a loop: only "some check ran"
    assert endcheck.verdict(endcheck.EndCheck("r"), None, "n")[0] == "EarlyExit"
    assert endcheck.verdict(endcheck.EndCheck("r"), "forged\n", "n")[0] == "EarlyExit"
