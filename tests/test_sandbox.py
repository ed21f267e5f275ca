"""The sandbox against hostile programs: each ends in a non-ok status (or fails at what it tried) in bounded time,
leaves no process behind, and leaves the harness process and its results file alone."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tasks import isolation
from tasks.base import Item
from tasks.code import answer_completion, score_items
from tasks.isolation import MAX_UIDS, SANDBOX_UID_BASE
from tasks.sandbox import PRELUDE, SandboxLimits, run_program, sandbox_python

ROOT = os.geteuid() == 0
FAST = SandboxLimits(wall_seconds=1.5, cpu_seconds=5)
HUNG_S = 60.0
"""A hostile run that has not returned by then is hung, FAST's wall limit long past: the bound only turns a hang into
a failure that says so. How fast the sandbox ends programs is measured by `harness bench sandbox`, not here."""
RESULTS_TEXT = '{"score": 0.5}\n'
needs_root = pytest.mark.skipif(not ROOT, reason="this guarantee needs the root path (a dedicated uid)")
FILL_FOLDER = "for i in range(8):\n    with open(f'big{i}', 'wb') as f:\n        f.write(b'x' * (16 << 20))\n"
"""Eight 16 MiB files in the working folder: each under RLIMIT_FSIZE, 128 MiB in all, twice the folder's cap."""


@functools.cache
def private_workdir_made() -> bool:
    return run_program("pass").private_workdir


def require_private_workdir() -> None:
    """As root the private tmpfs must be made (the tests then assert it); otherwise it takes user namespaces."""
    if not ROOT and not private_workdir_made():
        pytest.skip("needs root or unprivileged user namespaces for the private tmpfs")


def sandbox_processes() -> list[int]:
    """Live processes of any sandbox uid (root path)."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        uid = int(status.split("\nUid:")[1].split()[0])
        if SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + MAX_UIDS and status.split("\nState:")[1].split()[0] != "Z":
            found.append(int(name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def results(tmp_path: Path):
    """A results file of the harness; after the test it must be unchanged, and nothing of the sandbox alive."""
    path = tmp_path / "results.json"
    path.write_text(RESULTS_TEXT)
    yield path
    assert path.read_text() == RESULTS_TEXT
    if ROOT:
        assert sandbox_processes() == []


def run_hostile(source: str, results: Path):
    """The program under FAST's limits; a run that does not return within HUNG_S fails the test as hung."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        result = pool.submit(run_program, source.replace("RESULTS", str(results)), FAST).result(timeout=HUNG_S)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"run_program has not returned after {HUNG_S:.0f} s (its wall limit is {FAST.wall_seconds} s): "
                    "the sandbox did not end the program")
    finally:
        pool.shutdown(wait=False)
    pids = [int(w) for w in result.stdout.split() if w.startswith("pid=") for w in [w[4:]]]
    assert not any(alive(pid) for pid in pids), result
    return result


def test_normal_program_prints_and_exits_ok() -> None:
    result = run_program("print('hello', 6 * 7)")
    assert (result.status, result.returncode, result.stdout, result.stderr) == ("ok", 0, "hello 42\n", "")


def test_failing_assert_and_syntax_error_are_errors() -> None:
    failing = run_program("assert 1 + 1 == 3, 'arithmetic'")
    assert failing.status == "error" and "AssertionError: arithmetic" in failing.stderr
    broken = run_program("def f(:\n    pass")
    assert broken.status == "error" and "SyntaxError" in broken.stderr


def test_infinite_loop_times_out(results: Path) -> None:
    assert run_hostile("while True:\n    pass", results).status == "timeout"


