"""torch's CPU thread count for one run (``TrainConfig.threads``).

torch starts one intra-op thread per core. For tiny models on a machine that other jobs share, those
threads wait on each other: on a 2-core machine with one other busy process, a tiny LLaMA's training
step took about 30x longer with torch's default of 2 threads than with 1. ``threads`` sets the count
for the run and restores the caller's afterwards, so a library caller's setting is not changed behind
its back.

Not covered: inter-op threads (``torch.set_num_interop_threads`` can be set once per process only) and
the thread pools of NumPy / BLAS outside torch (``OMP_NUM_THREADS`` before the process starts).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Inside the block torch uses ``n`` intra-op CPU threads (0: leave torch's setting as it is)."""
    import torch

    if n < 0:
        raise ValueError(f"threads must be >= 0, got {n}")
    if n == 0:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
