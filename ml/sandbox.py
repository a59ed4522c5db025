"""The one place where astforge runs code it did not write (completions, rewrites, their unit tests).

`run_python(source)` runs a program in a fresh interpreter and returns a `SandboxResult`;
`run_many(sources)` does the same for many programs with a bounded number of workers.
Nothing here executes user code in the calling process.

Layers, outermost first (what `sandbox_layers()` reports for the current machine):

1. A child process in its own session (`start_new_session=True`). When the wall-clock timeout passes,
   and also when the program ends by itself, SIGKILL goes to the whole process group: nothing the
   program started outlives it.
2. Resource limits, set by a small trusted launcher (`python -I -S`) before it execs the program:
   RLIMIT_AS (memory per process), RLIMIT_CPU (CPU seconds; soft limit → SIGXCPU), RLIMIT_FSIZE
   (64 MiB per file, stdout and stderr included), RLIMIT_NOFILE, RLIMIT_CORE = 0, and RLIMIT_NPROC
   inside the namespaces of layer 3 (where, since Linux 5.14, it counts the sandbox's own processes
   rather than every process of the caller's uid). The launcher, not a `preexec_fn`, sets them:
   `run_many` starts processes from threads, and Python documents `preexec_fn` as unsafe in a threaded
   parent (the forked child can deadlock before exec).
3. Linux namespaces, when an unprivileged user namespace can be created (probed once per process with a
   trivial program; on the development machine it can): a new user namespace (uid mapped to itself, or
   to 65534 inside when the caller is root, so the program holds no capabilities after exec), a new
   **network** namespace (only a loopback interface, and it is down: nothing is reachable, not even
   127.0.0.1 of the host), a new **PID** namespace whose PID 1 is a minimal reaper in the launcher
   (the program is PID 2, so its signals behave as usual; when it ends, PID 1 exits and the kernel kills
   every process left in the namespace, including those that escaped the process group with setsid),
   and a mount namespace with a private /proc (other processes' command lines and environments are not
   visible). Python 3.11 has no `os.unshare`, so the launcher calls libc's `unshare` through ctypes.
   If the probe fails, a user + network namespace alone is tried, then none; without a network
   namespace layer 4 is the only network guard.
4. A prelude run before the program replaces `socket.socket` (inet families), `socket.create_connection`
   and `socket.getaddrinfo` with functions that raise
   `PermissionError("network is disabled in the sandbox")`. Always on: with the network namespace it
   turns an opaque "network unreachable" into a clear message; without it, it is the only (weak,
   bypassable through `_socket`) network guard.
5. A fresh temporary working directory (also HOME and TMPDIR), removed afterwards, and an environment
   built from scratch (PATH, locale, PYTHONHASHSEED=0, single-threaded BLAS): nothing of the caller's
   environment, secrets included, is inherited.

Known gaps, on purpose or by necessity:
- RLIMIT_NPROC does not bind root: the kernel exempts uid 0 (outside the namespace) from it, so when
  astforge runs as root (as on the development machine) a loop of forks is bounded only by the
  wall-clock timeout, RLIMIT_AS per process, and the PID namespace that reaps everything afterwards.
  A pids cgroup (systemd `TasksMax`, a Kubernetes pod pids limit) is the real cap there.
- No filesystem isolation beyond the working directory: the program runs with the caller's uid on the
  host filesystem and can read (and write) what the caller can.
- The program's interpreter is `sys.executable` started with `-s -B -u` rather than `-I`: `-I` implies
  `-E`, which would ignore PYTHONHASHSEED; the environment is already built from scratch, so `-E` would
  add nothing, and the working directory must stay importable for the `files` a caller adds.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "timeout", "memory", "output_limit", "killed", "error")

DEFAULT_MAX_OUTPUT = 4096  # characters kept per stream (head and tail)
FILE_SIZE_LIMIT = 64 * 1024 * 1024  # RLIMIT_FSIZE, bytes: bounds stdout/stderr files and files written
OPEN_FILES_LIMIT = 256
PROCESS_LIMIT = 64  # RLIMIT_NPROC, with namespaces only; the kernel ignores it for root (module docstring)
LAUNCHER_FAILED = 125  # exit code of the launcher when it could not set a layer up

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = _CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWNS

# Trusted code: runs in the child before the program, with -I -S (nothing from site-packages).
# argv[1] is a JSON config; the remaining argv is the program's command line.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
argv = sys.argv[2:]

def fail(msg):
    os.write(2, ("astforge-sandbox: " + msg + "\n").encode())
    os._exit(125)

def limit(name, soft, hard):
    kind = getattr(resource, name)
    _, cur_hard = resource.getrlimit(kind)
    if cur_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur_hard), min(hard, cur_hard)
    try:
        resource.setrlimit(kind, (soft, hard))
    except (OSError, ValueError) as exc:
        fail("setrlimit %s: %s" % (name, exc))

def run_program():
    try:
        os.execve(argv[0], argv, os.environ)
    except OSError as exc:
        fail("exec %s: %s" % (argv[0], exc))

for name, soft, hard in cfg["rlimits"]:
    limit(name, soft, hard)

flags = cfg["unshare"]
if not flags:
    run_program()

libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.geteuid(), os.getegid()
if libc.unshare(flags) != 0:
    fail("unshare: " + os.strerror(ctypes.get_errno()))

def write(path, text):
    with open(path, "w") as fh:
        fh.write(text)

try:
    write("/proc/self/setgroups", "deny")
except FileNotFoundError:
    pass
write("/proc/self/uid_map", "%d %d 1" % (uid or 65534, uid))
write("/proc/self/gid_map", "%d %d 1" % (gid or 65534, gid))
# Set after unshare: since Linux 5.14 the count is then per user namespace (the sandbox's own
# processes); before it, it would count every process of the caller's uid on the machine.
limit("RLIMIT_NPROC", cfg["nproc"], cfg["nproc"])

# The launcher stays outside the new PID namespace; its first child is PID 1 there, a minimal init
# that reaps orphans and reports the program's wait status through a pipe. The program runs as PID 2,
# so signals behave as usual (PID 1 ignores signals it has no handler for).
rfd, wfd = os.pipe()
init = os.fork()
if init == 0:
    os.close(rfd)
    if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG: die with the launcher
        fail("prctl: " + os.strerror(ctypes.get_errno()))
    if cfg["mount_proc"]:
        MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x4000, 0x40000, 2, 4, 8
        if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            fail("mount --make-rprivate /: " + os.strerror(ctypes.get_errno()))
        if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
            fail("mount proc: " + os.strerror(ctypes.get_errno()))
    program = os.fork()
    if program == 0:
        os.close(wfd)
        run_program()
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == program:
            os.write(wfd, str(status).encode())
            os._exit(0)  # the kernel now kills whatever the program left running

os.close(wfd)
_, init_status = os.waitpid(init, 0)
report = b""
while chunk := os.read(rfd, 64):
    report += chunk
if not report:
    fail("the namespace init ended without a report (wait status %d)" % init_status)
status = int(report)
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)
os._exit(os.waitstatus_to_exitcode(status))
"""

