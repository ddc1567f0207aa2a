"""Shared fixtures of the codegen tests: skip cleanly only when an interpreter is truly missing."""

from __future__ import annotations

import shutil

import pytest

from adaptome.domains.codegen.sandbox import Limits


def need(interpreter: str) -> None:
    if shutil.which(interpreter) is None:
        pytest.skip(f"`{interpreter}` is not installed (make test installs r-base-core and racket)")


@pytest.fixture
def need_r():
    need("Rscript")


@pytest.fixture
def need_racket():
    need("racket")


def grade_cases(d, problems: list[dict], cases: dict[str, list]) -> dict[str, dict]:
    """Every completion of ``cases`` (problem name -> [(program, expected status), ...]) graded through
    ``adaptome codegen execute`` on ``problems`` written to ``d``; the results file of each problem."""
    import json

    from typer.testing import CliRunner

    from adaptome.domains.codegen.cli import app

    (d / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    (d / "completions.jsonl").write_text("".join(json.dumps({"name": n, "completions": [c for c, _ in cs]}) + "\n"
                                                 for n, cs in cases.items()))
    r = CliRunner().invoke(app, ["execute", "--problems", str(d / "problems.jsonl"), "--completions",
                                 str(d / "completions.jsonl"), "--out", str(d / "exec"), "--timeout", "20"])
    assert r.exit_code == 0, r.output
    return {n: json.loads((d / "exec" / f"{n}.results.json").read_text()) for n in cases}


def short_limits(**kw) -> Limits:
    base = dict(timeout_s=20.0, cpu_s=20, memory_mb=256, max_procs=16, file_size_mb=4, max_output_bytes=1 << 20)
    base.update(kw)
    return Limits(**base)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny models train and generate faster on one thread than on two contended ones."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
