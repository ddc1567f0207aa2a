"""Atomic writes: a file or a folder appears whole under its final name, or not at all.

``atomic_dir(target)`` yields a temporary sibling folder; on a clean exit it is renamed to
``target`` (an existing ``target`` is replaced only with ``overwrite=True`` and kept until the new
one is complete); on an exception the temporary folder is removed and ``target`` is untouched.
``atomic_file(target)`` does the same for one file (written next to it, fsynced, then renamed);
``atomic_path(target)`` yields the temporary path itself, for libraries that write by path.
``clean_stale(parent, name)`` removes temporary siblings that a killed process left behind.
The result has the permissions a plain ``open`` / ``mkdir`` would give it (``0o666`` / ``0o777`` less the
process umask), or a replaced file's own; the temporary files ``tempfile`` makes are owner-only, which left
every output unreadable to a lab's other users.

Not covered: atomicity across file systems (the temporary path is always a sibling, so a rename
never crosses one) and durability of the parent folder's entry on power loss (no fsync of the
folder).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

TMP_MARK = ".tmp-"


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``target`` when the block exits without error."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists; pass --overwrite (overwrite=True) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_MARK}", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.filename:
            raise
        raise _at(e, target) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path (same suffix) for a library that writes by path (h5py, safetensors,
    PIL, tifffile); it replaces ``target`` when the block exits without error and is removed otherwise."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}{TMP_MARK}", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():  # a library may have replaced it (new inode, its own mode); set it at the end
            os.chmod(tmp, target.stat().st_mode & 0o7777 if target.is_file() else 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename:
            raise
        raise _at(e, target) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """Yield an open file whose content replaces ``target`` when the block exits without error."""
    with atomic_path(target) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def _umask() -> int:
    """The process umask, read without changing it (Linux ``/proc``), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _at(e: OSError, target: Path) -> OSError:
    """``e`` naming ``target`` (a write that fails on a full disk names no file)."""
    return type(e)(e.errno, e.strerror or str(e), str(target)) if e.errno else OSError(f"{target}: {e}")


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``target`` atomically; returns ``target``."""
    with atomic_file(target) as fh:
        fh.write(text)
    return Path(target)


def clean_stale(parent: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove temporary siblings left in ``parent`` by a killed writer (of ``name`` only, if given)."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    prefix = f".{name}{TMP_MARK}" if name else "."
    removed = []
    for p in parent.iterdir():
        if p.name.startswith(prefix) and (TMP_MARK in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed
