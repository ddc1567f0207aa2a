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
