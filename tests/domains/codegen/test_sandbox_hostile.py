"""Hostile programs in R and Racket are contained by the sandbox (strongest isolation here).

Each program runs once (all in parallel, in a module fixture); the tests then check, per program:
the status the harness reports, that no process of the run is left (a marker in the command line
of every child the programs start), that nothing outside the working directory changed (a
world-writable target folder the programs try to write into), that the loopback listener saw no
connection, that the parent's secret did not leak, and that the machine is still usable
(a sentinel process outside the sandbox, owned by the same unprivileged user, survives; a fresh
correct program still passes).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from adaptome.domains.codegen import isolation as iso
from adaptome.domains.codegen.execute import execute_one

from .conftest import short_limits

SECRET = "adaptome-secret-7f3e9"
MARK = "7777.25"  # `sleep MARK` marks every process a hostile program leaves behind


def _programs(target: Path, port: int) -> dict[tuple[str, str], tuple[str, str]]:
    """(language, case) -> (program, expected status)."""
    t = str(target)
    return {
        ("r", "loop"): ("repeat {}\n", "Timeout"),
        ("rkt", "loop"): ("#lang racket\n(let loop () (loop))\n", "Timeout"),
        ("r", "fork_bomb"): (f"system('f(){{ sleep {MARK} & f | f & }}; f', wait = FALSE)\nSys.sleep(60)\n",
                             "Timeout"),
        ("rkt", "fork_bomb"): (f"#lang racket\n(process \"f(){{ sleep {MARK} & f | f & }}; f\")\n(sleep 60)\n",
                               "Timeout"),
        ("r", "memory_bomb"): ("x <- list()\nrepeat { x[[length(x) + 1]] <- runif(5e6) }\n", "MemoryError"),
        ("rkt", "memory_bomb"): ("#lang racket\n(let loop ([acc '()]) (loop (cons (make-flvector 5000000 1.0) acc)))\n"
                                 "(require racket/flonum)\n", "MemoryError"),
        ("r", "write_outside"): (f"writeLines('pwned', '{t}/r.txt')\n", "Exception"),
        ("rkt", "write_outside"): (f"#lang racket\n(with-output-to-file \"{t}/rkt.txt\" (lambda () (display 1)))\n",
                                   "Exception"),
        ("r", "network"): (f"con <- socketConnection('127.0.0.1', {port}, blocking = TRUE, open = 'r+', timeout = 2)\n"
                           "writeLines('hello', con)\n", "Exception"),
        ("rkt", "network"): (f"#lang racket\n(define-values (i o) (tcp-connect \"127.0.0.1\" {port}))\n"
                             "(display \"hello\" o)\n", "Exception"),
        ("r", "secret"): ("cat(Sys.getenv('ADAPTOME_TEST_SECRET'), '\\n')\n"
                          "e <- try(readLines('/proc/1/environ', warn = FALSE), silent = TRUE)\n"
                          "if (!inherits(e, 'try-error')) cat(e)\n", "OK"),
        ("rkt", "secret"): ("#lang racket\n(displayln (getenv \"ADAPTOME_TEST_SECRET\"))\n"
                            "(with-handlers ([exn:fail? void]) (display (file->string \"/proc/1/environ\")))\n",
                            "OK"),
        ("r", "big_output"): ("s <- strrep('x', 1000)\nfor (i in 1:200000) cat(s, '\\n')\n", "OutputLimit"),
        ("rkt", "big_output"): ("#lang racket\n(define s (make-string 1000 #\\x))\n"
                                "(for ([i 200000]) (displayln s))\n", "OutputLimit"),
        ("r", "kill_parent"): ("tools::pskill(Sys.getppid(), 9L)\nsystem('kill -9 $PPID; kill -9 -1')\nSys.sleep(2)\n",
                               "Exception"),
        ("rkt", "kill_parent"): ("#lang racket\n(system \"kill -9 $PPID; kill -9 -1\")\n(sleep 2)\n", "Exception"),
        ("r", "setsid_daemon"): (f"system(\"setsid sh -c 'echo daemon-up; exec sleep {MARK}' &\")\nSys.sleep(0.5)\n",
                                 "OK"),
        ("rkt", "setsid_daemon"): (f"#lang racket\n(system \"setsid sh -c 'echo daemon-up; exec sleep {MARK}' &\")\n"
                                   "(sleep 0.5)\n", "OK"),
    }


def _marked_processes() -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if MARK.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    for exe in ("Rscript", "racket"):
        if shutil.which(exe) is None:
            pytest.skip(f"`{exe}` is not installed (make test installs r-base-core and racket)")
    isolation = iso.detect()
    target = Path(tempfile.mkdtemp(prefix="adaptome-outside-"))  # under /tmp: every user can reach it
    os.chmod(target, 0o777)  # writable by anyone: only the mount namespace can stop the write
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list = []
    stop = threading.Event()

    def accept_loop():
        while not stop.is_set():
            try:
                accepted.append(listener.accept())
            except OSError:
                pass

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    sentinel = subprocess.Popen(["sleep", "300"], user=iso.NOBODY if os.geteuid() == 0 else None)
    os.environ["ADAPTOME_TEST_SECRET"] = SECRET
    progs = _programs(target, port)
    after: dict = {}
    try:
        with ThreadPoolExecutor(2) as pool:
            # programs that never end get 4 s; the others end on their own, so a loaded machine gets time
            futs = {key: pool.submit(execute_one, key[0], prog,
                                     short_limits(timeout_s=4.0 if key[1] in ("loop", "fork_bomb") else 20.0),
                                     isolation)
                    for key, (prog, _) in progs.items()}
            results = {key: f.result() for key, f in futs.items()}
        time.sleep(0.2)
        after.update({"marked": _marked_processes(), "sentinel_alive": sentinel.poll() is None,
                      "accepted": len(accepted),
                      "fresh": execute_one("r", "stopifnot(1 + 1 == 2)\n", short_limits(), isolation)})
    finally:
        os.environ.pop("ADAPTOME_TEST_SECRET", None)
        stop.set()
        acceptor.join()
        listener.close()
        sentinel.kill()
        sentinel.wait()
        files = sorted(p.name for p in target.iterdir())
        shutil.rmtree(target, ignore_errors=True)
        after["files"] = files
    return {"results": results, "expected": {k: v[1] for k, v in progs.items()}, "after": after,
            "isolation": isolation}


CASES = [(lang, case) for case in ("loop", "fork_bomb", "memory_bomb", "write_outside", "network", "secret",
                                   "big_output", "kill_parent", "setsid_daemon") for lang in ("r", "rkt")]


@pytest.mark.parametrize("lang,case", CASES)
def test_hostile_program_gets_the_right_status(hostile, lang, case):
    if hostile["isolation"].level == "rlimits" and case in ("network", "write_outside"):
        pytest.skip("no namespaces on this machine: network and outside writes are not contained (documented)")
    r = hostile["results"][(lang, case)]
    assert r["status"] == hostile["expected"][(lang, case)], (r["status"], r["exit_code"], r["stderr"][:500])
    if case in ("loop", "fork_bomb"):
        assert r["wall_s"] < 4.0 + 3.0  # the timeout is 4 s: nothing outlives it by much


def test_no_process_of_any_run_is_left(hostile):
    assert hostile["after"]["marked"] == []
    # the daemons did start (so their absence now means they were killed, not that they never ran)
    for lang in ("r", "rkt"):
        assert "daemon-up" in hostile["results"][(lang, "setsid_daemon")]["stdout"]


def test_machine_still_usable_and_outside_untouched(hostile):
    after = hostile["after"]
    assert after["fresh"]["status"] == "OK"
    if hostile["isolation"].level != "rlimits":  # without a PID namespace kill -9 -1 reaches the user's processes
        assert after["sentinel_alive"], "kill -9 -1 inside the sandbox reached a process outside it"
        assert after["files"] == []
        assert after["accepted"] == 0
        for lang in ("r", "rkt"):
            assert "Read-only file system" in hostile["results"][(lang, "write_outside")]["stderr"] or \
                lang == "rkt"


def test_secret_does_not_leak(hostile):
    for lang in ("r", "rkt"):
        r = hostile["results"][(lang, "secret")]
        assert SECRET not in r["stdout"] and SECRET not in r["stderr"]


def test_per_run_cgroups_are_removed(hostile):
    i = hostile["isolation"]
    for parent in (i.memory_cgroup, i.pids_cgroup):
        if parent:
            assert not list(Path(parent).glob("adaptome-run-*"))
