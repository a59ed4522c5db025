"""Teachers that write a rewrite step per task, and the checks a step must pass to become a training trace.

- :class:`ProgrammaticSrlTeacher` (default, deterministic): the task's family knows its rule; the think is the
  family's rationale, the state update records what was decided.
- :class:`HttpSrlTeacher`: a chat model behind Ollama or an OpenAI-compatible server (the project's
  :class:`ml.dsl.teachers.http_teacher.HttpTeacher` transport, retries and counters), temperature 0.3, shown 2-3
  exemplar steps of other train families first. Its text is kept as it is: the checks below judge it.

Every step is executed (:mod:`ml.srl.environment`) and scored by :func:`trace_quality`; only steps at or above the
threshold become traces. Rejections are counted by reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ml.dsl.teachers.http_teacher import HttpTeacher
from ml.srl.environment import EnvReport, execute_actions
from ml.srl.families import RewriteFamily, get_family
from ml.srl.trace import SYSTEM, Parsed, compact, parse_step, render_step, user_prompt

MAX_THINK_WORDS = 40  # a think longer than this loses brevity score in proportion
QUALITY_WEIGHTS = {"schema": 0.3, "execution": 0.5, "brevity": 0.2}


def teacher_state(family: RewriteFamily) -> dict[str, Any]:
    """The state after a one-step task: what must hold, what was decided, nothing left open."""
    return {
        "constraints": ["keep behaviour"],
        "decisions": [f"rewrite to {family.fix or 'nothing'}"],
        "open_issues": [],
        "next_focus": "done",
    }


def programmatic_step(family: RewriteFamily) -> str:
    return render_step(family.rationale, family.action(), teacher_state(family))


class SrlTeacher:
    name = "teacher"

    def describe(self) -> dict[str, str]:
        return {"backend": self.name}

    def step(self, task: dict[str, Any]) -> str | None:
        """The teacher's step for ``task`` as text (None: the teacher gave no usable answer)."""
        raise NotImplementedError


class ProgrammaticSrlTeacher(SrlTeacher):
    name = "programmatic"

    def step(self, task):
        return programmatic_step(get_family(task["family"]))


