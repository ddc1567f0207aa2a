"""What the machine allows for isolating a program run, detected once per process.

Three levels, strongest first (``detect()`` picks the strongest that works here):

* ``"namespaces"`` (running as root): new PID, network, mount, IPC and UTS namespaces; the
  program runs as the unprivileged user ``nobody`` (uid/gid 65534) inside them. Memory and the
  number of processes are bounded per run by cgroup v1 ``memory`` and ``pids`` controllers when
  their hierarchies are mounted and writable (``memory.limit_in_bytes`` + ``memory.memsw``,
  ``pids.max``); without them memory falls back to ``RLIMIT_AS`` and processes to
  ``RLIMIT_NPROC`` (which binds ``nobody``, not root).
* ``"userns"`` (not root, user namespaces allowed): the same namespaces inside a new user
  namespace in which the caller's uid maps to root. Memory: ``RLIMIT_AS``. Processes:
  ``RLIMIT_NPROC``, which counts every process of the caller's real uid on the machine (not
  only the run's), so it is a loose bound.
* ``"rlimits"``: no namespaces. A new session, ``RLIMIT_AS`` / ``RLIMIT_CPU`` /
  ``RLIMIT_FSIZE`` / ``RLIMIT_NPROC`` (not enforced for root) and a process-group kill.
  **Not covered** at this level: network access (the program can connect anywhere the user
  can), writes outside the working directory (anything the user may write), a child that
  leaves the process group with ``setsid`` (it survives the timeout unless a pids cgroup is
  available to sweep it), signals to other processes of the user the program runs as (``kill -9 -1``
  as ``nobody`` reaches every ``nobody`` process on the machine), and reading other processes'
  ``/proc`` entries (environments included) of that user.

Per-run cgroups are named ``adaptome-run-<owner pid>-<random>`` and removed after each run; one left by a
harness killed in the middle of a run is removed by the next run that creates one, once its owner process
no longer exists and it holds no process (``sandbox.remove_stale``; a live owner's cgroup, possibly about to
receive its run, is never touched).

Facts this relies on (measured on the project's machines, see the sandbox notes): killing the
init process of a PID namespace kills every process in it, including ``setsid`` daemons;
Racket ignores SIGTERM in a busy loop, so only SIGKILL is used; ``RLIMIT_AS`` bounds virtual
memory and R / Racket start under 200 MB of it; a network namespace holds only ``lo``, down.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from adaptome.core.errors import AdaptomeError

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NS_FLAGS = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
NOBODY = 65534
CGROUP_ROOT = Path("/sys/fs/cgroup")


class IsolationError(AdaptomeError, ValueError):
    """An unknown isolation level was asked for."""


@dataclass
class Isolation:
    """The isolation a run gets; written into every result as ``isolation``."""

    #: "namespaces", "userns" or "rlimits"
    level: str
    #: cgroup v1 folder under which a per-run memory cgroup is made (None: RLIMIT_AS instead)
    memory_cgroup: str | None = None
    #: cgroup v1 folder under which a per-run pids cgroup is made (None: RLIMIT_NPROC instead)
    pids_cgroup: str | None = None
    #: uid/gid the program runs as (None: the caller's)
    run_as: int | None = None
    #: why a stronger level or a controller was not used
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        ns = self.level != "rlimits"
        return {"level": self.level, "network_namespace": ns, "pid_namespace": ns, "readonly_mounts": ns,
                "memory": "cgroup" if self.memory_cgroup else "rlimit_as",
                "processes": "cgroup" if self.pids_cgroup else "rlimit_nproc",
                "run_as": self.run_as, "notes": list(self.notes)}


@functools.cache
def libc():
    """libc with the four calls the sandbox child needs, resolved before any fork."""
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lib.unshare.argtypes = [ctypes.c_int]
    lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return lib


def _own_cgroup(controller: str) -> str | None:
    """This process's cgroup path in a v1 hierarchy, from /proc/self/cgroup."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if controller in ctrls.split(","):
                return path
    except OSError:
        return None
    return None


def _usable_cgroup(controller: str, limit_file: str) -> str | None:
    """A folder where per-run cgroups of ``controller`` can be made, or None."""
    base = CGROUP_ROOT / controller
    own = _own_cgroup(controller)
    if own is None or not (base / "cgroup.procs").exists():
        return None
    parent = base / own.lstrip("/")
    probe = parent / f"adaptome-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
        (probe / limit_file).write_text("max\n" if controller == "pids" else str(1 << 30))
        probe.rmdir()
    except OSError:
        try:
            probe.rmdir()
        except OSError:
            pass
        return None
    return str(parent)


def _probe_namespaces(flags: int, userns: bool) -> bool:
    """Fork a child that unshares ``flags`` (and maps its uid in a user namespace); True if it works."""
    lib = libc()
    uid, gid = os.getuid(), os.getgid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            if lib.unshare(flags | (CLONE_NEWUSER if userns else 0)) != 0:
                os._exit(1)
            if userns:
                _write_id_maps(uid, gid)
            if os.fork() == 0:
                os._exit(0)
            _, st = os.wait()
            os._exit(0 if os.waitstatus_to_exitcode(st) == 0 else 1)
        except BaseException:
            os._exit(1)
    _, st = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(st) == 0


def _write_id_maps(uid: int, gid: int) -> None:
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")


@functools.cache
def detect(prefer: str = "auto") -> Isolation:
    """The strongest isolation this machine allows (``prefer`` forces a weaker level for testing).

    ``prefer="userns"`` as root exercises the non-root path (the caller's uid 0 maps to root in the
    user namespace, so the program is not ``nobody`` and ``RLIMIT_NPROC`` does not bind it): for
    tests of that path only.
    """
    notes: list[str] = []
    root = os.geteuid() == 0
    level = "rlimits"
    if prefer not in ("auto", "namespaces", "userns", "rlimits"):
        raise IsolationError(f"isolation {prefer!r}: choose auto, namespaces, userns or rlimits")
    if prefer in ("auto", "namespaces") and root:
        if _probe_namespaces(NS_FLAGS, userns=False):
            level = "namespaces"
        else:
            notes.append("unshare of pid/net/mount namespaces failed as root")
    if level == "rlimits" and (prefer == "userns" or (prefer in ("auto", "namespaces") and not root)):
        if _probe_namespaces(NS_FLAGS, userns=True):
            level = "userns"
        else:
            notes.append("user namespaces are not allowed here")
    if prefer != "auto" and level != prefer:
        notes.append(f"asked for {prefer!r}, got {level!r}")
    mem = pids = None
    if root and level != "userns":
        mem = _usable_cgroup("memory", "memory.limit_in_bytes")
        pids = _usable_cgroup("pids", "pids.max")
        if mem is None:
            notes.append("no writable cgroup v1 memory controller: memory bounded by RLIMIT_AS")
        if pids is None:
            notes.append("no writable cgroup v1 pids controller: processes bounded by RLIMIT_NPROC")
    return Isolation(level=level, memory_cgroup=mem, pids_cgroup=pids,
                     run_as=NOBODY if root and level != "userns" else None, notes=notes)


def readonly_remounts(workdir: str) -> list[tuple[str, int]]:
    """Mount points to remount read-only in the run's mount namespace, with the flags to keep."""
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        mnt, opts = parts[4], parts[5].split(",")
        if mnt == workdir or mnt.startswith("/proc"):
            continue  # the work dir stays writable; /proc is replaced by the namespace's own
        flags = MS_NOSUID
        for o in opts:
            flags |= keep.get(o, 0)
        out.append((mnt.replace("\\040", " "), flags))
    return out
