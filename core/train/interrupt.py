"""Ctrl-C (SIGINT) and SIGTERM during training: finish the step, save, say how to resume.

Inside ``StopRequest`` the first signal only sets a flag; ``fit`` reads it after each optimizer
step (agreeing across processes, so every rank stops at the same step), writes a checkpoint at that
step and raises ``Interrupted``, whose one-line message says where the checkpoint is and how to
resume. A second signal interrupts at once (``KeyboardInterrupt``), as a plain Ctrl-C would.

Not covered: signals delivered to a thread other than the main one (handlers can only be set there;
elsewhere the signals keep their usual meaning).
"""

from __future__ import annotations

import signal
import threading

import torch

from adaptome.core.errors import AdaptomeError


class Interrupted(AdaptomeError, KeyboardInterrupt):
    """Training stopped on request at a step boundary; the message says how to resume."""


class StopRequest:
    """A flag set by SIGINT / SIGTERM while the block runs (signal handlers restored on exit)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def agreed(self, accelerator) -> bool:
        """True when any process was asked to stop (a collective with several processes)."""
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)
