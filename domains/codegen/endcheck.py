"""Did the tests run to their end, with their checks intact? The end-of-tests marker.

MultiPL-E grades an R program ``OK`` on exit code 0, and a Racket one on exit 0 with empty stderr.
Neither rule knows whether the tests ran: a completion that calls ``quit(status = 0)`` (R) or
``(exit 0)`` (Racket) before them passes, and so does one that disables them (R: defines its own
``stopifnot`` / ``isTRUE`` / ``quit`` in the global environment, or sets ``options(error = ...)``, under
which Rscript goes on after a failed ``stopifnot`` and exits 0; Racket: points ``current-error-port`` at
nowhere, so rackunit's failure reports vanish and the program still exits 0).

The executor therefore appends a *trailer* after the tests (``assemble``: in R, tests and trailer form
one block, so an error in the tests skips the trailer whatever ``options(error)`` says; the program
MultiPL-E records, and the ``program`` field of the results, stay ``prompt + completion + "\\n" +
tests``). The trailer writes a file ``.adaptome-end`` in the working directory holding a random nonce (drawn per run)
and what it found:

* R: the functions the tests call (``name(`` in the tests, less the names the prompt defines) that
  resolve first to the global environment or to an attached non-package environment although a
  package (base, stats, ...) defines them: the program masked a function the tests rely on. And,
  for those that resolve to a package's S3 generic (its body calls ``UseMethod``, or R's list of
  internal generics holds it: ``all.equal``, ``c``, ``length``, ...), the S3 methods of it the program
  added: a function ``<name>.<anything>`` in those environments (other than the prompt's own), or one
  registered in the generic's S3 methods table (``.S3method``, ``registerS3method``) whose environment
  is no namespace's. ``all.equal.numeric <- function(...) TRUE``, or a result of the program's own
  class with an ``all.equal`` method for it, makes every ``all.equal`` check pass. (An S4
  ``setMethod`` on such a function creates a generic in the global environment: masked as above.)
* Racket: rackunit's own log (``rackunit/log``'s ``test-log``: failed and total checks), which
  counts failures whatever port they are printed to. The tests' checks are counted statically
  (``(check-...`` forms); fewer logged checks than that means checks were disabled or redefined. The
  check forms the tests use must not be bound by the program's own module or a submodule of it (a
  ``check-equal?`` macro that logs a passing ``check-true`` keeps the count right), and every name the
  trailer uses is imported under a per-run prefix, so the program's own ``printf``, ``car`` or
  ``adaptome-test-log`` cannot forge what it writes.

``verdict`` turns the file into a status refinement for a run that the language rule grades ``OK``:
no file (or a wrong nonce) is ``EarlyExit``; a masked function, a redefined check, a logged failure or too
few logged checks is ``TestsBypassed``.

Not covered: a program that reads its own source to learn the nonce and forges the file, one that
rebinds R's ``base`` namespace itself, ``::`` or the language's special forms (Racket: ``require``,
``#%app``, ``#%datum``), or that mutates rackunit's module state; in R, methods of the functions and
operators the tests reach only indirectly (``Ops.<class>``, ``length.<class>`` for a result of the
program's own class inside ``all.equal``), S4 methods on primitives, an S3 method registered with a
namespace as its environment, and a masking function or method the program removes again before the
tests end; in tests that signal failure with ``(exit 1)`` instead of rackunit (none of MultiPL-E's), a
Racket program replacing ``exit-handler``; tests whose checks sit in loops or in ``test-case`` forms,
or that define their own ``check-...`` helper, are counted only as "at least one check ran". A right
program that defines an S3 method of a generic the tests call (``c.myclass`` when the tests call
``c``) is ``TestsBypassed`` too. This is a guard
against buggy and mildly hostile completions, not a proof of test execution.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

END_FILE = ".adaptome-end"
#: grading version recorded in every results file; results made under another version are never reused
HARNESS = "multipl-e+end-marker-3"

_R_CALL = re.compile(r"(?<![\w.$@])([A-Za-z.][A-Za-z0-9._]*)\s*\(")
_R_DEF = re.compile(r"(?m)^\s*`?([A-Za-z.][A-Za-z0-9._]*)`?\s*(?:<-|=)\s*function\b")
_R_KEYWORDS = {"function", "if", "for", "while", "repeat", "return", "switch"}
_RKT_CHECK = re.compile(r"\(\s*(check[-\w?!*<>=/+]*)")
_RKT_DEF = re.compile(r"\(\s*define(?:-syntax(?:-rule)?)?\s+\(?\s*([^\s()\[\]]+)")
_RKT_NESTED = re.compile(r"\(\s*(?:test-case|test-suite|test-begin|for\S*|map|let\s+loop)\b")


@dataclass(frozen=True)
class EndCheck:
    """What the trailer of one problem's program checks.

    Args:
        language: MultiPL-E key, ``r`` or ``rkt``.
        watched: R: functions the tests call that the program must not mask (empty for Racket).
        min_checks: Racket: rackunit checks that must be logged (0: no count is required).
        tests: R: the problem's tests; a program ending with them runs them and the trailer in one ``{ }`` block.
        defined: R: functions the prompt defines (the problem's own, never counted as masking).
        checks: Racket: the check forms the tests use (less those the prompt or tests define), which must
            be bound by a library (rackunit), not by the program.
    """

    language: str
    watched: tuple[str, ...] = ()
    min_checks: int = 0
    tests: str = ""  # R: the tests, run in one block with the trailer (see ``assemble``)
    defined: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()


def for_problem(language: str, tests: str | None, prompt: str = "") -> EndCheck:
    """The check for a problem's tests (``tests=None``: only that the program reached its end)."""
    if not tests:
        return EndCheck(language)
    if language == "r":
        defined = set(_R_DEF.findall(prompt))
        names = sorted({n for n in _R_CALL.findall(tests)} - defined - _R_KEYWORDS)
        return EndCheck(language, watched=tuple(names), tests=tests, defined=tuple(sorted(defined)))
    calls = _RKT_CHECK.findall(tests)
    own = set(_RKT_DEF.findall(prompt + "\n" + tests))
    names = tuple(sorted(set(calls) - own))
    # checks in loops, test cases or the tests' own check helpers: the static count is no lower bound
    counted = not (_RKT_NESTED.search(tests) or own & set(calls))
    return EndCheck(language, min_checks=len(calls) if counted else min(len(calls), 1), checks=names)


def _r_string(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid R string literal for these characters


def trailer(check: EndCheck, path: str, nonce: str) -> str:
    """Source appended after the tests; it writes ``nonce`` and its findings to ``path``."""
    if check.language == "r":
        names = ", ".join(_r_string(n) for n in check.watched)
        defined = ", ".join(_r_string(n) for n in check.defined)
        return (
            "\nbase::local({\n"
            f"  .w <- base::c({names})\n"
            "  .bad <- base::character(0)\n"
            "  .own <- base::character(0)\n"  # functions of the global env and attached non-package environments
            "  .e <- base::globalenv()\n"
            "  while (!base::identical(.e, base::emptyenv())) {\n"
            "    .nm <- base::environmentName(.e)\n"
            "    if (!(.nm == \"base\" || base::startsWith(.nm, \"package:\")))\n"
            "      for (.y in base::ls(.e, all.names = TRUE, sorted = FALSE))\n"
            "        if (base::exists(.y, envir = .e, mode = \"function\", inherits = FALSE))\n"
            "          .own <- base::c(.own, .y)\n"
            "    .e <- base::parent.env(.e)\n"
            "  }\n"
            f"  .own <- base::setdiff(.own, base::c({defined}))\n"
            "  for (.x in .w) {\n"
            "    .e <- base::globalenv(); .first <- NA; .inpkg <- FALSE\n"
            "    while (!base::identical(.e, base::emptyenv())) {\n"
            "      if (base::exists(.x, envir = .e, mode = \"function\", inherits = FALSE)) {\n"
            "        .nm <- base::environmentName(.e)\n"
            "        .pkg <- .nm == \"base\" || base::startsWith(.nm, \"package:\")\n"
            "        if (base::is.na(.first)) .first <- .pkg else if (.pkg) .inpkg <- TRUE\n"
            "      }\n"
            "      .e <- base::parent.env(.e)\n"
            "    }\n"
            "    if (base::identical(.first, FALSE) && .inpkg) .bad <- base::c(.bad, .x)\n"
            "    if (!base::isTRUE(.first)) next\n"
            # a package's S3 generic: methods `<name>.<class>` the program defined, or registered in the
            # generic's S3 methods table (.S3method) from outside any namespace, hide what the tests compare
            "    .p <- base::paste0(.x, \".\")\n"
            "    .f <- base::get(.x, envir = base::globalenv(), mode = \"function\")\n"
            "    .tab <- base::topenv(if (base::is.primitive(.f)) base::.BaseNamespaceEnv else base::environment(.f))\n"
            "    .tab <- base::get0(\".__S3MethodsTable__.\", envir = .tab, inherits = FALSE)\n"
            "    .reg <- base::character(0)\n"
            "    if (base::is.environment(.tab)) .reg <- base::ls(.tab, all.names = TRUE, sorted = FALSE)\n"
            "    .reg <- base::Filter(function(.n) {\n"
            "      .m <- .tab[[.n]]\n"
            "      base::is.function(.m) && !base::is.primitive(.m) &&\n"
            "        !base::isNamespace(base::topenv(base::environment(.m)))\n"
            "    }, .reg[base::startsWith(.reg, .p)])\n"
            "    .m <- base::unique(base::c(.own[base::startsWith(.own, .p)], .reg))\n"
            "    if (base::length(.m) && ((!base::is.primitive(.f) &&\n"
            "        base::is.element(\"UseMethod\", base::all.names(base::body(.f)))) ||\n"
            "        base::is.element(.x, base::get(\".get_internal_S3_generics\",\n"
            "                                       envir = base::asNamespace(\"tools\"))())))\n"
            "      .bad <- base::c(.bad, .m)\n"
            "  }\n"
            f"  base::writeLines(base::c({_r_string(nonce)}, base::paste(base::unique(.bad), collapse = \" \")),\n"
            f"                   {_r_string(path)})\n"
            "})\n")
    # Every name the trailer uses is imported with a per-run prefix (``adaptome-<nonce>:``): a program cannot
    # shadow them (its own ``printf``, ``car`` or ``adaptome-test-log`` would otherwise forge the counts). The
    # check forms the tests use must not be bound by the program's own module (or a submodule of it): a macro
    # ``check-equal?`` that logs a passing ``check-true`` keeps the count right. A static require costs about
    # 10 ms less than dynamic-require.
    P = f"adaptome-{nonce}:"
    names = " ".join(check.checks)
    return (
        f"\n(require (prefix-in {P} racket/base) (only-in rackunit/log [test-log {P}test-log]))\n"
        f"({P}let* ([{P}log ({P}test-log)]\n"
        f"        [{P}vr ({P}#%variable-reference)]\n"
        f"        [{P}self ({P}resolved-module-path-name ({P}variable-reference->resolved-module-path {P}vr))]\n"
        f"        [{P}own? ({P}lambda ({P}s)\n"
        f"                  ({P}let ([{P}b ({P}identifier-binding ({P}namespace-symbol->identifier {P}s))])\n"
        f"                    ({P}and ({P}pair? {P}b)\n"
        f"                      ({P}let ([{P}m ({P}resolved-module-path-name\n"
        f"                                     ({P}module-path-index-resolve ({P}car {P}b)))])\n"
        f"                        ({P}or ({P}equal? {P}m {P}self)\n"
        f"                             ({P}and ({P}pair? {P}m) ({P}equal? ({P}car {P}m) {P}self)))))))]\n"
        f"        [{P}own ({P}parameterize ([{P}current-namespace ({P}variable-reference->namespace {P}vr)])\n"
        f"                  ({P}filter {P}own? ({P}quote ({names}))))])\n"
        f"  ({P}with-output-to-file {json.dumps(path)} #:exists ({P}quote truncate)\n"
        f"    ({P}lambda () ({P}printf \"~a\\n~a ~a\\n~a\\n\" {json.dumps(nonce)} ({P}car {P}log) ({P}cdr {P}log)\n"
        f"                  ({P}apply {P}string-append\n"
        f"                         ({P}map ({P}lambda ({P}s) ({P}format \"~a \" {P}s)) {P}own))))))\n")


def assemble(check: EndCheck, program: str, path: str, nonce: str) -> str:
    """The source that runs: ``program`` and the trailer.

    R: when ``program`` ends with the check's tests, they and the trailer form one top-level ``{ }`` block.
    Rscript with ``options(error = <a function>)`` goes on with the next top-level expression after an
    error, so a trailer of its own would still run after a failed ``stopifnot``; an error inside the
    block skips the rest of the block, trailer included. (Inside ``{ }`` the tests still assign in the
    global environment; only the auto-printing of their intermediate values differs.)
    """
    tail = trailer(check, path, nonce)
    if check.language == "r" and check.tests and program.endswith(check.tests):
        return program[: len(program) - len(check.tests)] + "{\n" + check.tests + "\n" + tail + "}\n"
    return program + tail


def verdict(check: EndCheck, text: str | None, nonce: str) -> tuple[str | None, str]:
    """(refined status or None when the run stands as ``OK``, a note saying why) for an ``OK`` run."""
    lines = (text or "").split("\n")
    if text is None or lines[0] != nonce:
        return "EarlyExit", "the program exited with status 0 but its tests did not run to the end"
    found = lines[1].split() if len(lines) > 1 else []
    if check.language == "r":
        if found:
            return "TestsBypassed", ("the program redefines functions the tests call (or S3 methods of them): "
                                     f"{', '.join(found)}")
        return None, ""
    try:
        failed, total = int(found[0]), int(found[1])
    except (IndexError, ValueError):
        return "EarlyExit", "the end marker is incomplete"
    own = lines[2].split() if len(lines) > 2 else []
    if own:
        return "TestsBypassed", f"the program redefines the rackunit check(s) the tests use: {', '.join(own)}"
    if failed:
        return "TestsBypassed", f"rackunit logged {failed} failed check(s) of {total}, but stderr was empty"
    if total < check.min_checks:
        return "TestsBypassed", f"rackunit logged {total} check(s); the tests hold {check.min_checks}"
    return None, ""
