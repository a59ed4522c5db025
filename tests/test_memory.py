"""ml/memory.py: a program restarts itself once with the malloc tunables, keeps its arguments, and a user's own
values (or ASTFORGE_BOUNDED_MALLOC=0) win."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ml.memory import MALLOC_TUNABLES, bounded_malloc_env

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = """
import json, os, sys
from ml.memory import reexec_with_bounded_malloc
print("start", flush=True)
reexec_with_bounded_malloc()
print(json.dumps({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in
                  ("MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX", "ASTFORGE_BOUNDED_MALLOC")}}))
"""


def _run(tmp_path: Path, **env: str) -> tuple[int, dict]:
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    clean = {k: v for k, v in os.environ.items() if k not in MALLOC_TUNABLES and k != "ASTFORGE_BOUNDED_MALLOC"}
    done = subprocess.run([sys.executable, str(script), "--flag", "x"], capture_output=True, text=True, check=True,
                          env={**clean, "PYTHONPATH": str(ROOT), **env}, timeout=60)
    lines = done.stdout.splitlines()
    return lines.count("start"), json.loads(lines[-1])


def test_restarts_once_with_the_tunables_and_the_same_arguments(tmp_path):
    starts, seen = _run(tmp_path)
    assert starts == 2  # the program, then its restart; no loop
    assert seen["argv"] == ["--flag", "x"]
    assert seen["env"] == {"MALLOC_MMAP_THRESHOLD_": MALLOC_TUNABLES["MALLOC_MMAP_THRESHOLD_"],
                           "MALLOC_ARENA_MAX": MALLOC_TUNABLES["MALLOC_ARENA_MAX"], "ASTFORGE_BOUNDED_MALLOC": "1"}


def test_a_users_values_win_and_it_can_be_turned_off(tmp_path):
    _, seen = _run(tmp_path, MALLOC_ARENA_MAX="4")
    assert seen["env"]["MALLOC_ARENA_MAX"] == "4"
    starts, seen = _run(tmp_path, ASTFORGE_BOUNDED_MALLOC="0")
    assert starts == 1 and seen["env"]["MALLOC_MMAP_THRESHOLD_"] is None
    assert bounded_malloc_env({"MALLOC_ARENA_MAX": "8"})["MALLOC_ARENA_MAX"] == "8"
