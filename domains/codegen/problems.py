"""Problems and completions: MultiPL-E JSONL, a user's own JSONL, program assembly, stop tokens.

A problem is one JSON object per line with at least ``name, language, prompt, tests``
(MultiPL-E's records also carry ``doctests, original, prompt_terminology, stop_tokens``; kept
as they are). ``stop_tokens`` defaults to the language's. The program that runs is
``prompt + completion + "\\n" + tests`` (MultiPL-E's rule). A completion is cut at the first
occurrence of any stop token (``truncate``). Racket tests inside a ``test`` or ``main`` submodule
(``(module+ test ...)``, idiomatic for ``raco test``) are refused: ``racket program.rkt``, MultiPL-E's
runner, never runs a ``test`` submodule (every program exiting 0 would pass) and runs ``main`` only after
the module body, past the end-of-tests check (every program would fail); the checks belong at module level.

The shipped MultiPL-E subset (``data/multipl_e``: HumanEval and MBPP, R and Racket, the
"reworded" prompts) is for evaluation only: its licence forbids training on it
(``data_cards/codegen_multipl_e.md``).

Not covered: MultiPL-E's Hugging Face parquet copy (export it to JSONL first), the ``keep`` /
``remove`` / ``transform`` prompt variants (they load the same way if you have the files).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from adaptome.core.errors import AdaptomeError
from adaptome.domains.codegen.languages import get_language

REQUIRED = ("name", "language", "prompt", "tests")
#: a `test` / `main` submodule: the name ends at a Racket delimiter (`-` is part of an identifier, as in test-utils)
_RKT_SUBMODULE = re.compile(r"\(\s*module[+*]?\s+(test|main)(?=[\s()\[\]{}\"';]|$)")
SHIPPED = {"humaneval-r": "humaneval-r-reworded.jsonl", "humaneval-rkt": "humaneval-rkt-reworded.jsonl",
           "mbpp-r": "mbpp-r-reworded.jsonl", "mbpp-rkt": "mbpp-rkt-reworded.jsonl"}


class ProblemError(AdaptomeError, ValueError):
    """A problems or completions file is missing or malformed; the message names the file and line."""


@dataclass
class Problem:
    name: str
    language: str  # MultiPL-E key: "r" or "rkt"
    prompt: str
    tests: str
    stop_tokens: list[str]
    extra: dict = field(default_factory=dict)  # any other fields, written back unchanged

    def program(self, completion: str) -> str:
        """MultiPL-E's program: prompt + completion + newline + tests."""
        return self.prompt + completion + "\n" + self.tests

    def to_json(self) -> dict:
        return {**self.extra, "name": self.name, "language": self.language, "prompt": self.prompt,
                "tests": self.tests, "stop_tokens": list(self.stop_tokens)}


def truncate(completion: str, stop_tokens: list[str] | tuple[str, ...]) -> str:
    """Cut ``completion`` at the earliest stop token (the token itself is dropped)."""
    cut = len(completion)
    for tok in stop_tokens:
        i = completion.find(tok)
        if i != -1:
            cut = min(cut, i)
    return completion[:cut]


def shipped_path(dataset: str) -> Path:
    """Path of a shipped MultiPL-E subset: humaneval-r, humaneval-rkt, mbpp-r or mbpp-rkt."""
    if dataset not in SHIPPED:
        raise ProblemError(f"unknown shipped dataset {dataset!r}; known: {', '.join(SHIPPED)}")
    return Path(str(files("adaptome.domains.codegen") / "data" / "multipl_e" / SHIPPED[dataset]))


def resolve(source: str | os.PathLike) -> Path:
    """A shipped dataset name or a path to a JSONL file."""
    s = str(source)
    return shipped_path(s) if s in SHIPPED else Path(s)


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, record) of a JSONL file (``core.text.read_jsonl_records``: errors name the file and line)."""
    from adaptome.core.text import read_jsonl_records

    return read_jsonl_records(path, ProblemError)  # not UTF-8: one line naming the file, line and byte


def load_problems(source: str | os.PathLike, limit: int | None = None) -> list[Problem]:
    """Problems from a shipped dataset name or a JSONL path; names must be unique and tests non-empty
    (a problem without tests would pass every program that exits 0). Errors name the file and line."""
    path = resolve(source)
    out: list[Problem] = []
    seen: set[str] = set()
    for i, row in read_jsonl(path):
        missing = [k for k in REQUIRED if not isinstance(row.get(k), str)]
        if missing:
            raise ProblemError(f"{path}:{i}: missing or non-string field(s) {', '.join(missing)}")
        try:
            lang = get_language(row["language"])
        except AdaptomeError as e:
            raise ProblemError(f"{path}:{i} ({row['name']}): {e}") from None
        if not row["tests"].strip():
            raise ProblemError(f"{path}:{i} ({row['name']}): empty tests (every program would pass)")
        sub = _RKT_SUBMODULE.search(row["tests"]) if lang.name == "rkt" else None
        if sub:
            raise ProblemError(f"{path}:{i} ({row['name']}): the tests sit in a `{sub.group(1)}` submodule, which "
                               f"`racket program.rkt` (MultiPL-E's runner) "
                               + ("never runs" if sub.group(1) == "test" else "runs only after the module body")
                               + "; put the checks at module level, as MultiPL-E's tests are")
        if row["name"] in seen:
            raise ProblemError(f"{path}:{i}: duplicate problem name {row['name']!r}")
        seen.add(row["name"])
        stops = row.get("stop_tokens", list(lang.stop_tokens))
        if not (isinstance(stops, list) and all(isinstance(s, str) and s for s in stops)):
            raise ProblemError(f"{path}:{i} ({row['name']}): stop_tokens must be a list of non-empty strings")
        extra = {k: v for k, v in row.items() if k not in (*REQUIRED, "stop_tokens")}
        out.append(Problem(row["name"], lang.name, row["prompt"], row["tests"], stops, extra))
    return out[:limit] if limit else out


def load_completions(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{name: [completion, ...]}`` from a completions JSONL (one ``{name, completions}`` or
    ``{name, completion}`` object per line; several lines per name are concatenated)."""
    path = Path(path)
    out: dict[str, list[str]] = {}
    for i, row in read_jsonl(path):
        name = row.get("name")
        if not isinstance(name, str):
            raise ProblemError(f"{path}:{i}: missing field 'name'")
        if "completions" in row:
            comps = row["completions"]
        elif "completion" in row:
            comps = [row["completion"]]
        else:
            raise ProblemError(f"{path}:{i} ({name}): needs 'completions' (a list) or 'completion'")
        if not (isinstance(comps, list) and all(isinstance(c, str) for c in comps)):
            raise ProblemError(f"{path}:{i} ({name}): completions must be a list of strings")
        out.setdefault(name, []).extend(comps)
    return out
