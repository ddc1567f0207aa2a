"""Run one untrusted program in a sandbox: ``run_sandboxed(argv, workdir, limits)``.

The run, at the strongest level ``isolation.detect()`` finds (see ``isolation.py`` for the
levels and for what each does *not* cover):

1. The harness makes per-run cgroups (memory with ``memory.limit_in_bytes`` and the same
   ``memsw`` limit so swap is no way out; pids with ``pids.max``) and starts a child in a new
   session that joins them before anything else happens.
2. That child (the *waiter*, outside the namespaces) unshares PID, network, mount, IPC and UTS
   namespaces and forks the namespace's *init* (pid 1), then only waits. It and init die with
   SIGKILL when their parent dies (``PR_SET_PDEATHSIG``).
3. init makes every mount private, bind-mounts the working directory over itself, remounts
   every other mount point read-only (``MS_REMOUNT|MS_BIND|MS_RDONLY``, keeping nosuid / nodev /
   noexec), mounts a fresh ``/proc`` (the host's processes and their environments are not
   visible), and forks the program. It reaps every orphan and, when the program exits, reports
   its wait status on a pipe and exits; the kernel then SIGKILLs whatever is left in the
   namespace, ``setsid`` daemons included.
4. The program's process drops to uid/gid ``nobody`` (no capabilities: it cannot remount, and
   it owns nothing outside the working directory), sets ``RLIMIT_CPU``, ``RLIMIT_FSIZE``,
   ``RLIMIT_NOFILE``, ``RLIMIT_CORE`` = 0 (and ``RLIMIT_AS`` / ``RLIMIT_NPROC`` where no cgroup
   bounds memory / processes), enters the working directory and execs the interpreter with a
   scrubbed environment (``PATH``, ``HOME`` and ``TMPDIR`` = the working directory, ``LANG``,
   plus the variables the caller lists).
5. The harness reads stdout and stderr, keeps the first ``capture_bytes`` of each and counts the
   rest; past ``max_output_bytes`` in total (when set), or past the wall-clock ``timeout_s``, it SIGKILLs the
   namespace's init (the waiter sees init exit only once the kernel has killed every other process
   of the namespace, so the run ends after all of them, with or without a pids cgroup; where init
   cannot be found, the waiter, and init follows through PDEATHSIG) and then SIGKILLs every
   process still listed in the pids cgroup. Network: the namespace has only ``lo``, down, so no
   connection to anything, the host's loopback included.

Statuses, beyond the language's own classification (``languages.py``): ``Timeout`` (wall clock
or ``RLIMIT_CPU``), ``OutputLimit`` (stdout + stderr past ``max_output_bytes`` when one is set, or a file past
``RLIMIT_FSIZE``: SIGXFSZ), ``MemoryError`` (the cgroup's OOM killer ended the program, or the
interpreter reported an allocation failure).

Not covered: CPU share between concurrent runs (each run is single-threaded in practice; no cpu
cgroup), disk space inside the working directory beyond ``RLIMIT_FSIZE`` per file, side channels
(timing, /sys reads), and kernel exploits; the sandbox is a containment for buggy and mildly
hostile generated code, not a security boundary against a determined attacker.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import selectors
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from adaptome.core.errors import AdaptomeError
from adaptome.domains.codegen import isolation as iso

BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


class LimitsError(AdaptomeError, ValueError):
    """Sandbox limits out of range (a user's option)."""


@dataclass
class Limits:
    """Resource limits of one run.

    Args:
        timeout_s: wall-clock limit; the whole process tree is killed at it.
        cpu_s: ``RLIMIT_CPU`` per process (seconds of CPU).
        memory_mb: memory of the whole run (cgroup) or virtual memory per process (``RLIMIT_AS``).
        max_procs: processes of the run (pids cgroup) or ``RLIMIT_NPROC``.
        file_size_mb: largest file the program may write (``RLIMIT_FSIZE``).
        capture_bytes: bytes of stdout and of stderr kept in the result (MultiPL-E keeps 2048); the rest is
            read and discarded, so a program printing a lot is graded on its exit status as in MultiPL-E.
        max_output_bytes: stdout + stderr beyond this kills the run with status ``OutputLimit`` (0: no such
            limit, MultiPL-E's rule; the wall-clock limit still ends a program that prints forever).
        nofile: open file descriptors per process.
        env_pass: names of the caller's environment variables passed through (default: none).
    """

    timeout_s: float = 15.0
    cpu_s: int = 15
    memory_mb: int = 512
    max_procs: int = 32
    file_size_mb: int = 16
    capture_bytes: int = 2048
    max_output_bytes: int = 0
    nofile: int = 256
    env_pass: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_output_bytes < 0:
            raise LimitsError(f"sandbox output limit {self.max_output_bytes} bytes: must be 0 (none) or more")
        if self.timeout_s <= 0 or self.cpu_s < 1 or self.memory_mb < 16 or self.max_procs < 1:
            raise LimitsError(f"sandbox limits out of range: need timeout > 0 s, cpu >= 1 s, memory >= 16 MB and "
                              f"processes >= 1 (got timeout {self.timeout_s} s, cpu {self.cpu_s} s, memory "
                              f"{self.memory_mb} MB, processes {self.max_procs})")


@dataclass
class RunResult:
    """What happened to one run."""

    exit_code: int  # the program's exit code, or -signal when a signal ended it
    stdout: str
    stderr: str
    timed_out: bool = False
    output_limited: bool = False
    memory_exceeded: bool = False
    cancelled: bool = False  # the caller stopped the run (``run_sandboxed(cancel=...)``); its status means nothing
    signal: int | None = None
    wall_s: float = 0.0
    isolation: dict = field(default_factory=dict)


class SandboxError(AdaptomeError, RuntimeError):
    """The sandbox itself could not be set up, or its limits cannot work here (not the program's fault)."""


def remove_stale(parent: Path) -> list[Path]:
    """Remove the per-run cgroups under ``parent`` left by a harness that was killed mid-run: those whose owner
    (the pid in ``adaptome-run-<pid>-<random>``) no longer exists and that hold no process. A live owner's cgroup
    (possibly about to receive its run) is never touched, nor one of the older ``adaptome-run-<random>`` names
    (no owner recorded); ``rmdir`` itself refuses a cgroup that still holds a process. Returns the removed ones."""
    removed = []
    for d in parent.glob("adaptome-run-*-*"):
        try:
            owner = int(d.name.split("-")[2])
        except ValueError:
            continue
        try:
            os.kill(owner, 0)
            continue  # the owner lives (or the pid is another live process's now: keep it, to be safe)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # a live process of another user
        try:
            if (d / "cgroup.procs").read_text().split():
                continue
            d.rmdir()
            removed.append(d)
        except OSError:
            pass  # another harness removed it first, or it is busy
    return removed


class _Cgroups:
    """Per-run memory and pids cgroups (cgroup v1), created before the run and removed after."""

    def __init__(self, isolation: iso.Isolation, limits: Limits) -> None:
        name = f"adaptome-run-{os.getpid()}-{uuid.uuid4().hex[:12]}"  # the owner's pid: see remove_stale
        self.dirs: list[Path] = []
        self.memory = self.pids = None
        for parent in (isolation.memory_cgroup, isolation.pids_cgroup):
            if parent:
                remove_stale(Path(parent))
        if isolation.memory_cgroup:
            self.memory = Path(isolation.memory_cgroup) / name
            self.memory.mkdir()
            self.dirs.append(self.memory)
            nbytes = str(limits.memory_mb << 20)
            (self.memory / "memory.limit_in_bytes").write_text(nbytes)
            sw = self.memory / "memory.memsw.limit_in_bytes"
            if sw.exists():
                sw.write_text(nbytes)
        if isolation.pids_cgroup:
            self.pids = Path(isolation.pids_cgroup) / name
            self.pids.mkdir()
            self.dirs.append(self.pids)
            (self.pids / "pids.max").write_text(str(limits.max_procs + 2))  # + waiter and init

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def memory_hit(self) -> bool:
        """Whether the run met its memory limit: the OOM killer acted in the cgroup (``oom_kill``, Linux >=
        4.13), or, on older kernels, the limit was hit at all (``failcnt``, which page cache also bumps)."""
        if self.memory is None:
            return False
        try:
            for line in (self.memory / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1]) > 0
        except (OSError, ValueError):
            pass
        hits = 0
        for name in ("memory.failcnt", "memory.memsw.failcnt"):
            try:
                hits += int((self.memory / name).read_text())
            except (OSError, ValueError):
                pass
        return hits > 0

    def live_pids(self) -> list[int]:
        pids: set[int] = set()
        for d in self.dirs:
            try:
                pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return sorted(pids)

    def sweep_and_remove(self) -> None:
        """SIGKILL anything left in the cgroups, then remove them."""
        deadline = time.monotonic() + 5.0
        while True:
            left = self.live_pids()
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not left:
                break
            if time.monotonic() > deadline:
                raise SandboxError(f"processes {left} survived SIGKILL in {self.dirs}")
            time.sleep(0.005)
        for d in self.dirs:
            for _ in range(200):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.005)


