"""The one place where astforge runs code it did not write (completions, rewrites, their unit tests).

`run_python(source)` runs a program in a fresh interpreter and returns a `SandboxResult`;
`run_many(sources)` does the same for many programs with a bounded number of workers.
Nothing here executes user code in the calling process.
The launcher, the prelude and the running of one process are in :mod:`ml.sandbox_launcher`; this module
chooses the isolation (probed once per process) and runs programs under it.

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
import logging
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from ml.sandbox_launcher import (
    _CLONE_NEWNET,
    _CLONE_NEWPID,
    _CLONE_NEWUSER,
    DEFAULT_MAX_OUTPUT,
    FILE_SIZE_LIMIT,
    LAUNCHER_FAILED,
    NAMESPACE_FLAGS,
    OPEN_FILES_LIMIT,
    PROCESS_LIMIT,
    STATUSES,
    SandboxResult,
    _Isolation,
    _run,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "FILE_SIZE_LIMIT",
    "LAUNCHER_FAILED",
    "NAMESPACE_FLAGS",
    "OPEN_FILES_LIMIT",
    "PROCESS_LIMIT",
    "STATUSES",
    "SandboxResult",
    "run_many",
    "run_python",
    "sandbox_layers",
]


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
