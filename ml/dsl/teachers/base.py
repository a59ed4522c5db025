"""The teacher protocol of the DSL pipeline: what every teacher answers, and the records it answers with.

A teacher does four tasks (:data:`TASKS`): a domain's spec with example requests, new EN/FR requests, a label
(request → schema-valid AST) and a verdict (does a candidate AST mean what a request asks?). Backends:
:class:`ml.dsl.teachers.programmatic.ProgrammaticTeacher` (deterministic) and
:class:`ml.dsl.teachers.http_teacher.HttpTeacher` (a chat model over HTTP); :func:`ml.dsl.teachers.make_teacher`
picks one by name.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from ml.dsl.domains import DomainSpec

TASKS = ("domain_spec", "queries", "label", "judge")
LANGS = ("en", "fr")


@dataclass
class TeacherQuery:
    """One request to label. ``ast`` is known when the request was built from it (programmatic teacher)."""

    domain: str
    lang: str  # "en" | "fr"
    text: str
    ast: dict | None = None


@dataclass
class Verdict:
    accept: bool
    reason: str = ""


@dataclass
class TeacherStats:
    """Counters, reported as asset metadata. ``calls``: requests made to the backend (HTTP calls for an LLM
    teacher); ``retries``: attempts beyond the first; ``http_errors``: HTTP error statuses and failed connections;
    ``dropped``: items given up on (a label or verdict of None, requests missing from a ``queries`` answer)."""

    calls: int = 0
    retries: int = 0
    invalid_json: int = 0
    schema_invalid: int = 0
    timeouts: int = 0
    http_errors: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}


class TeacherUnavailable(RuntimeError):
    """The teacher's server cannot be reached (or is misconfigured): the step must fail, not drop everything."""


class Teacher:
    """Base class. Subclasses implement the four tasks; every counter goes to ``self.stats``."""

    name: str = "teacher"

    def __init__(self) -> None:
        self.stats = TeacherStats()
        self._lock = threading.Lock()

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for key, delta in deltas.items():
                setattr(self.stats, key, getattr(self.stats, key) + delta)

    def describe(self) -> dict[str, str]:
        """What to record next to the stats (backend, and model / URL for an LLM teacher)."""
        return {"backend": self.name}

    def domain_spec(
        self, domain: str, *, seed: int, examples: int, min_operators: int = 4, max_operators: int = 7
    ) -> tuple[DomainSpec, list[str]]:
        """The spec of ``domain`` and ``examples`` English example requests. Raises ``ValueError`` when no valid
        spec can be had (a domain without a spec cannot continue)."""
        raise NotImplementedError

    def queries(self, spec: DomainSpec, schema: dict, n: int, *, seed: int) -> list[TeacherQuery]:
        """``n`` distinct requests, languages alternating en, fr, en, ..."""
        raise NotImplementedError

    def label(self, spec: DomainSpec, schema: dict, query: TeacherQuery) -> dict | None:
        """A schema-valid AST for ``query``, or None (dropped, counted)."""
        raise NotImplementedError

    def judge(
        self, spec: DomainSpec, schema: dict, query: TeacherQuery, candidate: dict, reference: dict | None
    ) -> Verdict | None:
        """Does ``candidate`` mean what ``query`` asks? A verdict on meaning only: a candidate that breaks
        ``schema`` but asks for the same thing is accepted (schema validity is measured separately). None when no
        verdict could be had (counted)."""
        raise NotImplementedError



def interleave(en: list[str], fr: list[str], n: int) -> list[tuple[str, str]]:
    """``[(en, e0), (fr, f0), (en, e1), ...]`` cut to ``n``: the order every teacher returns requests in."""
    out: list[tuple[str, str]] = []
    for i in range(max(len(en), len(fr))):
        if i < len(en):
            out.append(("en", en[i]))
        if i < len(fr):
            out.append(("fr", fr[i]))
    return out[:n]
