"""torch's CPU thread count for one run (``TrainConfig.threads``).

torch starts one intra-op thread per core. For tiny models on a machine that other jobs share, those
threads wait on each other. On a 2-core machine with one other busy process, 100 steps of
``core/configs/train_example.yaml`` took 18.1 s with torch's default of 2 threads and 7.0 s with 1 (idle:
7.0 s and 7.1 s), and a tiny protein LLaMA's training step about 30x longer. ``threads`` sets the count
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