class HttpSrlTeacher(HttpTeacher, SrlTeacher):
    """An LLM teacher. Before each task it is shown up to ``exemplars`` (≤ 3) worked steps: tasks of
    ``exemplar_tasks`` from train families other than the task's, answered by the programmatic teacher."""

    def __init__(self, protocol: str, base_url: str, model: str, exemplar_tasks: Sequence[dict] = (),
                 exemplars: int = 2, **kwargs: Any) -> None:
        kwargs.setdefault("temperature", 0.3)
        super().__init__(protocol, base_url, model, json_mode=False, **kwargs)
        self.name = f"{protocol}_srl"
        self.exemplar_tasks = [t for t in exemplar_tasks if t["split"] == "train"]
        self.exemplars = max(0, min(3, exemplars))

    def _shots(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        shots: dict[str, dict] = {}
        for candidate in self.exemplar_tasks:
            if candidate["family"] != task["family"] and candidate["language"] == task["language"]:
                shots.setdefault(candidate["family"], candidate)
            if len(shots) == self.exemplars:
                break
        return list(shots.values())

    def messages(self, task: dict[str, Any]) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": SYSTEM}]
        for shot in self._shots(task):
            messages += [{"role": "user", "content": user_prompt(shot["language"], shot["instruction"], shot["code"])},
                         {"role": "assistant", "content": programmatic_step(get_family(shot["family"]))}]
        return messages + [{"role": "user", "content": user_prompt(task["language"], task["instruction"],
                                                                   task["code"])}]

    def step(self, task):
        def keep(content: str) -> str | None:
            return content.strip() or None

        return self._run("srl_step", self.messages(task), keep)


def make_srl_teacher(backend: str, **kwargs: Any) -> SrlTeacher:
    if backend == "programmatic":
        return ProgrammaticSrlTeacher()
    if backend in ("ollama", "openai"):
        return HttpSrlTeacher(backend, **kwargs)
    raise ValueError(f"unknown teacher backend {backend!r}; expected programmatic, ollama or openai")


def trace_quality(parsed: Parsed, report: EnvReport | None) -> float:
    """In [0, 1]: 0.3 for a well-formed step, 0.5 when its action did the task in the sandbox, 0.2 for brevity (a
    think of at most MAX_THINK_WORDS words; less in proportion beyond). A step that did not execute stays < 0.6."""
    if not parsed.ok:
        return 0.0
    words = len(parsed.step.think.split())
    brevity = min(1.0, MAX_THINK_WORDS / max(words, 1))
    executed = report is not None and report.executed
    return round(QUALITY_WEIGHTS["schema"] + QUALITY_WEIGHTS["execution"] * executed
                 + QUALITY_WEIGHTS["brevity"] * brevity, 4)


def rejection_reason(parsed: Parsed, report: EnvReport | None) -> str:
    """Why a step is not a trace (the first failed check)."""
    if not parsed.ok:
        return "malformed"
    if report is None:
        return "not_executed"
    if report.status != "ok":
        return f"sandbox_{report.status}"
    if report.matches == 0:
        return "no_match"
    if not report.parses:
        return "does_not_parse"
    if not report.equals_expected:
        return "not_expected_code"
    if report.behaviour == "differs":
        return "behaviour_differs"
    return "low_quality"


@dataclass
class TraceBatch:
    traces: list[dict[str, Any]]
    rejected: Counter = field(default_factory=Counter)
    teacher_stats: dict[str, int] = field(default_factory=dict)
    # one per task, before any filter: {"task_id", "family", "split", "parsed", "executed"}. The kept traces all
    # parse and execute by construction; these say how often the teacher itself does.
    outcomes: list[dict[str, Any]] = field(default_factory=list)


def teacher_traces(
    tasks: Sequence[dict[str, Any]],
    teacher: SrlTeacher,
    *,
    min_quality: float = 0.6,
    max_per_family: int | None = None,
    timeout_s: float = 10.0,
    progress=None,
) -> TraceBatch:
    """One step per task from ``teacher``, executed in the sandbox and scored; the rows of those at or above
    ``min_quality``, at most ``max_per_family`` per family (families stay balanced). ``progress(done, total)`` is
    called as the teacher answers."""
    texts: list[str | None] = []
    for i, task in enumerate(tasks):
        texts.append(teacher.step(task))
        if progress is not None:
            progress(i + 1, len(tasks))
    parsed = [parse_step(t) if t is not None else Parsed(error="no answer") for t in texts]
    runnable = [i for i, p in enumerate(parsed) if p.ok]
    reports: dict[int, EnvReport] = dict(zip(runnable, execute_actions(
        [{**tasks[i], "action": parsed[i].step.action} for i in runnable], timeout_s=timeout_s), strict=True))
    rejected: Counter = Counter()
    kept: list[dict[str, Any]] = []
    per_family: Counter = Counter()
    outcomes = [{"task_id": task["id"], "family": task["family"], "split": task["split"], "parsed": parsed[i].ok,
                 "executed": bool(reports.get(i) is not None and reports[i].executed)} for i, task in enumerate(tasks)]
    for i, task in enumerate(tasks):
        report = reports.get(i)
        quality = trace_quality(parsed[i], report)
        if quality < min_quality:
            rejected["no_answer" if texts[i] is None else rejection_reason(parsed[i], report)] += 1
            continue
        if max_per_family is not None and per_family[task["family"]] >= max_per_family:
            rejected["family_quota"] += 1
            continue
        per_family[task["family"]] += 1
        step = parsed[i].step
        kept.append({
            "task_id": task["id"], "language": task["language"], "family": task["family"], "split": task["split"],
            "instruction": task["instruction"], "code": task["code"], "expected": task["expected"],
            "step": texts[i], "think": step.think, "action": compact(step.action),
            "state_update": compact(step.state), "trace_quality": quality,
            "env_report": compact(report.as_dict() | {"rewritten": None}),
        })
    stats = teacher.stats.as_dict() if hasattr(teacher, "stats") else {}
    return TraceBatch(traces=kept, rejected=rejected, teacher_stats=stats, outcomes=outcomes)


def teacher_success(outcomes: Sequence[dict[str, Any]], split: str = "test") -> dict[str, Any]:
    """The teacher's parse and execution rates on ``split``'s tasks before the quality filter (a measurement, unlike
    the kept traces' rates, which are 1.0 by construction)."""
    from ml.stats import rate

    rows = [o for o in outcomes if o["split"] == split]
    return {"trace_parse_rate": rate([o["parsed"] for o in rows], split=split),
            "execution_success": rate([o["executed"] for o in rows], split=split)}
