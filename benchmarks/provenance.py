"""What a benchmark result was made with: git commit (and whether the tree had uncommitted changes),
package versions, platform and torch threads. Used by the benchmarks run as modules
(``python -m benchmarks.<topic>.<script>`` from the repository root)."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def environment(packages: tuple[str, ...]) -> dict:
    """``git_commit``, ``git_dirty``, ``packages`` (version of each of ``packages``), ``platform``, ``threads``."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT,
                                    check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    return {"git_commit": commit, "git_dirty": dirty, "packages": {p: md.version(p) for p in packages},
            "platform": platform.platform(), "threads": torch.get_num_threads()}