# Runs in the program's interpreter (`python -c _PRELUDE main.py`): blocks the network, then runs main.py.
_PRELUDE = r"""
def _astforge_sandbox_main():
    import runpy, socket, sys

    def denied(*args, **kwargs):
        raise PermissionError("network is disabled in the sandbox")

    inet = (-1, socket.AF_INET, socket.AF_INET6)  # -1: the default family, AF_INET

    class socket_without_network(socket.socket):  # AF_UNIX stays: asyncio's self-pipe needs socketpair
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None and family in inet:
                denied()
            super().__init__(family, type, proto, fileno)

    socket.socket = socket.SocketType = socket_without_network
    socket.create_connection = socket.getaddrinfo = denied
    program = sys.argv.pop(1)
    runpy.run_path(program, run_name="__main__")


_astforge_sandbox_main()
"""

_PROGRAM_NAME = "main.py"


@dataclass(frozen=True)
class SandboxResult:
    """How a program ended. `ok` is True only for status "passed" (exit code 0)."""

    ok: bool
    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    error_type: str | None = None  # exception name from the traceback, or the signal's name
    truncated: bool = False  # stdout or stderr was cut to max_output characters


@dataclass(frozen=True)
class _Isolation:
    unshare: int
    mount_proc: bool


@functools.cache
def _isolation() -> _Isolation:
    """The strongest namespace set that works here, found by running `pass` under each candidate."""
    if sys.platform != "linux":
        return _Isolation(0, False)
    for candidate in (_Isolation(NAMESPACE_FLAGS, True), _Isolation(_CLONE_NEWUSER | _CLONE_NEWNET, False)):
        probe = _run(
            "pass\n",
            timeout_s=10.0,
            memory_mb=512,
            cpu_s=None,
            files=None,
            max_output=DEFAULT_MAX_OUTPUT,
            isolation=candidate,
        )
        if probe.ok:
            return candidate
        log.warning("sandbox: namespaces %#x unavailable (%s)", candidate.unshare, probe.stderr.strip()[-200:])
    log.warning("sandbox: running without namespaces; the socket prelude is the only network guard")
    return _Isolation(0, False)


