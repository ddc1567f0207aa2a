"""Racket completions that forge the end-of-tests check, graded through ``adaptome codegen execute``.

Problems written here (not shipped), in MultiPL-E's format. Before grading version 3 each of these wrong
completions was graded ``OK``: a ``check-equal?`` macro of the program's own that logs a passing
``check-true`` (the logged count stayed right), and a program with stderr silenced that shadowed a name the
trailer used (``adaptome-test-log``, ``car``) so that it wrote no failure. Tests that define their own check
helper, and a correct program with a ``check-...`` helper the tests never call, stay ``OK``.
"""

from __future__ import annotations

import pytest

from .conftest import grade_cases, need

RKT_TESTS = ("(require rackunit)\n\n(define (test-humaneval) \n\n  (let (( candidate rev))\n"
             "    (check-equal? (candidate (list 1 2 3)) (list 3 2 1))\n"
             "    (check-equal? (candidate (list \"é\" \"ü\")) (list \"ü\" \"é\"))\n))\n\n(test-humaneval)")
# the tests' own helper is a `check-...` form defined in the tests: not the program's redefinition
OWN_HELPER_TESTS = ("(require rackunit)\n(define (check-sorted l) (check-equal? l (sort l <)))\n\n"
                    "(define (test-humaneval) \n\n  (let (( candidate srt))\n"
                    "    (check-sorted (candidate (list 3 1 2)))\n))\n\n(test-humaneval)")
PROBLEMS = [
    {"name": "rev_rkt", "language": "rkt", "prompt": "#lang racket\n;; Reverse a list.\n(define (rev x)\n",
     "tests": RKT_TESTS},
    {"name": "srt_rkt", "language": "rkt", "prompt": "#lang racket\n;; Sort a list.\n(define (srt x)\n",
     "tests": OWN_HELPER_TESTS},
]
SILENT = "(current-error-port (open-output-nowhere))\n"
CASES = {
    "rev_rkt": [
        ("  (reverse x))\n", "OK"),
        ("  (reverse x))\n(define (check-input x) (list? x))\n", "OK"),  # a helper the tests never call
        ("  x)\n(require (only-in rackunit [check-true ct]))\n(define-syntax-rule (check-equal? a b) (ct #t))\n",
         "TestsBypassed"),
        ("  x)\n(define (adaptome-test-log) (cons 0 5))\n" + SILENT, "TestsBypassed"),
        ("  x)\n(define (car p) 0)\n" + SILENT, "TestsBypassed"),
    ],
    "srt_rkt": [
        ("  (sort x <))\n", "OK"),
        ("  x)\n", "Exception"),
    ],
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    need("racket")
    return grade_cases(tmp_path_factory.mktemp("forged"), PROBLEMS, CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_racket_programs_cannot_forge_the_end_check(graded, name):
    got = [(r["status"], r.get("harness_note", ""), r["stderr"][-300:]) for r in graded[name]["results"]]
    assert [s for s, _, _ in got] == [s for _, s in CASES[name]], got
    assert all(note for s, note, _ in got if s == "TestsBypassed")
