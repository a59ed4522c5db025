"""Keeping a long CPU run's resident memory bounded.

PyTorch on the CPU allocates tensors with glibc's malloc. glibc serves an allocation above the *mmap threshold*
with its own mapping (returned to the OS on free) and smaller ones from its heap arenas, and by default it raises
the threshold (up to 32 MiB) each time a mapped block is freed. Training with batches of varying shape then moves
activation-sized tensors into the arenas, where freed blocks of one shape rarely fit the next and the heap only
grows: resident memory climbs step after step while the live tensors stay the same size. A fixed threshold keeps
large tensors on their own mappings and trimming returns freed heap tops promptly (bench/memory_growth.py measures
both and the cost in time).

glibc reads these tunables when a process starts, so they are set in the environment of a new process:
:func:`reexec_with_bounded_malloc` restarts the current program once with them (the demo does so).
"""

from __future__ import annotations

import os
import sys

# Values in bytes. 1 MiB: activation and gradient tensors of a 135M model at batch x length in the hundreds are far
# above it, while small objects stay on the fast heap path. Two arenas: the CPU trainer's threads need no more.
MALLOC_TUNABLES = {
    "MALLOC_MMAP_THRESHOLD_": str(1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(8 * 1024 * 1024),
    "MALLOC_ARENA_MAX": "2",
}
_MARKER = "ASTFORGE_BOUNDED_MALLOC"


def bounded_malloc_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the tunables set where the user has not set them."""
    merged = dict(os.environ if env is None else env)
    for key, value in MALLOC_TUNABLES.items():
        merged.setdefault(key, value)
    return merged


def reexec_with_bounded_malloc(argv: list[str] | None = None) -> None:
    """Restart this Python program with :data:`MALLOC_TUNABLES` in its environment, once (a marker variable stops a
    loop). Does nothing when they are already in effect, or when ``ASTFORGE_BOUNDED_MALLOC=0``."""
    if os.environ.get(_MARKER) in {"0", "1"} or sys.platform != "linux":
        return
    env = bounded_malloc_env()
    env[_MARKER] = "1"
    args = argv if argv is not None else [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, env)
