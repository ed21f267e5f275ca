"""What runs between fork and exec of a sandboxed program, and the uids and processes around it (`tasks/sandbox.py`
is the public face and its docstring lists the layers of defence).

Kept apart because the code of `preexec`'s `setup` runs in the forked child before exec, where another thread of the
harness may hold a lock: it may call only `os`, `resource` and libc on values computed before the fork, never import
or allocate a lock. Namespaces and mounts go through libc (`unshare`, `mount`) with ctypes: the standard library has
no binding for them.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import pwd
import resource
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path

SANDBOX_UID_BASE, MAX_UIDS = 61000, 1024
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 1 << 14, 1 << 18
PRIVATE_TMP, TMPFS_OPTIONS = (b"/tmp", b"/var/tmp", b"/dev/shm"), b"size=16m,nr_inodes=16k,mode=1777"
WORKDIR_INODES = 16384  # files in the working folder: empty files cost kernel memory that size= does not count
SWEEP_SECONDS = 3.0
_LIBC = ctypes.CDLL(None, use_errno=True)


class SandboxError(RuntimeError):
    """The sandbox cannot run programs safely here (no usable interpreter, no free uid, survivors)."""


def reserve_uid() -> int:
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


def preexec(rlimits: Sequence[tuple[int, int, int]], workdir_bytes: int, uid: int | None, folder: str, program: bytes,
            report: int) -> Callable[[], None]:
    """What the child runs between fork and exec: no imports and no locks, since other threads may hold some.
    Everything it needs is computed here, before the fork. It writes b"1" to `report` once its cwd is the tmpfs."""
    harness_mounts = os.readlink("/proc/self/ns/mnt")
    owner = (os.getuid(), os.getgid()) if uid is None else (uid, uid)
    id_maps = ((b"/proc/self/setgroups", b"deny"), (b"/proc/self/uid_map", f"{owner[0]} {owner[0]} 1\n".encode()),
               (b"/proc/self/gid_map", f"{owner[1]} {owner[1]} 1\n".encode()))
    workdir = os.fsencode(folder)
    options = (f"size={workdir_bytes},nr_inodes={WORKDIR_INODES},mode=0700,"
               f"uid={owner[0]},gid={owner[1]}").encode()

    def setup() -> None:
        if uid is None:
            isolated = enter_user_namespace(id_maps)
        else:
            _LIBC.unshare(CLONE_NEWNET)  # a failure leaves the audit hook in PRELUDE
            isolated = _LIBC.unshare(CLONE_NEWNS) == 0
        if isolated and mount_private(harness_mounts, workdir, options):
            write_program(program, owner)
            os.write(report, b"1")
        for which, soft, hard in rlimits:
            resource.setrlimit(which, (soft, hard))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return setup


def enter_user_namespace(id_maps: tuple[tuple[bytes, bytes], ...]) -> bool:
    """Not root: new user, network and mount namespaces, the caller's own uid and gid mapped (so tmpfs can name
    them). False, after trying today's user and network namespaces, when the kernel refuses."""
    if _LIBC.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS) != 0:
        _LIBC.unshare(CLONE_NEWUSER | CLONE_NEWNET)  # may fail too: the audit hook in PRELUDE takes over
        return False
    try:
        for path, text in id_maps:  # setgroups first: an unprivileged gid_map needs it denied
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, text)  # one write: the kernel takes a map in a single write only
            finally:
                os.close(fd)
    except OSError:
        return False
    return True


def mount_private(harness_mounts: str, workdir: bytes, options: bytes) -> bool:
    """Mount the capped tmpfs on the working folder and enter it, then the private /tmp, /var/tmp and /dev/shm.
    Only in a mount namespace that is provably not the harness's: there a mount would hide the machine's folders.
    True when the cwd is now the tmpfs."""
    if os.readlink("/proc/self/ns/mnt") == harness_mounts:
        return False
    if _LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return False
    private = _LIBC.mount(b"tmpfs", workdir, b"tmpfs", MS_NOSUID | MS_NODEV, options) == 0
    if private:
        try:
            os.chdir(workdir)  # the cwd so far is the disk folder's inode, under the mount
        except OSError:
            private = False
    for target in PRIVATE_TMP:  # after the working folder, which usually lies under /tmp and would be hidden
        _LIBC.mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NODEV, TMPFS_OPTIONS)
    return private


def write_program(program: bytes, owner: tuple[int, int]) -> None:
    """program.py in the (empty) tmpfs cwd, owned by the program's uid. One too big for the cap is removed: the
    prelude then fails to open it, an error like any other."""
    fd = os.open(b"program.py", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        os.fchown(fd, owner[0], owner[1])
        view = memoryview(program)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        os.unlink(b"program.py")
    finally:
        os.close(fd)


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


def sweep(uid: int | None, sid: int) -> tuple[int, bool]:
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
