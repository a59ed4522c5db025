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
2. Resource limits, set by a small trusted launcher (`ml/sandbox_boot.py`, run as `python -I -S`) before it
   execs the program: RLIMIT_AS (memory per process), RLIMIT_CPU (CPU seconds; soft limit → SIGXCPU),
   RLIMIT_FSIZE (64 MiB per file, stdout and stderr included), RLIMIT_NOFILE, RLIMIT_CORE = 0, and
   RLIMIT_NPROC = `PROCESS_LIMIT` (64) inside the user namespace of layer 3. The launcher, not a `preexec_fn`,
   sets them: `run_many` starts processes from threads, and Python documents `preexec_fn` as unsafe in a
   threaded parent.
3. Linux namespaces, when an unprivileged user namespace can be created (probed once per process): a new user
   namespace, a new **network** namespace (only a loopback interface, down: nothing is reachable, not even
   127.0.0.1 of the host), a new **PID** namespace whose PID 1 is a minimal reaper (the program is PID 2; when
   it ends, the kernel kills every process left in the namespace, also those that escaped with setsid), and a
   mount namespace with a private /proc (other processes' command lines and environments are not visible).
   Nested user namespaces are disabled inside (`user.max_user_namespaces` = 0 in the sandbox's namespace).
4. **A read-only host.** Every mount is made read-only (`mount_setattr(AT_RECURSIVE)`); the program gets
   fresh, size-capped tmpfs mounts on /tmp, /dev/shm (32 MiB each) and its working directory (128 MiB,
   `WORKDIR_SIZE_LIMIT`): it cannot change a file outside them, and filling them fills memory it was given,
   not the host's disk (ENOSPC: status "output_limit").
5. **An unprivileged uid.** When the caller is root, the program's kernel uid is 65534 (`nobody`): file
   permissions apply (/etc/shadow, root's 0700 folders are unreadable) and so does RLIMIT_NPROC, which the
   kernel never applies to uid 0 — also not to uid 0 mapped to another uid inside a user namespace, so
   the launcher's parent writes the map and init drops to the uid. A fork loop stops at `PROCESS_LIMIT`
   processes (status "process_limit"). Folders that hide the interpreter from that uid (a Python under
   /root) are masked with an empty read-only tmpfs into which only the interpreter's prefixes are bound:
   the rest of such a folder (keys, histories) is not visible. A non-root caller keeps its own uid (the
   read-only host still applies; it can read what the caller can).
6. A prelude run before the program replaces `socket.socket` (inet families), `socket.create_connection`
   and `socket.getaddrinfo` with functions that raise
   `PermissionError("network is disabled in the sandbox")`: with the network namespace it turns an opaque
   "network unreachable" into a clear message; without it, it is the only (weak) network guard.
7. A fresh temporary working directory (also HOME and TMPDIR), and an environment built from scratch
   (PATH, locale, PYTHONHASHSEED=0, single-threaded BLAS): nothing of the caller's environment, secrets
   included, is inherited.

Where the kernel refuses the namespaces (a container without user namespaces), layers 3-5 are missing and
`sandbox_layers()["readonly_filesystem"]` is False: `run_python` and `run_many` then raise
`SandboxUnavailable` rather than run generated code, unless the user sets
`ASTFORGE_SANDBOX_ALLOW_HOST_WRITES=1`, accepting that a model's code can write and read what they can.

Known gaps:
- A non-root caller's own files stay readable (only writes are prevented); run astforge as its own user.
- The interpreter is `sys.executable` started with `-s -B -u` rather than `-I`: `-I` implies `-E`, which
  would ignore PYTHONHASHSEED; the environment is already built from scratch, so `-E` would add nothing, and
  the working directory must stay importable for the `files` a caller adds.
- Needs Linux 5.12 or later for `mount_setattr`; older kernels fail the probe and fall back as above.
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
    UNPRIVILEGED_UID,
    WORKDIR_SIZE_LIMIT,
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
    "ALLOW_HOST_WRITES_ENV",
    "UNPRIVILEGED_UID",
    "WORKDIR_SIZE_LIMIT",
    "SandboxResult",
    "SandboxUnavailable",
    "run_many",
    "run_python",
    "sandbox_layers",
]


#: Set to 1 to run generated code where the read-only filesystem layer is unavailable (it can then write every
#: file the caller can, and read what the caller can read). Off by default: `run_python` refuses instead.
ALLOW_HOST_WRITES_ENV = "ASTFORGE_SANDBOX_ALLOW_HOST_WRITES"


_PROBE_ERRORS: list[str] = []  # why stronger isolations failed their probe (for SandboxUnavailable's message)


class SandboxUnavailable(RuntimeError):
    """The machine cannot isolate the filesystem, and the user has not accepted running generated code without it."""


def _candidates() -> list[_Isolation]:
    drop = UNPRIVILEGED_UID if os.geteuid() == 0 else None
    full = _Isolation(NAMESPACE_FLAGS, True, readonly_root=True, drop_uid=drop)
    candidates = [full]
    if drop is not None:  # e.g. an interpreter that uid 65534 cannot read (a venv under /root)
        candidates.append(_Isolation(NAMESPACE_FLAGS, True, readonly_root=True))
    candidates.append(_Isolation(_CLONE_NEWUSER | _CLONE_NEWNET, False))
    return candidates


@functools.cache
def _isolation() -> _Isolation:
    """The strongest isolation that works here, found by running `pass` under each candidate."""
    if sys.platform != "linux":
        return _Isolation(0, False)
    for candidate in _candidates():
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
            if not candidate.readonly_root:
                log.warning("sandbox: no read-only filesystem here; generated code runs only with %s=1",
                            ALLOW_HOST_WRITES_ENV)
            return candidate
        _PROBE_ERRORS.append(probe.stderr.strip()[-300:])
        log.warning("sandbox: %s unavailable (%s)", candidate, probe.stderr.strip()[-200:])
    log.warning("sandbox: running without namespaces; the socket prelude is the only network guard")
    return _Isolation(0, False)


def sandbox_layers() -> dict[str, bool]:
    """Which layers are active on this machine (see the module docstring)."""
    iso = _isolation()
    user_ns = bool(iso.unshare & _CLONE_NEWUSER)
    unprivileged = os.geteuid() != 0 or iso.drop_uid is not None
    return {
        "process_group_timeout": True,
        "rlimits": True,
        "rlimit_nproc_enforced": unprivileged and user_ns,
        "unprivileged_uid": unprivileged,
        "user_namespace": user_ns,
        "network_namespace": bool(iso.unshare & _CLONE_NEWNET),
        "pid_namespace": bool(iso.unshare & _CLONE_NEWPID),
        "private_proc": iso.mount_proc,
        "readonly_filesystem": iso.readonly_root,
        "private_tmp": iso.readonly_root,
        "no_nested_user_namespaces": iso.readonly_root,
        "socket_prelude": True,
        "temp_workdir": True,
        "clean_environment": True,
        "host_writes_allowed_by_user": not iso.readonly_root and _host_writes_allowed(),
    }


def _host_writes_allowed() -> bool:
    return os.environ.get(ALLOW_HOST_WRITES_ENV, "").strip().lower() in {"1", "true", "yes"}


def _require_isolation() -> _Isolation:
    iso = _isolation()
    if not iso.readonly_root and not _host_writes_allowed():
        why = _PROBE_ERRORS[0] if _PROBE_ERRORS else "not Linux"
        raise SandboxUnavailable(
            "this machine cannot give generated code a read-only filesystem, so a model's code could delete or "
            f"read any file you can (the probe of the isolated sandbox failed: {why}). Run where user and mount "
            f"namespaces are allowed, or accept the risk with {ALLOW_HOST_WRITES_ENV}=1."
        )
    return iso


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
        isolation=_require_isolation(),
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
    _require_isolation()  # probe once, before the threads start; refuse before running any

    def one(source: str) -> SandboxResult:
        return run_python(
            source, timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s, files=files, max_output=max_output
        )

    if workers == 1 or len(sources) <= 1:
        return [one(s) for s in sources]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, sources))
