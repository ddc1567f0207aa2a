"""Prompt builders: registered by name, end with the problem's own prompt, and their worked
examples are correct programs (each runs with its check in the real interpreter)."""

from __future__ import annotations

import pytest

from adaptome.core.registry import RegistryError
from adaptome.domains.codegen.execute import execute_one
from adaptome.domains.codegen.problems import load_problems
from adaptome.domains.codegen.prompts import PROMPT_BUILDERS, build_prompt, icl_examples

from .conftest import need, short_limits

BUILDERS = ["zero-shot", "few-shot", "translation", "reference"]


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("ds", ["humaneval-r", "mbpp-rkt"])
def test_builders_end_with_the_problem_prompt(builder, ds):
    p = load_problems(ds)[0]
    text = build_prompt(builder, p)
    body = p.prompt.removeprefix("#lang racket\n")
    assert text.endswith(body)
    if p.language == "rkt":
        assert text.startswith("#lang racket\n") and text.count("#lang racket") == 1
    if builder == "zero-shot":
        assert text == p.prompt
    else:
        assert len(text) > len(p.prompt)
    if builder == "translation":
        assert "Python:" in text and ("R:" in text or "Racket:" in text)


def test_unknown_builder_lists_the_known_ones():
    with pytest.raises(RegistryError, match="few-shot"):
        PROMPT_BUILDERS.get("many-shot")


def test_few_shot_k_controls_the_number_of_examples():
    p = load_problems("humaneval-r")[0]
    assert build_prompt("few-shot", p, 1).count("# Example (") == 1
    assert build_prompt("few-shot", p, 3).count("# Example (") == 3


def test_worked_examples_are_correct_programs():
    need("Rscript")
    need("racket")
    ex = icl_examples()
    progs = []
    for lang, items in ex["few_shot"].items():
        progs += [(lang, it["prompt"] + it["solution"] + "\n" + it["check"] + "\n") for it in items]
    for lang, items in ex["translation"].items():
        head = "#lang racket\n" if lang == "rkt" else ""
        progs += [(lang, head + it["target"] + "\n" + it["check"] + "\n") for it in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda lp: execute_one(lp[0], lp[1], short_limits(timeout_s=10, cpu_s=10)), progs))
    assert [r["status"] for r in results] == ["OK"] * len(progs), [r["stderr"][:200] for r in results]