@functools.cache
def min_address_space_mb(argv: tuple[str, ...], lo: int = 32, hi: int = 4096) -> int:
    """The smallest ``RLIMIT_AS`` (MB, to within 1/8) under which ``argv`` still exits 0, by bisection.

    Runtimes reserve large virtual ranges at start, so this is measured, not guessed, before
    ``RLIMIT_AS`` is used as the memory bound (machines without a memory cgroup).
    """
    def starts(mb: int) -> bool:
        r = subprocess.run(list(argv), capture_output=True, timeout=60,
                           preexec_fn=lambda: _limit(resource.RLIMIT_AS, mb << 20))
        return r.returncode == 0

    if not starts(hi):
        raise SandboxError(f"{argv[0]} does not start even with {hi} MB of address space")
    while hi - lo > max(1, lo // 8):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if starts(mid) else (mid, hi)
    return hi


def check_address_space(argv: tuple[str, ...], limits: Limits) -> None:
    """Refuse a memory limit under which the interpreter cannot even start (RLIMIT_AS machines only)."""
    need = min_address_space_mb(argv)
    if limits.memory_mb < need + 64:
        raise SandboxError(f"memory limit {limits.memory_mb} MB is too small for {argv[0]} under RLIMIT_AS "
                           f"(it needs {need} MB of address space just to start); raise --memory-mb")


def _limit(which: int, value: int) -> None:
    resource.setrlimit(which, (value, value))


def _child_setup(plan: dict) -> None:
    """``preexec_fn``: runs in the forked child, before exec. Only the program's process returns."""
    lib = plan["libc"]
    status_w = plan["status_w"]
    try:
        for procs in plan["cgroup_procs"]:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        level = plan["level"]
        if level != "rlimits":
            flags = iso.NS_FLAGS | (iso.CLONE_NEWUSER if level == "userns" else 0)
            if lib.unshare(flags) != 0:
                raise OSError(ctypes_errno(), "unshare")
            if level == "userns":
                iso._write_id_maps(plan["uid"], plan["gid"])
            init = os.fork()
            if init:
                _waiter(lib, init)  # never returns
            lib.prctl(iso.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            lib.prctl(iso.PR_SET_DUMPABLE, 0, 0, 0, 0)  # its /proc/1/environ (the harness's) stays unreadable
            _mount_setup(lib, plan)
            prog = os.fork()
            if prog:
                _init_loop(prog, status_w)  # never returns
        os.close(status_w)
        _drop_and_limit(plan)
    except BaseException as e:  # setup failed: report it, never exec the program
        try:
            os.write(status_w, f"setup {type(e).__name__}: {e}".encode()[:400])
        finally:
            os._exit(126)


def ctypes_errno() -> int:
    return ctypes.get_errno()


def _waiter(lib, init: int) -> None:
    """The child outside the namespaces: dies with the harness, waits for init, exits."""
    lib.prctl(iso.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    lib.prctl(iso.PR_SET_DUMPABLE, 0, 0, 0, 0)
    _close_all(keep=-1)
    os.waitpid(init, 0)
    os._exit(0)


def _init_loop(prog: int, status_w: int) -> None:
    """pid 1 of the namespace: reap everything; report the program's status; exit (kills the rest)."""
    _close_all(keep=status_w)
    while True:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            os._exit(0)
        if pid == prog:
            os.write(status_w, f"status {st}".encode())
            os._exit(0)


def _close_all(keep: int) -> None:
    for fd in (0, 1, 2):
        os.close(fd)
    if keep < 0:
        os.closerange(3, 1 << 20)
    else:
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 20)


def _mount_setup(lib, plan: dict) -> None:
    def mount(src, target, fstype, flags):
        if lib.mount(src, target, fstype, flags, None) != 0:
            raise OSError(ctypes_errno(), f"mount {target!r}")

    mount(b"none", b"/", None, iso.MS_REC | iso.MS_PRIVATE)
    wd = plan["workdir"].encode()
    mount(wd, wd, None, iso.MS_BIND | iso.MS_REC)
    for target, keep in plan["remounts"]:
        if lib.mount(b"none", target.encode(), None, iso.MS_REMOUNT | iso.MS_BIND | iso.MS_RDONLY | keep, None) != 0:
            if target == "/":
                raise OSError(ctypes_errno(), "remount / read-only")
    mount(b"proc", b"/proc", b"proc", iso.MS_NOSUID | iso.MS_NODEV | iso.MS_NOEXEC)


def _drop_and_limit(plan: dict) -> None:
    lim: Limits = plan["limits"]
    _limit(resource.RLIMIT_CORE, 0)
    # soft < hard: SIGXCPU (graded Timeout) at the soft limit; with soft == hard the kernel sends SIGKILL
    resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_s, lim.cpu_s + 1))
    _limit(resource.RLIMIT_FSIZE, lim.file_size_mb << 20)
    _limit(resource.RLIMIT_NOFILE, lim.nofile)
    if not plan["memory_cgroup"]:
        _limit(resource.RLIMIT_AS, lim.memory_mb << 20)
    if not plan["pids_cgroup"]:
        _limit(resource.RLIMIT_NPROC, lim.max_procs)
    if plan["run_as"] is not None:
        os.setgroups([])
        os.setgid(plan["run_as"])
        os.setuid(plan["run_as"])
    os.chdir(plan["workdir"])


