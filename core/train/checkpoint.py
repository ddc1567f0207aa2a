"""Atomic training checkpoints and exact resume.

A checkpoint is a folder ``<output_dir>/checkpoints/step-<N>/`` holding

* ``trainable.safetensors``: every parameter that trains in this run (by name);
* ``optimizer.pt`` and ``scheduler.pt``: state dicts (tensors and plain values, read back with
  ``torch.load(weights_only=True)``: nothing is unpickled);
* ``rng.pt``: torch CPU / CUDA generator states and Python's ``random`` state; ``rng_numpy.json``;
* ``hooks.pt``: each step hook's ``state_dict()``;
* ``trainer_state.json`` (written last): step, data position, and a fingerprint of the run (the
  trainable parameters' names and shapes plus the settings that shape the trajectory).

It is written into a temporary sibling folder and renamed into place, so a crash never leaves a
half-written ``step-N``; only the last ``keep_last`` are kept. Resuming checks the fingerprint:
a checkpoint from another config is an error naming the file, never silently loaded or replaced.

Not covered: sharded (FSDP) model states; frozen base weights are not saved (a resumed run
rebuilds the base model the same way).
"""

from __future__ import annotations

from adaptome.core.errors import AdaptomeError
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


class ResumeError(AdaptomeError, ValueError):
    """A checkpoint cannot be resumed (incomplete, or written by another config)."""


def fingerprint(named_trainable: dict[str, torch.Tensor], settings: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(named_trainable):
        h.update(f"{name}:{tuple(named_trainable[name].shape)};".encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_state(d: dict) -> None:
    np.random.set_state((d["kind"], np.array(d["keys"], dtype=np.uint32), d["pos"], d["has_gauss"], d["cached"]))


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a trainer_state.json), oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(ckpt_root: Path, step: int, *, trainable: dict[str, torch.Tensor], optimizer, scheduler,
                    hooks, trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Write ``step-<step>`` atomically and drop the oldest beyond ``keep_last``."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    target = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".step-{step}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        (tmp / "rng_numpy.json").write_text(json.dumps(_numpy_state()))
        torch.save([h.state_dict() if hasattr(h, "state_dict") else None for h in hooks], tmp / "hooks.pt")
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():  # same step written again (e.g. final save after a periodic save)
        shutil.rmtree(target)
    os.replace(tmp, target)
    for _, old in list_checkpoints(ckpt_root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path, *, named_params: dict[str, torch.nn.Parameter], optimizer, scheduler, hooks,
                    expected_fingerprint: str) -> dict[str, Any]:
    """Restore everything saved by ``save_checkpoint``; returns the trainer state."""
    state_file = path / STATE_FILE
    required = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "rng_numpy.json", "hooks.pt")
    for name in (STATE_FILE,) + required:
        if not (path / name).is_file():
            raise ResumeError(f"{path}: incomplete checkpoint, {name} is missing")
    try:
        trainer_state = json.loads(state_file.read_text())
    except json.JSONDecodeError as e:
        raise ResumeError(f"{state_file}: unreadable ({e})") from None
    if trainer_state.get("fingerprint") != expected_fingerprint:
        raise ResumeError(
            f"{state_file}: checkpoint was written by another configuration (fingerprint "
            f"{trainer_state.get('fingerprint')} != {expected_fingerprint}); use a new output_dir or resume=False "
            "with a fresh folder"
        )
    weights = load_file(str(path / "trainable.safetensors"))
    missing = sorted(set(named_params) - set(weights))
    if missing:
        raise ResumeError(f"{path / 'trainable.safetensors'}: missing {missing[:3]}")
    with torch.no_grad():
        for name, p in named_params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    hook_states = torch.load(path / "hooks.pt", weights_only=True)
    if len(hook_states) != len(hooks):
        raise ResumeError(f"{path / 'hooks.pt'}: saved {len(hook_states)} hook states, the run has {len(hooks)} hooks")
    for h, s in zip(hooks, hook_states):
        if s is not None and hasattr(h, "load_state_dict"):
            h.load_state_dict(s)
    _set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    _set_numpy_state(json.loads((path / "rng_numpy.json").read_text()))
    return trainer_state
