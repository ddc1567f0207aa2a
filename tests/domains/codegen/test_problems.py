"""Problems and completions files: MultiPL-E records, a user's JSONL, bad input, stop tokens."""

from __future__ import annotations

import json

import pytest

from adaptome.domains.codegen.problems import ProblemError, load_completions, load_problems, shipped_path, truncate


def test_shipped_sets_load_with_multipl_e_fields():
    for ds, lang, stops in (("humaneval-r", "r", ["\n#", "\n```"]),
                            ("mbpp-rkt", "rkt", ["\n(define ", "\n#|", "\n;", "\n("])):
        probs = load_problems(ds)
        assert len(probs) == 20
        assert all(p.language == lang and p.stop_tokens == stops for p in probs)
        assert shipped_path(ds).is_file()
    p = load_problems("humaneval-rkt")[0]
    assert p.prompt.startswith("#lang racket") and "rackunit" in p.tests
    assert p.program("  1)") == p.prompt + "  1)" + "\n" + p.tests  # MultiPL-E's program rule
    assert p.to_json()["prompt_terminology"] == "reworded"  # extra fields survive


def test_user_problems_default_to_the_language_stop_tokens(tmp_path):
    f = tmp_path / "mine.jsonl"
    row = {"name": "inc", "language": "R", "prompt": "inc <- function(x) {", "tests": "stopifnot(inc(1) == 2)"}
    f.write_text(json.dumps(row) + "\n")
    (p,) = load_problems(f)
    assert p.language == "r" and p.stop_tokens == ["\n#", "\n```"]


@pytest.mark.parametrize("content,message", [
    ('{"name": "a", "language": "r", "prompt": "x"}\n', ":1: missing or non-string field(s) tests"),
    ('{"name": "a", "language": "cobol", "prompt": "x", "tests": "y"}\n', "unknown language 'cobol'"),
    # the FILE's line, blank lines counted (it said "record 1" for line 3)
    ('\n\n{"name": "a", "language": "cobol", "prompt": "x", "tests": "y"}\n', ":3 (a): unknown language 'cobol'"),
    # a problem without tests passed every program that exits 0
    ('{"name": "a", "language": "r", "prompt": "x", "tests": " \\n"}\n', ":1 (a): empty tests"),
    ('{"name": "a", "language": "r", "prompt": "x", "tests": "y"}\n{"name": "a", "language": "r", "prompt": "x", '
     '"tests": "y"}\n', "duplicate problem name 'a'"),
    ('{"name": "a"\n', ":1: not valid JSON"),
    ("", "no records"),
])
def test_bad_problems_name_the_file_and_problem(tmp_path, content, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(ProblemError) as e:
        load_problems(f)
    assert str(f) in str(e.value) and message in str(e.value)


def test_completions_files(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"name": "a", "completions": ["x", "y"]}\n{"name": "a", "completion": "z"}\n')
    assert load_completions(f) == {"a": ["x", "y", "z"]}
    f.write_text('{"name": "a", "completions": "x"}\n')
    with pytest.raises(ProblemError, match="must be a list of strings"):
        load_completions(f)


def test_truncate_cuts_at_the_earliest_stop_token():
    stops = ["\n(define ", "\n#|", "\n;", "\n("]
    assert truncate("  (+ a b))\n(define (g) 1)\n; more", stops) == "  (+ a b))"
    assert truncate("  (+ a b))\n; c\n(define x 1)", stops) == "  (+ a b))"
    assert truncate("no stop here", stops) == "no stop here"
