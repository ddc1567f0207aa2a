"""In-context prompt builders, each registered by name (the ICL variants of "No Silver Bullet").

A builder turns a problem into the text the model continues; the text always *ends with the
problem's own prompt*, so the completion continues the function and the program that runs is
still ``problem.prompt + completion + tests`` (the context before it is for the model only).

* ``zero-shot``: the problem prompt alone (MultiPL-E's setting).
* ``few-shot``: worked examples in the target language, each chosen to show a language feature
  (vectorised string functions, ``cummax``, ``sapply`` in R; ``for/fold``, ``for/hash``, named
  ``let`` in Racket), then the problem.
* ``translation``: pairs of a Python solution and its R / Racket translation, then the problem
  (the variant the paper found to help most).
* ``reference``: a short reference of the language's core functions, as comments, then the problem.

Examples live in ``data/icl/examples.json``; they were written for this package (not taken from
any benchmark) and each carries a ``check`` that the tests run. An example that would hand the model
the problem's answer is skipped for that problem (the next one takes its place, so a problem may get
fewer than k when none is left): one defining a function the problem's prompt defines, or sharing a
distinctive line (>= 20 characters, whitespace collapsed) with its prompt or tests. Not covered: retrieval of
examples similar to the problem; chat templates (the builders produce plain completion prompts).
"""

from __future__ import annotations

import functools
import json
import re
from importlib.resources import files
from typing import Callable

from adaptome.core.registry import Registry
from adaptome.domains.codegen.languages import get_language
from adaptome.domains.codegen.problems import Problem

PROMPT_BUILDERS: Registry[Callable[[Problem, int], str]] = Registry("prompt builder")


@functools.cache
def icl_examples() -> dict:
    return json.loads((files("adaptome.domains.codegen") / "data" / "icl" / "examples.json").read_text())


def _comment(text: str, prefix: str) -> str:
    return "\n".join(f"{prefix} {line}".rstrip() for line in text.splitlines())


_DEFINES = {"r": re.compile(r"(?m)^\s*`?([A-Za-z.][A-Za-z0-9._]*)`?\s*(?:<-|=)\s*function\b"),
            "rkt": re.compile(r"\(\s*define\s+\(\s*([^\s()\[\]]+)")}
MIN_LINE = 20


def _lines(text: str) -> set[str]:
    return {n for n in (re.sub(r"\s+", " ", ln).strip() for ln in text.splitlines()) if len(n) >= MIN_LINE}


def _leaks(example: str, problem: Problem) -> bool:
    """Whether a worked example's text would show the model the problem's answer (see the module docstring)."""
    lang = get_language(problem.language)
    pattern = _DEFINES[lang.name]
    if set(pattern.findall(problem.prompt)) & set(pattern.findall(example)):
        return True
    return bool(_lines(example) & _lines(problem.prompt + "\n" + problem.tests))


_LANG_LINE = re.compile(r"#lang[ \t][^\n]*\n")


def split_lang_line(prompt: str) -> tuple[str, str]:
    """Racket prompts start with a ``#lang`` line (``#lang racket``, or a user's ``#lang racket/base``); it must
    stay the file's first line, before any worked example."""
    m = _LANG_LINE.match(prompt)
    return (m.group(0), prompt[m.end():]) if m else ("", prompt)


@PROMPT_BUILDERS.register("zero-shot")
def zero_shot(problem: Problem, k: int = 0) -> str:
    """The problem prompt as it is."""
    return problem.prompt


@PROMPT_BUILDERS.register("few-shot")
def few_shot(problem: Problem, k: int = 3) -> str:
    """``k`` worked examples in the target language, then the problem."""
    lang = get_language(problem.language)
    head, body = split_lang_line(problem.prompt)
    parts = []
    usable = [ex for ex in icl_examples()["few_shot"][lang.name] if not _leaks(ex["prompt"] + ex["solution"], problem)]
    for ex in usable[:k]:
        _, ex_prompt = split_lang_line(ex["prompt"])
        parts.append(f"{lang.comment} Example ({ex['feature']}):\n{ex_prompt}{ex['solution']}\n")
    return head + "\n".join(parts) + "\n" + body


@PROMPT_BUILDERS.register("translation")
def translation(problem: Problem, k: int = 2) -> str:
    """``k`` Python -> target translation pairs (Python as comments), then the problem."""
    lang = get_language(problem.language)
    head, body = split_lang_line(problem.prompt)
    parts = []
    usable = [ex for ex in icl_examples()["translation"][lang.name]
              if not _leaks(ex["target"] + "\n" + ex["python"], problem)]
    for ex in usable[:k]:
        parts.append(f"{lang.comment} Python:\n{_comment(ex['python'], lang.comment)}\n"
                     f"{lang.comment} {lang.display}:\n{ex['target']}\n")
    return head + "\n".join(parts) + "\n" + body


@PROMPT_BUILDERS.register("reference")
def reference(problem: Problem, k: int = 0) -> str:
    """A short language reference as comments, then the problem."""
    lang = get_language(problem.language)
    head, body = split_lang_line(problem.prompt)
    return head + _comment(icl_examples()["reference"][lang.name], lang.comment) + "\n\n" + body


def build_prompt(name: str, problem: Problem, k: int | None = None) -> str:
    fn = PROMPT_BUILDERS.get(name)
    return fn(problem) if k is None else fn(problem, k)
