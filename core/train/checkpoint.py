"""Atomic training checkpoints, checked on load, and the choice of the checkpoint to resume.

A checkpoint is a folder ``<output_dir>/checkpoints/step-<N>/`` holding

* ``trainable.safetensors``: every parameter that trains in this run (by name);
* ``optimizer.pt`` and ``scheduler.pt``: state dicts (tensors and plain values, read back with
  ``torch.load(weights_only=True)``: nothing is unpickled);
* ``rng.pt``: torch CPU / CUDA generator states and Python's ``random`` state; ``rng_numpy.json``;
* ``hooks.pt``: the ``state_dict()`` of each step hook that has one, in order;
* ``trainer_state.json`` (written last, so its presence marks a complete checkpoint): step, data
  position, the losses of step 1 and of the last step, the run's identity and fingerprint (``identity.py``),
  and the size and SHA-256 of every other file.

It is written into a temporary sibling folder (``core.atomic.atomic_dir``) and renamed into place,
so a crash never leaves a half-written ``step-N``; temporary folders a kill leaves behind are
removed by the next run (``clean_stale``), and a ``step-N`` folder without ``trainer_state.json``
is ignored with a warning. Only the newest ``keep_last`` checkpoints are kept.

``find_resumable`` returns the newest checkpoint whose files match their recorded sizes and
checksums; a corrupt newer one is named in a warning and the previous one is used. Resuming then
checks the identity: a checkpoint of another configuration is an error naming what changed, never
silently loaded or replaced.

Not covered: sharded (FSDP) model states; frozen base weights are not saved (a resumed run
rebuilds the base model the same way).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from adaptome.core.atomic import atomic_dir, clean_stale
from adaptome.core.errors import AdaptomeError
from adaptome.core.train.identity import describe_changes

STATE_FILE = "trainer_state.json"
FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "rng_numpy.json", "hooks.pt")
_POSITION_KEYS = ("step", "epoch", "micro_batch")  # trainer_state.json's data position, read on resume
_STEP_RE = re.compile(r"^step-(\d+)$")
log = logging.getLogger(__name__)


class ResumeError(AdaptomeError, ValueError):
    """A checkpoint cannot be resumed (incomplete, corrupt, or written by another configuration)."""


class CorruptCheckpoint(ResumeError):
    """A file of a checkpoint is missing, truncated or altered; the message names the file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def _step_folders(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a trainer_state.json), oldest first."""
    return [(s, p) for s, p in _step_folders(Path(ckpt_root)) if (p / STATE_FILE).is_file()]


def clean_checkpoint_root(ckpt_root: Path) -> None:
    """Remove temporary folders a killed writer left; warn about ``step-N`` folders that are not complete."""
    for p in clean_stale(ckpt_root):
        log.warning(f"removed {p}: a checkpoint left half-written by an interrupted run")
    for _, p in _step_folders(Path(ckpt_root)):
        if not (p / STATE_FILE).is_file():
            log.warning(f"ignoring {p}: not a complete checkpoint (no {STATE_FILE})")


def save_checkpoint(ckpt_root: Path, step: int, *, trainable: dict[str, torch.Tensor], optimizer, scheduler,
                    hooks, trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Write ``step-<step>`` atomically and drop the oldest complete ones beyond ``keep_last``."""
    target = Path(ckpt_root) / f"step-{step}"
    with atomic_dir(target, overwrite=True) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        (tmp / "rng_numpy.json").write_text(json.dumps(_numpy_state()))
        torch.save([h.state_dict() for h in _stateful(hooks)], tmp / "hooks.pt")
        files = {name: {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in FILES}
        (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "files": files}, indent=2))
    for _, old in list_checkpoints(ckpt_root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _stateful(hooks) -> list:
    """The hooks whose state is checkpointed (those with ``state_dict``); stateless ones may come and go."""
    return [h for h in hooks if hasattr(h, "state_dict")]


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The trainer state of a complete checkpoint whose files match their sizes and checksums."""
    path = Path(path)
    state_file = path / STATE_FILE
    try:
        trainer_state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptCheckpoint(f"{state_file}: unreadable ({e})") from None
    bad = [k for k in _POSITION_KEYS if not isinstance(trainer_state, dict) or type(trainer_state.get(k)) is not int]
    if bad:  # JSON, but not a trainer state (edited by hand, or another program's file)
        raise CorruptCheckpoint(f"{state_file}: not a trainer state ({', '.join(bad)} missing or not an integer)")
    for name in FILES:
        if not (path / name).is_file():
            raise CorruptCheckpoint(f"{path}: incomplete checkpoint, {name} is missing")
    for name, rec in trainer_state.get("files", {}).items():  # checkpoints of older versions record none
        size = (path / name).stat().st_size
        if size != rec["size"]:
            raise CorruptCheckpoint(f"{path / name}: corrupt ({size} bytes, {rec['size']} were written)")
        if _sha256(path / name) != rec["sha256"]:
            raise CorruptCheckpoint(f"{path / name}: corrupt (checksum differs from the one written)")
    return trainer_state


def find_resumable(ckpt_root: Path, warn: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """The newest intact checkpoint and its state, falling back past corrupt ones (with a warning
    when ``warn``); None when there is no complete checkpoint. Raises when every one is corrupt."""
    say = log.warning if warn else (lambda msg: None)
    problems: list[CorruptCheckpoint] = []
    for _, path in reversed(list_checkpoints(ckpt_root)):
        try:
            state = verify_checkpoint(path)
        except CorruptCheckpoint as e:
            problems.append(e)
            say(f"{e}; looking for an earlier checkpoint")
            continue
        if problems:
            say(f"resuming from {path} instead (the newer checkpoint is corrupt)")
        return path, state
    if problems:
        raise ResumeError(f"{problems[0]}; no earlier intact checkpoint to fall back to")
    return None


def check_identity(path: Path, trainer_state: dict[str, Any], identity: dict[str, Any], fp: str) -> None:
    """Refuse a checkpoint written by another configuration, naming what changed."""
    if trainer_state.get("fingerprint") == fp:
        return
    old = trainer_state.get("identity")
    what = describe_changes(old, identity) if isinstance(old, dict) else "written before identities were recorded"
    raise ResumeError(f"{path / STATE_FILE}: checkpoint was written by another configuration ({what}); "
                      "use another output_dir, or remove the checkpoints to start over")


def _load_file(path: Path, reader) -> Any:
    try:
        return reader(path)
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # a file that passed no checksum (old format)
        raise CorruptCheckpoint(f"{path}: unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None


def load_checkpoint(path: Path, *, named_params: dict[str, torch.nn.Parameter], optimizer, scheduler,
                    hooks) -> dict[str, Any]:
    """Restore everything saved by ``save_checkpoint`` (verify it first); returns the trainer state."""
    path = Path(path)
    trainer_state = json.loads((path / STATE_FILE).read_text())

    def torch_load(p):
        return torch.load(p, weights_only=True)

    weights = _load_file(path / "trainable.safetensors", lambda p: load_file(str(p)))
    missing = sorted(set(named_params) - set(weights))
    if missing:
        raise ResumeError(f"{path / 'trainable.safetensors'}: missing {missing[:3]}")
    opt_state = _load_file(path / "optimizer.pt", torch_load)
    sched_state = _load_file(path / "scheduler.pt", torch_load)
    hook_states = _load_file(path / "hooks.pt", torch_load)
    rng = _load_file(path / "rng.pt", torch_load)
    rng_numpy = _load_file(path / "rng_numpy.json", lambda p: json.loads(p.read_text()))
    stateful = _stateful(hooks)
    if len(hook_states) != len(stateful):
        raise ResumeError(f"{path / 'hooks.pt'}: saved {len(hook_states)} hook states, the run has {len(stateful)} "
                          "hooks with a state")
    with torch.no_grad():
        for name, p in named_params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(sched_state)
    for h, s in zip(stateful, hook_states):
        h.load_state_dict(s)
    _set_rng_state(rng)
    _set_numpy_state(rng_numpy)
    return trainer_state