def _namespace_init(waiter: int) -> int | None:
    """The host pid of the namespace's init: the waiter's only child (``/proc/<pid>/task/<pid>/children``)."""
    try:
        kids = Path(f"/proc/{waiter}/task/{waiter}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if len(kids) == 1 else None


def _kill_init(waiter: int) -> bool:
    """SIGKILL the namespace's init through a pidfd taken while it is still the waiter's child (its pid cannot
    then be another process's); False when it cannot be done (no init, no pidfd support)."""
    init = _namespace_init(waiter)
    if init is None or not hasattr(os, "pidfd_open"):
        return False
    try:
        fd = os.pidfd_open(init)
    except OSError:
        return False
    try:
        if _namespace_init(waiter) != init:
            return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _kill_run(proc: subprocess.Popen, cg: _Cgroups | None, level: str) -> None:
    """SIGKILL the run. In a PID namespace: its init, whose parent (the waiter) sees it exit only once the kernel
    has killed every other process of the namespace, so the waiter ends (``proc.wait()``) after all of them; the
    waiter itself when init cannot be found (init then dies by PDEATHSIG and the namespace with it, a moment
    after the waiter: without a pids cgroup to sweep, its processes could outlive the run by that moment)."""
    try:
        if level == "rlimits":
            os.killpg(proc.pid, signal.SIGKILL)
            return
        if not _kill_init(proc.pid):
            proc.kill()
    except ProcessLookupError:
        pass


def run_sandboxed(argv: list[str], workdir: str | os.PathLike, limits: Limits | None = None,
                  isolation: iso.Isolation | None = None, cancel: threading.Event | None = None) -> RunResult:
    """Run ``argv`` in ``workdir`` (which must exist and is the only writable place).

    ``cancel`` set (by another thread) ends the run within half a second as a timeout would, and the
    result says ``cancelled`` (the caller stopping, e.g. on Ctrl-C: not the program's fault).
    """
    limits = limits or Limits()
    isolation = isolation or iso.detect()
    workdir = os.path.realpath(workdir)
    if isolation.run_as is not None:
        os.chown(workdir, isolation.run_as, isolation.run_as)
        for p in Path(workdir).iterdir():
            os.chown(p, isolation.run_as, isolation.run_as)
    env = dict(BASE_ENV, HOME=workdir, TMPDIR=workdir)
    env.update({k: os.environ[k] for k in limits.env_pass if k in os.environ})
    status_r, status_w = os.pipe()
    cg = _Cgroups(isolation, limits) if (isolation.memory_cgroup or isolation.pids_cgroup) else None
    plan = {"libc": iso.libc(), "status_w": status_w, "level": isolation.level, "workdir": workdir,
            "cgroup_procs": cg.procs_files() if cg else [], "limits": limits,
            "memory_cgroup": bool(cg and cg.memory), "pids_cgroup": bool(cg and cg.pids),
            "run_as": isolation.run_as,
            "uid": os.getuid(), "gid": os.getgid(),
            "remounts": iso.readonly_remounts(workdir) if isolation.level != "rlimits" else []}
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, pass_fds=(status_w,),
                                preexec_fn=lambda: _child_setup(plan))
    except BaseException:
        os.close(status_r)
        os.close(status_w)
        if cg:
            cg.sweep_and_remove()
        raise
    os.close(status_w)
    try:
        out = _collect(proc, status_r, limits, t0, leader_exit_ends=isolation.level == "rlimits", cancel=cancel)
        if out["timed_out"] or out["output_limited"] or out["cancelled"]:
            _kill_run(proc, cg, isolation.level)
        proc.wait()
        if isolation.level == "rlimits":
            _kill_run(proc, cg, isolation.level)  # the group may outlive its leader
        out["status"] += _drain(status_r)
    finally:
        os.close(status_r)
        memory_hit = cg.memory_hit() if cg else False
        if cg:
            cg.sweep_and_remove()
    return _result(out, proc, memory_hit, isolation, time.monotonic() - t0)


