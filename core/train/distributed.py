"""Joining the launcher's process group, and failing (not hanging) when a peer stalls.

``make_accelerator`` reads the launcher's environment (``torchrun`` and ``accelerate launch`` set
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``): with more than one process it joins the process group on
GPUs (NCCL) and on CPUs alike (gloo; a machine without a GPU needs no ``cpu=True``). Every
collective waits at most ``timeout_s``; then ``fit`` raises ``PeerTimeout`` naming the ranks that
did not keep up, found from a per-step heartbeat each process leaves in the launcher's key-value
store.

Under ``torchrun`` an error every process hits alike (a config error, a refused folder) is one line, not one
per process: ``error_reported_by_rank0`` lets a process other than rank 0 leave out an error whose message
rank 0 reported too (compared through the launcher's key-value store, which exists before the process group
does); an error only some processes hit is still printed by each, prefixed with its rank.

``mixed_precision="fp16"`` on the CPU is a warning: accelerate then autocasts nothing and the run computes
in float32 (bf16 autocasts on the CPU).

Not covered: elastic membership changes (a lost peer ends the run; resume it from its checkpoint),
multi-node rendezvous set-up (whatever the launcher configures is used as is). With NCCL the
watchdog may end a process itself after the timeout (with its own message naming the collective)
before Python sees an error; the gloo path (CPU) is the tested one.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta

import torch

from adaptome.core.errors import AdaptomeError

_BEAT = "adaptome/step/{rank}"
_ERROR = "adaptome/error/{attempt}/{rank}"
log = logging.getLogger(__name__)


class PeerTimeout(AdaptomeError, RuntimeError):
    """A collective did not complete within ``dist_timeout_s``: a peer process stalled or died."""


def launched_world_size() -> int:
    """The number of processes the launcher started (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def make_accelerator(mixed_precision: str = "no", cpu: bool = False, timeout_s: float = 600.0):
    """An Accelerator in the launcher's process group; in a single process, an earlier one with other
    settings is replaced."""
    from accelerate import Accelerator, InitProcessGroupKwargs
    from accelerate.state import AcceleratorState, PartialState

    if launched_world_size() > 1 and not torch.cuda.is_available():
        cpu = True  # accelerate joins a CPU (gloo) group only when asked for the CPU
    handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))]
    try:
        acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu, kwargs_handlers=handlers)
    except ValueError:
        if PartialState._shared_state and PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu, kwargs_handlers=handlers)
    if mixed_precision == "fp16" and acc.device.type == "cpu" and acc.is_main_process:
        log.warning("train.mixed_precision fp16: accelerate has no fp16 autocast on the CPU, so this run computes in "
                    "float32; use bf16 for mixed precision on the CPU")
    return acc


class Heartbeat:
    """Each process counts the collective points it reached (``beat(where)``) in the group's store;
    after a timeout, the ranks with a lower count are the ones that did not keep up."""

    def __init__(self, accelerator):
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.count = 0
        self.store = None
        if self.world > 1 and torch.distributed.is_initialized():
            try:
                from torch.distributed.distributed_c10d import _get_default_store

                self.store = _get_default_store()
            except (ImportError, RuntimeError, ValueError):  # a private helper: without it ranks go unnamed
                self.store = None

    def beat(self, where: str) -> None:
        if self.store is not None:
            self.count += 1
            self.store.set(_BEAT.format(rank=self.rank), f"{self.count}|{where}")

    def behind(self) -> dict[int, str]:
        """Other ranks that did not reach this process's last point, with where they were last seen."""
        if self.store is None:
            return {}
        out = {}
        for r in range(self.world):
            key = _BEAT.format(rank=r)
            if r == self.rank:
                continue
            if not self.store.check([key]):
                out[r] = "before the first step"
                continue
            count, _, where = self.store.get(key).decode().partition("|")
            if int(count) < self.count:
                out[r] = where
        return out


def is_collective_failure(err: BaseException) -> bool:
    """A collective that timed out or lost its peer (gloo / NCCL messages), not a bug in the step."""
    if isinstance(err, getattr(torch.distributed, "DistBackendError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("Timed out", "timed out", "Connection closed by peer", "Connection reset by peer",
                            "NCCL communicator was aborted", "Watchdog caught collective operation timeout"))


def peer_timeout(err: BaseException, heartbeat: Heartbeat, timeout_s: float, resume_hint: str) -> PeerTimeout:
    """The one-line error for a collective that failed (the ranks that fell behind are named)."""
    behind = heartbeat.behind()
    if behind:
        who = ", ".join(f"rank {r} (last seen in {where})" for r, where in behind.items())
    else:
        who = "another rank (could not tell which)"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return PeerTimeout(f"rank {heartbeat.rank}: no answer from {who} within train.dist_timeout_s={timeout_s:g} s "
                       f"(a peer process stalled or died: {first[-100:]}); {resume_hint}")


def launched_rank() -> int:
    """This process's rank among those the launcher started (0 when not launched)."""
    return int(os.environ.get("RANK", "0") or 0)


def _launcher_store(timeout_s: float):
    """A client of torchrun's own key-value store (the agent's, on MASTER_ADDR:MASTER_PORT, up before any
    process joins the group); None when the launcher keeps none (not torchrun)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not os.environ.get("MASTER_PORT"):
        return None
    return torch.distributed.TCPStore(os.environ.get("MASTER_ADDR", "localhost"), int(os.environ["MASTER_PORT"]),
                                      is_master=False, timeout=timedelta(seconds=timeout_s))


def error_reported_by_rank0(message: str, wait_s: float = 5.0) -> bool:
    """Under ``torchrun``: whether rank 0 reports this same error ``message``, so this process need not print it.

    Every process that fails leaves its message in the launcher's store; a process other than rank 0 waits up
    to ``wait_s`` seconds for rank 0's and compares. False on rank 0, in a single process, when rank 0 left no
    message in time or another one (an error of this process alone), and when the store cannot be reached.
    """
    if launched_world_size() == 1:
        return False
    rank, attempt = launched_rank(), os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    try:
        store = _launcher_store(timeout_s=wait_s)
        if store is None:
            return False
        store.set(_ERROR.format(attempt=attempt, rank=rank), message)
        if rank == 0:
            return False
        key, deadline = _ERROR.format(attempt=attempt, rank=0), time.monotonic() + wait_s
        while not store.check([key]):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return store.get(key).decode() == message
    except (RuntimeError, ValueError, OSError):  # no store to reach: every process prints its own line
        return False
