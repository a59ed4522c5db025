"""Teachers for the DSL pipeline: domain specs, EN/FR requests, labels (request → schema-valid AST) and verdicts.

The package, one concern a module:

- :mod:`.base`: the protocol every teacher follows (:class:`Teacher`) and its records (:class:`TeacherQuery`,
  :class:`Verdict`, :class:`TeacherStats`, :class:`TeacherUnavailable`).
- :mod:`.programmatic`: :class:`ProgrammaticTeacher`, deterministic, built on :mod:`ml.dsl.request_templates`.
- :mod:`.prompts`: the prompt and answer format an LLM teacher speaks (``TASK:`` / ``INPUT:`` lines, parsers).
- :mod:`.http_teacher`: :class:`HttpTeacher`, a chat model behind Ollama or an OpenAI-compatible server (httpx),
  and the model-id lookup (:func:`resolve_model_id`, ``.llmrc``).

:func:`make_teacher` picks a backend by name (:data:`BACKENDS`); the names below are the public API.
"""

from __future__ import annotations

from typing import Any

from ml.dsl.teachers.base import LANGS, TASKS, Teacher, TeacherQuery, TeacherStats, TeacherUnavailable, Verdict
from ml.dsl.teachers.http_teacher import DEFAULT_BASE_URLS, DEFAULT_MODEL, PROTOCOLS, HttpTeacher, resolve_model_id
from ml.dsl.teachers.programmatic import ProgrammaticTeacher, lookup_request, unique_queries
from ml.dsl.teachers.prompts import (
    DOMAIN_PROMPTS,
    build_messages,
    parse_requests,
    parse_task,
    parse_verdict,
    spec_from_answer,
)

BACKENDS = ("programmatic", *PROTOCOLS)


def make_teacher(backend: str, **kwargs: Any) -> Teacher:
    """``programmatic`` (no arguments) or ``ollama`` / ``openai`` (:class:`HttpTeacher` keyword arguments;
    ``base_url`` defaults to the protocol's local port, ``model`` to :func:`resolve_model_id`)."""
    backend = (backend or "").strip().lower()
    if backend == "programmatic":
        return ProgrammaticTeacher()
    if backend in PROTOCOLS:
        kwargs = dict(kwargs)
        kwargs["base_url"] = kwargs.get("base_url") or DEFAULT_BASE_URLS[backend]
        kwargs["model"] = resolve_model_id(kwargs.get("model") or None)
        return HttpTeacher(backend, **kwargs)
    raise ValueError(f"unknown teacher backend {backend!r}; expected one of {BACKENDS}")


__all__ = [
    "BACKENDS",
    "DEFAULT_BASE_URLS",
    "DEFAULT_MODEL",
    "DOMAIN_PROMPTS",
    "LANGS",
    "PROTOCOLS",
    "TASKS",
    "HttpTeacher",
    "ProgrammaticTeacher",
    "Teacher",
    "TeacherQuery",
    "TeacherStats",
    "TeacherUnavailable",
    "Verdict",
    "build_messages",
    "lookup_request",
    "make_teacher",
    "parse_requests",
    "parse_task",
    "parse_verdict",
    "resolve_model_id",
    "spec_from_answer",
    "unique_queries",
]