def sandbox_layers() -> dict[str, bool]:
    """Which layers are active on this machine (see the module docstring)."""
    iso = _isolation()
    return {
        "process_group_timeout": True,
        "rlimits": True,
        "rlimit_nproc_enforced": os.geteuid() != 0 and bool(iso.unshare & _CLONE_NEWUSER),
        "user_namespace": bool(iso.unshare & _CLONE_NEWUSER),
        "network_namespace": bool(iso.unshare & _CLONE_NEWNET),
        "pid_namespace": bool(iso.unshare & _CLONE_NEWPID),
        "private_proc": iso.mount_proc,
        "socket_prelude": True,
        "temp_workdir": True,
        "clean_environment": True,
    }


def run_python(
    source: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    cpu_s: float | None = None,
    files: dict[str, str] | None = None,
    max_output: int = DEFAULT_MAX_OUTPUT,
) -> SandboxResult:
    """Run `source` as `__main__` in a sandboxed interpreter.

    memory_mb bounds the address space of each process; cpu_s defaults to the wall-clock timeout
    (rounded up) plus one second; files are extra text files (relative paths) in the working
    directory, which is importable.
    """
    return _run(
        source,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        cpu_s=cpu_s,
        files=files,
        max_output=max_output,
        isolation=_isolation(),
    )