def test_sigterm_ignoring_sleeper_is_killed(results: Path) -> None:
    source = ("import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "print(f'pid={os.getpid()}', flush=True)\ntime.sleep(60)")
    assert run_hostile(source, results).status == "timeout"


def test_fork_bomb_is_contained(results: Path) -> None:
    source = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    assert run_hostile(source, results).status != "ok"


def test_huge_allocation_fails() -> None:
    result = run_program("x = bytearray(4 << 30)\nprint('allocated')", FAST)
    assert result.status == "error" and "MemoryError" in result.stderr and "allocated" not in result.stdout


def test_huge_print_is_cut_at_the_file_size_limit(results: Path) -> None:
    limits = SandboxLimits(wall_seconds=5, file_size_bytes=1 << 20, output_bytes=4096)
    result = run_program("import sys\nsys.stdout.write('x' * 100_000_000)\nsys.stdout.flush()", limits)
    assert result.status == "error" and "File too large" in result.stderr
    assert len(result.stdout) < limits.output_bytes + 100


@needs_root
def test_writes_outside_the_working_directory_fail(results: Path) -> None:
    outside = Path("/tmp") / f"sandbox-escape-{uuid.uuid4().hex}"
    source = f"""
for path in ['RESULTS', '{outside}']:
    try:
        open(path, 'w').write('pwned')
        print('wrote', path)
    except OSError as e:
        print('refused', path, type(e).__name__)
import os
try:
    os.remove('RESULTS')
except OSError:
    pass
open('inside.txt', 'w').write('fine')
print(os.getuid())
"""
    result = run_hostile(source, results)
    assert result.status == "ok" and f"refused {results}" in result.stdout
    assert not outside.exists()  # it wrote to its private /tmp, which vanished with it
    assert int(result.stdout.split()[-1]) >= SANDBOX_UID_BASE


def test_network_is_cut(results: Path) -> None:
    source = """
import os, socket
print(os.readlink('/proc/self/ns/net'))
try:
    socket.create_connection(('1.1.1.1', 53), timeout=1)
    print('connected')
except OSError as e:
    print('no connection', type(e).__name__)
try:
    server = socket.socket()
    server.bind(('0.0.0.0', 8765))
    server.listen()
    print('bound')
except OSError as e:
    print('no bind', type(e).__name__)
"""
    result = run_hostile(source, results)
    assert "connected" not in result.stdout.split()
    namespace = result.stdout.split()[0]
    if ROOT:
        assert namespace != os.readlink("/proc/self/ns/net")  # bound, if at all, inside its own namespace
    elif namespace == os.readlink("/proc/self/ns/net"):
        assert "no bind" in result.stdout


def test_audit_hook_fallback_refuses_sockets(tmp_path: Path) -> None:
    """The non-root fallback, run directly: the prelude sees the harness's namespace and blocks sockets."""
    (tmp_path / "program.py").write_text("import socket\nsocket.socket()\nprint('socket made')")
    here = os.readlink("/proc/self/ns/net")
    done = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", PRELUDE, here], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "PermissionError" in done.stderr and "socket made" not in done.stdout


@needs_root
def test_signalling_the_harness_fails(results: Path) -> None:
    bystander = subprocess.Popen(["sleep", "30"])
    source = """
import os, signal
hits = 0
for target in [os.getppid()] + [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]:
    try:
        os.kill(target, signal.SIGKILL)
        hits += 1
    except OSError:
        pass
try:
    os.kill(-1, signal.SIGKILL)
except OSError:
    pass
print('hits', hits)
"""
    try:
        result = run_hostile(source, results)
        assert bystander.poll() is None and "hits 0" in result.stdout
    finally:
        bystander.kill()
        bystander.wait()


@needs_root
def test_setsid_double_fork_escape_is_swept(results: Path) -> None:
    source = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print(f'pid={os.getpid()}', flush=True)
        time.sleep(60)
    os._exit(0)
time.sleep(0.3)
"""
    result = run_hostile(source, results)
    assert result.status == "ok" and result.strays >= 1


def test_sandbox_python_is_usable_by_the_sandbox() -> None:
    assert os.access(sandbox_python(), os.X_OK)


def test_filling_the_working_folder_is_an_error_and_never_reaches_the_disk(results: Path) -> None:
    require_private_workdir()
    source = """
import json, os
names = sorted(os.listdir('.'))
open('small', 'wb').write(b'x')
dev = os.stat('small').st_dev
mount = next(f for f in map(str.split, open('/proc/self/mountinfo')) if f[2] == f'{os.major(dev)}:{os.minor(dev)}')
vfs = os.statvfs('.')
print(json.dumps({'cwd': os.getcwd(), 'names': names, 'dev': dev, 'fstype': mount[mount.index('-') + 1],
                  'total': vfs.f_blocks * vfs.f_frsize}), flush=True)
""" + FILL_FOLDER + "print('wrote 128 MiB')"
    result = run_hostile(source, results)
    assert result.status == "error" and "No space left on device" in result.stderr, result
    assert "wrote 128 MiB" not in result.stdout and result.private_workdir
    seen = json.loads(result.stdout.splitlines()[0])
    assert seen["names"] == ["program.py"]  # stdout and stderr are not in it
    assert seen["dev"] != os.stat(tempfile.gettempdir()).st_dev  # its files were never on the harness's disk
    assert seen["fstype"] == "tmpfs" and seen["total"] <= FAST.workdir_bytes
    folder = Path(seen["cwd"])  # the mountpoint: an empty folder of the harness's temp dir, deleted after
    assert folder.parent == Path(tempfile.gettempdir()) and not folder.exists()


def test_a_completion_filling_the_folder_before_a_correct_function_scores_0() -> None:
    require_private_workdir()
    solution = "def add(a, b):\n    return a + b\n"
    item = Item("fill/0", "Add two numbers.", solution, {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]})
    scores = score_items([item, item], [answer_completion(FILL_FOLDER + solution), answer_completion(solution)])
    assert scores == [{"pass@1": 0.0, "tests_passed": 0.0}, {"pass@1": 1.0, "tests_passed": 1.0}]


def test_a_program_too_big_for_the_working_folder_is_an_error() -> None:
    require_private_workdir()
    limits = SandboxLimits(wall_seconds=5, cpu_seconds=5, workdir_bytes=1 << 20)
    result = run_program("x = 1\n" + "#" * (2 << 20) + "\nprint('ran')", limits)
    assert result.status == "error" and "program.py" in result.stderr and "ran" not in result.stdout, result


def test_without_the_private_tmpfs_the_program_runs_from_the_disk_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback, forced by a mount the kernel refuses (an unknown option): the harness's copy of program.py on
    the disk runs, as before the private tmpfs."""
    real = isolation.mount_private
    monkeypatch.setattr(isolation, "mount_private", lambda mounts, workdir, _: real(mounts, workdir, b"no_such=1"))
    result = run_program("import os\nprint(os.stat('.').st_dev, *sorted(os.listdir('.')))", FAST)
    assert result.status == "ok" and not result.private_workdir, result
    dev, *names = result.stdout.split()
    assert int(dev) == os.stat(tempfile.gettempdir()).st_dev and names == ["program.py"]
