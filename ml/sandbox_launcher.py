"""One sandboxed process, for :mod:`ml.sandbox`: the trusted launcher that sets the resource limits and namespaces
up, the socket prelude, the clean environment and working directory, and how the process's end is read and classified.

The layers and their known gaps are described in :mod:`ml.sandbox`; `_run` runs one program under a given
`_Isolation`, and `ml.sandbox` chooses which one (probed once per process).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

STATUSES = ("passed", "failed", "timeout", "memory", "output_limit", "process_limit", "killed", "error")

DEFAULT_MAX_OUTPUT = 4096  # characters kept per stream (head and tail)
FILE_SIZE_LIMIT = 64 * 1024 * 1024  # RLIMIT_FSIZE, bytes: bounds stdout/stderr files and files written
OPEN_FILES_LIMIT = 256
PROCESS_LIMIT = 64  # RLIMIT_NPROC: processes in one sandbox (its launcher and init included); binds a non-root uid
UNPRIVILEGED_UID = 65534  # "nobody": a root caller's program runs as this uid, so file permissions and NPROC apply
WORKDIR_SIZE_LIMIT = 128 * 1024 * 1024  # bytes: the working directory is a tmpfs of this size (a full one: ENOSPC)
PRIVATE_TMP_SIZE_LIMIT = 32 * 1024 * 1024  # bytes: each of the private /tmp and /dev/shm
LAUNCHER_FAILED = 125  # exit code of the launcher when it could not set a layer up

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = _CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWNS

# Trusted code, run as a script with -I -S before the program: the limits, namespaces and mounts (see its docstring).
_BOOT = Path(__file__).with_name("sandbox_boot.py")

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
    readonly_root: bool = False  # needs a user + mount namespace (and mount_proc, for the nested-userns limit)
    drop_uid: int | None = None  # the kernel uid the program runs as (a root caller only)



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
    if exception == "OSError" and ("File too large" in last_stderr or "No space left" in last_stderr):
        return "output_limit", exception  # RLIMIT_FSIZE, or the working directory's tmpfs is full
    if exception == "BlockingIOError" and "Resource temporarily unavailable" in last_stderr:
        return "process_limit", exception  # fork/clone refused by RLIMIT_NPROC
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
            "readonly_root": isolation.readonly_root,
            "drop_uid": isolation.drop_uid,
            "workdir": str(workdir),
            "workdir_size": WORKDIR_SIZE_LIMIT,
            "tmp_size": PRIVATE_TMP_SIZE_LIMIT,
            # what the unprivileged uid must still reach: the interpreter, its standard library, the venv; the
            # venv also at its own path when that is a symlink, or the interpreter would not find its pyvenv.cfg
            "expose": sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix),
                              os.path.abspath(sys.prefix),
                              os.path.dirname(os.path.realpath(sys.executable)),
                              os.path.dirname(os.path.abspath(sys.executable))}),
        }
        program = [sys.executable, "-s", "-B", "-u", "-c", _PRELUDE, _PROGRAM_NAME]
        command = [sys.executable, "-I", "-S", str(_BOOT), json.dumps(config), *program]
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