def run_many(
    sources: Iterable[str],
    *,
    workers: int = 2,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    cpu_s: float | None = None,
    files: dict[str, str] | None = None,
    max_output: int = DEFAULT_MAX_OUTPUT,
) -> list[SandboxResult]:
    """Run many programs, at most `workers` at a time; results come back in input order."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    sources = list(sources)
    _isolation()  # probe once, before the threads start

    def one(source: str) -> SandboxResult:
        return run_python(
            source, timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s, files=files, max_output=max_output
        )

    if workers == 1 or len(sources) <= 1:
        return [one(s) for s in sources]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, sources))


def _environment(workdir: Path) -> dict[str, str]:
    return {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _rlimits(memory_mb: int, cpu_s: float) -> list[tuple[str, int, int]]:
    memory = int(memory_mb) * 1024 * 1024
    cpu = max(1, math.ceil(cpu_s))
    return [
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_AS", memory, memory),
        ("RLIMIT_CPU", cpu, cpu + 1),  # soft: SIGXCPU, hard one second later: SIGKILL
        ("RLIMIT_FSIZE", FILE_SIZE_LIMIT, FILE_SIZE_LIMIT),
        ("RLIMIT_NOFILE", OPEN_FILES_LIMIT, OPEN_FILES_LIMIT),
    ]


def _write_files(workdir: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts or str(rel) == _PROGRAM_NAME:
            raise ValueError(f"sandbox file names must be relative, inside the working directory: {name!r}")
        target = workdir.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def _read_stream(fh, max_output: int) -> tuple[str, bool, str]:
    """(kept text, truncated?, last non-blank line) of a stream file; a long stream keeps head and tail."""
    size = fh.seek(0, os.SEEK_END)
    window = max(max_output, 64) * 4  # bytes read from each end; UTF-8 needs at most 4 per character
    fh.seek(0)
    if size <= 2 * window:
        text = fh.read().decode("utf-8", errors="replace")
        head = tail = text
    else:
        head = fh.read(window).decode("utf-8", errors="replace")
        fh.seek(size - window)
        tail = fh.read().decode("utf-8", errors="replace")
        text = None
    if text is not None and len(text) <= max_output:
        return text, False, _last_line(text)
    half = max_output // 2
    kept = head[:half] + f"\n... [cut by the sandbox: {size} bytes in all] ...\n" + tail[len(tail) - half :]
    return kept, True, _last_line(tail)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


def _classify(returncode: int, timed_out: bool, last_stderr: str) -> tuple[str, str | None]:
    match = _EXCEPTION_LINE.match(last_stderr.strip())
    exception = match.group(1).rsplit(".", 1)[-1] if match else None
    if timed_out:
        return "timeout", "WallClockTimeout"
    if returncode == 0:
        return "passed", None
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if name == "SIGXCPU":
            return "timeout", name
        if name == "SIGXFSZ":
            return "output_limit", name
        return "killed", name
    if returncode == LAUNCHER_FAILED and last_stderr.startswith("astforge-sandbox:"):
        return "error", "SandboxError"
    if exception == "MemoryError":
        return "memory", exception
    if exception == "OSError" and "File too large" in last_stderr:
        return "output_limit", exception
    return "failed", exception


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait until `pid` exits or the deadline passes, leaving it a zombie (WNOWAIT). True if it exited."""
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)
    return True


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _remove_tree(path: Path) -> None:
    def make_writable_and_retry(func, target, _exc_info):
        parent = os.path.dirname(target)
        os.chmod(parent, 0o700)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, 0o700)
        func(target)

    shutil.rmtree(path, onerror=make_writable_and_retry)


def _run(
    source: str,
    *,
    timeout_s: float,
    memory_mb: int,
    cpu_s: float | None,
    files: dict[str, str] | None,
    max_output: int,
    isolation: _Isolation,
) -> SandboxResult:
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    cpu = cpu_s if cpu_s is not None else math.ceil(timeout_s) + 1
    workdir = Path(tempfile.mkdtemp(prefix="astforge-sandbox-"))
    try:
        _write_files(workdir, files or {})
        (workdir / _PROGRAM_NAME).write_text(source, encoding="utf-8")
        config = {
            "rlimits": _rlimits(memory_mb, cpu),
            "nproc": PROCESS_LIMIT,
            "unshare": isolation.unshare,
            "mount_proc": isolation.mount_proc,
        }
        program = [sys.executable, "-s", "-B", "-u", "-c", _PRELUDE, _PROGRAM_NAME]
        command = [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(config), *program]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.monotonic()
            try:
                proc = subprocess.Popen(
                    command,
                    cwd=workdir,
                    env=_environment(workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                return SandboxResult(
                    False,
                    "error",
                    None,
                    "",
                    f"could not start the sandbox: {exc}",
                    time.monotonic() - start,
                    type(exc).__name__,
                )
            try:
                timed_out = not _wait_unreaped(proc.pid, start + timeout_s)
            finally:
                # Also after a normal exit: nothing the program started may outlive it. The launcher is
                # not reaped yet, so its process group id cannot have been reused by another process.
                _kill_group(proc)
                proc.wait()
            seconds = time.monotonic() - start
            stdout, cut_out, _ = _read_stream(out, max_output)
            stderr, cut_err, last_err = _read_stream(err, max_output)
        status, error_type = _classify(proc.returncode, timed_out, last_err)
        return SandboxResult(
            status == "passed",
            status,
            proc.returncode,
            stdout,
            stderr,
            round(seconds, 4),
            error_type,
            cut_out or cut_err,
        )
    finally:
        _remove_tree(workdir)
