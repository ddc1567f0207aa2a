"""Review (session 13) regression in codegen, through ``adaptome codegen execute``; it failed before its fix:

* a Racket problem whose tests define a helper module named ``test-utils`` (or ``main-helpers``) was refused as
  "tests in a test submodule" (``\\b`` ended the name at ``-``, a character of Racket identifiers), although
  ``racket program.rkt`` runs its checks at module level.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adaptome.domains.codegen.cli import app

from .conftest import grade_cases, need

PROMPT = "#lang racket\n\n;; Add a and b.\n(define (add a b)\n"
CHECKS = "(require rackunit)\n(check-equal? (add 1 2) 3)\n(check-equal? (add 2 2) (double 2))\n"
HELPERS = {
    "test-utils": "(module test-utils racket (provide double) (define (double x) (* 2 x)))\n(require 'test-utils)\n",
    "main-helpers": "(module+ main-helpers (define unused 0))\n(define (double x) (* 2 x))\n",
}


@pytest.mark.parametrize("helper", sorted(HELPERS))
def test_a_racket_helper_module_named_test_something_is_not_a_test_submodule(tmp_path, helper):
    need("racket")
    problem = {"name": "add_rkt", "language": "rkt", "prompt": PROMPT, "tests": HELPERS[helper] + CHECKS}
    got = grade_cases(tmp_path, [problem], {"add_rkt": [("  (+ a b))\n", "OK"), ("  (- a b))\n", "Exception")]})
    right, wrong = got["add_rkt"]["results"]  # before: refused, "the tests sit in a `test` submodule"
    assert right["status"] == "OK", right["stderr"][:300]
    assert wrong["status"] != "OK" and "FAILURE" in wrong["stderr"], wrong


@pytest.mark.parametrize("sub", ["(module+ test", "(module* main #f", "( module test racket",
                                 "(module+ main;comment"])
def test_a_real_test_or_main_submodule_is_still_refused(tmp_path, sub):
    problem = {"name": "add_rkt", "language": "rkt", "prompt": PROMPT,
               "tests": f"{sub}\n  (require rackunit)\n  (check-equal? (add 1 2) 3))\n"}
    (tmp_path / "p.jsonl").write_text(json.dumps(problem) + "\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"name": "add_rkt", "completions": ["  (+ a b))\n"]}) + "\n")
    res = CliRunner().invoke(app, ["execute", "--problems", str(tmp_path / "p.jsonl"), "--completions",
                                   str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "ex")])
    assert res.exit_code == 2 and "p.jsonl:1 (add_rkt)" in res.output and "submodule" in res.output, res.output
