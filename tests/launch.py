"""Launching test processes under ``torchrun``: one command prefix, one clean environment, a free port.

The environment drops a surrounding launcher's variables (a test run inside ``torchrun`` must not make
its children join the outer group) and uses one thread per process (2 processes on 2 cores).
"""

from __future__ import annotations

import os
import socket
import sys

#: ``torchrun --nproc_per_node 2`` run with the test's own interpreter
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


def launch_env() -> dict[str, str]:
    """This process's environment without launcher variables, one thread per process, a local master."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(k, None)
    return env


def free_port() -> str:
    """A TCP port the system just handed out as free on 127.0.0.1 (for ``--master_port``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])
