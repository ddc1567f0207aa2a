"""The two target languages, R and Racket: how to run a program and how to grade the run.

Grading follows MultiPL-E's evaluation scripts (``evaluation/src/eval_r.py``, ``eval_racket.py``):

* R (``Rscript file.r``): exit 0 -> ``OK``; "unexpected" in the output (R's parse errors:
  ``Error: unexpected symbol``) -> ``SyntaxError``; a failing run with empty stderr ->
  ``AssertionError``; any other failure -> ``Exception`` (a failed ``stopifnot`` writes to stderr,
  so MultiPL-E counts it as ``Exception``; we keep that rule so numbers compare).
* Racket (``racket file.rkt``): ``OK`` only on exit 0 **and** empty stderr (rackunit prints a
  failed check to stderr and still exits 0); ``read-syntax`` in stderr -> ``SyntaxError``; else
  ``Exception``.

The sandbox adds ``Timeout``, ``MemoryError`` and ``OutputLimit`` (output or a file too large) before the
language rule applies
(``execute.classify``). R's own "cannot allocate vector" and Racket's "out of memory" messages also
count as ``MemoryError``.

Not covered: other MultiPL-E languages (add a ``Language`` to ``LANGUAGES``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Callable

from adaptome.core.errors import AdaptomeError


class LanguageError(AdaptomeError, ValueError):
    """An unknown language, or its interpreter is not installed."""


def _grade_r(exit_code: int, stdout: str, stderr: str) -> str:
    if exit_code == 0:
        return "OK"
    if "unexpected" in stdout or "unexpected" in stderr:
        return "SyntaxError"
    if stderr == "":
        return "AssertionError"
    return "Exception"


def _grade_racket(exit_code: int, stdout: str, stderr: str) -> str:
    if exit_code == 0 and stderr == "":
        return "OK"
    if "read-syntax" in stderr:
        return "SyntaxError"
    return "Exception"


@dataclass(frozen=True)
class Language:
    """One target language.

    Args:
        name: MultiPL-E's language key (the ``language`` field of a problem).
        interpreter: the executable run on the program file.
        suffix: the program file's suffix.
        stop_tokens: MultiPL-E's default stop tokens for completions.
        grade: (exit code, stdout, stderr) -> status, for a run that finished in its limits.
        memory_markers: stderr texts that mean the program ran out of memory.
        comment: the line-comment prefix (used by the prompt builders).
        display: the human name.
    """

    name: str
    interpreter: str
    suffix: str
    stop_tokens: tuple[str, ...]
    grade: Callable[[int, str, str], str]
    memory_markers: tuple[str, ...]
    comment: str
    display: str

    def argv(self, program_file: str) -> list[str]:
        return [self.interpreter, program_file]

    def argv_probe(self) -> list[str]:
        """A trivial program, for measuring what the interpreter needs to start."""
        return [self.interpreter, "-e", "1"]

    def available(self) -> bool:
        return shutil.which(self.interpreter) is not None


LANGUAGES: dict[str, Language] = {
    "r": Language("r", "Rscript", ".r", ("\n#", "\n```"), _grade_r,
                  ("cannot allocate vector", "cannot allocate memory", "memory exhausted"), "#", "R"),
    "rkt": Language("rkt", "racket", ".rkt", ("\n(define ", "\n#|", "\n;", "\n("), _grade_racket,
                    ("out of memory",), ";;", "Racket"),
}
ALIASES = {"R": "r", "racket": "rkt", "Racket": "rkt"}


def get_language(name: str) -> Language:
    """The language for a MultiPL-E key (``r``, ``rkt``) or a common alias (``R``, ``racket``)."""
    key = ALIASES.get(name, name)
    if key not in LANGUAGES:
        raise LanguageError(f"unknown language {name!r}; known: {', '.join(sorted(LANGUAGES))} (aliases: R, racket)")
    return LANGUAGES[key]


def require_interpreter(lang: Language) -> None:
    if not lang.available():
        raise LanguageError(f"{lang.display}: `{lang.interpreter}` is not on PATH; install it "
                            f"(Debian: apt-get install {'r-base-core' if lang.name == 'r' else 'racket'})")