def _collect(proc: subprocess.Popen, status_r: int, limits: Limits, t0: float, leader_exit_ends: bool = False,
             cancel: threading.Event | None = None) -> dict:
    """Read stdout / stderr / the status pipe until all close, the deadline, or the output cap.

    ``leader_exit_ends`` (no PID namespace): the run ends when the program's own process exits,
    even if a child it left behind still holds the pipes open (it is killed afterwards).
    """
    sel = selectors.DefaultSelector()
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    for f in (proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
        sel.register(f.fileno(), selectors.EVENT_READ)
    sel.register(status_r, selectors.EVENT_READ)
    status = bytearray()
    total = 0
    timed_out = output_limited = cancelled = False
    open_fds = {proc.stdout.fileno(), proc.stderr.fileno(), status_r}
    while open_fds:
        left = limits.timeout_s - (time.monotonic() - t0)
        if left <= 0:
            timed_out = True
            break
        if cancel is not None and cancel.is_set():
            cancelled = True
            break
        for key, _ in sel.select(timeout=min(left, 0.5)):
            fd = key.fd
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(fd)
                open_fds.discard(fd)
                continue
            if fd == status_r:
                status += chunk
                continue
            total += len(chunk)
            buf = bufs[fd]
            if len(buf) < limits.capture_bytes:
                buf += chunk[: limits.capture_bytes - len(buf)]
        if limits.max_output_bytes and total > limits.max_output_bytes:
            output_limited = True
            break
        if leader_exit_ends and proc.poll() is not None:
            for fd, buf in bufs.items():  # what is already in the pipes
                try:
                    while len(buf) < limits.capture_bytes and (chunk := os.read(fd, 65536)):
                        buf += chunk[: limits.capture_bytes - len(buf)]
                except BlockingIOError:
                    pass
            break
    sel.close()
    proc.stdout.close()
    proc.stderr.close()
    return {"bufs": list(bufs.values()), "timed_out": timed_out, "output_limited": output_limited,
            "cancelled": cancelled, "status": status}


def _drain(fd: int) -> bytes:
    out = bytearray()
    os.set_blocking(fd, False)
    try:
        while chunk := os.read(fd, 4096):
            out += chunk
    except BlockingIOError:
        pass
    return bytes(out)


def _result(out: dict, proc: subprocess.Popen, memory_hit: bool, isolation: iso.Isolation, wall: float) -> RunResult:
    stdout, stderr = (bytes(b).decode("utf-8", "replace") for b in out["bufs"])
    status = bytes(out["status"]).decode("utf-8", "replace")
    if status.startswith("setup"):
        raise SandboxError(f"sandbox set-up failed ({isolation.level}): {status[6:]}")
    if isolation.level == "rlimits":
        code = proc.returncode
    elif status.startswith("status "):
        code = os.waitstatus_to_exitcode(int(status.split()[1]))
    else:  # killed before init reported: the harness killed it (timeout / output cap)
        code = -signal.SIGKILL
    sig = -code if code < 0 else None
    timed_out = out["timed_out"] or sig == signal.SIGXCPU
    return RunResult(exit_code=code, stdout=stdout, stderr=stderr, timed_out=timed_out,
                     output_limited=out["output_limited"] or sig == signal.SIGXFSZ,
                     memory_exceeded=memory_hit and code != 0, signal=sig, wall_s=wall, isolation=isolation.describe(),
                     cancelled=out["cancelled"])
