"""Low-resource code generation in R and Racket: MultiPL-E problems, generation from a local model or an
OpenAI-compatible server, in-context prompt builders, a sandboxed executor graded as MultiPL-E grades,
pass@k with McNemar's test, PLANSEARCH, and adapter training with an evaluation-overlap check.

Modules: ``problems`` (JSONL, programs, stop tokens), ``languages`` (R / Racket grading), ``isolation``
and ``sandbox`` (what the machine allows; one sandboxed run), ``execute`` (parallel runs, results files),
``passk``, ``models`` / ``backends`` / ``serve`` / ``generate``, ``prompts``, ``plansearch``, ``train``,
``cli``, ``plugin``, ``quickstart``. See ``README.md`` beside this file.
"""
