"""The prompt and answer format every LLM teacher speaks.

Every prompt starts with a machine-readable ``TASK: <task>`` line and, in the user message, an ``INPUT: {json}``
line holding the task's inputs, followed by a human-readable instruction. Real LLMs read the instruction; the
project's own server (:class:`ml.serving.chat_server.ProgrammaticChatBackend`) reads the two machine lines
(:func:`parse_task`). Answers are parsed leniently (code fences, prose around the JSON, yes/no verdicts) and
validated: :func:`parse_verdict`, :func:`parse_requests`, :func:`spec_from_answer`.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from ml.dsl.domains import DOMAIN_NAMES, FIELD_TYPES, OPERATOR_CATALOG, DomainSpec, FieldSpec, sample_operators
from ml.dsl.format import parse_completion
from ml.dsl.teachers.base import TASKS, Verdict

LANGUAGE_NAMES = {"en": "English", "fr": "French"}

# What an LLM teacher is asked to model, per domain of the catalog. Unknown domains fall back to their name.
DOMAIN_PROMPTS: dict[str, str] = {
    "library": "a library catalog of books",
    "movies": "a film database of movies",
    "orders": "an online shop's customer orders",
    "weather": "weather reports from observation stations",
    "recipes": "a cookbook of recipes",
    "flights": "a flight search engine's flight offers",
}
assert set(DOMAIN_PROMPTS) >= set(DOMAIN_NAMES), "every catalog domain needs an LLM prompt"

FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
MIN_FIELDS, MAX_FIELDS = 4, 7


# System message: the TASK line, then the role. The user message: TASK line, INPUT line, then the instruction.
SYSTEM_TEMPLATE = (
    "TASK: {task}\n"
    "You are a meticulous annotator for a JSON query language over collections of records. The user message starts "
    "with a TASK line and an INPUT line that holds the task's inputs as JSON, followed by the instruction. Answer "
    "with exactly one JSON object and nothing else: no prose, no code fences."
)
USER_TEMPLATE = "TASK: {task}\nINPUT: {payload}\n\n{instruction}"

DOMAIN_SPEC_INSTRUCTION = (
    "Design the searchable fields of INPUT.description (domain name INPUT.domain). Reply with one JSON object: "
    '{{"noun_en": "<English plural noun for the records>", "noun_fr": "<French plural noun>", '
    '"feminine_fr": <true if that French noun is feminine>, "fields": [{{"name": "<snake_case identifier>", '
    '"type": "<one of {types}>", "label_en": "<short English label>", "label_fr": "<French label with its article>", '
    '"enum_values": ["<snake_case value>", ...] (enum fields only, at least 3), "pool": <sample values: 3 to 6 strings '
    "for a string field, [min, max] for a number field, [first_year, last_year] for a date field>}}, ...], "
    '"examples": ["<an English search request over these fields>", ...]}}. Give {min_fields} to {max_fields} fields '
    "(the first one the most natural to filter on) and exactly {examples} examples."
)
QUERIES_INSTRUCTION = (
    "Write {n} different search requests in {language}, as a user would type them, over INPUT.spec (the fields, "
    "their labels and values) that can each be answered by one query of the JSON Schema INPUT.schema: use only its "
    "fields, operators and enum values; vary the filters, and/or combinations, negations, sorting and limits. "
    "Do not repeat any request of INPUT.exclude. Reply with one JSON object: "
    '{{"requests": ["<request>", ...]}} holding exactly {n} strings.'
)
LABEL_INSTRUCTION = (
    "Translate INPUT.request (a {language} request about INPUT.domain) into the one JSON object that validates "
    "against the JSON Schema INPUT.schema and means exactly what the request asks. Dates are YYYY-MM-DD. "
    "Reply with that JSON object only."
)
JUDGE_INSTRUCTION = (
    "Does the query INPUT.candidate mean exactly what INPUT.request asks? INPUT.schema describes the fields and "
    "operators. Judge the meaning only: schema validity is checked separately, so accept a candidate that breaks the "
    "schema if it still asks for exactly the same records. "
    "INPUT.reference, when not null, is a correct query for the request; it may be written differently (the order "
    'of and/or arguments does not matter). Reply with one JSON object: {{"accept": true or false, '
    '"reason": "<one short sentence>"}}.'
)


def compact(value: Any) -> str:
    """One-line JSON (non-ASCII kept), as the INPUT line carries it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def prompt_schema(schema: dict) -> dict:
    """The schema as shown to a model: without the ``$schema`` / ``$id`` bookkeeping keys."""
    return {k: v for k, v in schema.items() if k not in ("$schema", "$id")}


def build_messages(task: str, payload: dict[str, Any], instruction: str) -> list[dict[str, str]]:
    """The chat messages of one teacher task: the TASK line opens both messages, INPUT is one JSON line."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return [
        {"role": "system", "content": SYSTEM_TEMPLATE.format(task=task)},
        {"role": "user",
         "content": USER_TEMPLATE.format(task=task, payload=compact(payload), instruction=instruction)},
    ]


def parse_task(messages: list[dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """``(task, input)`` from the machine-readable lines of a prompt built by :func:`build_messages`, or None."""
    for message in reversed(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # OpenAI content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            continue
        task = payload = None
        for line in content.splitlines():
            if task is None and line.startswith("TASK:"):
                task = line[5:].strip()
            elif payload is None and line.startswith("INPUT:"):
                try:
                    payload = json.loads(line[6:].strip())
                except json.JSONDecodeError:
                    return None
        if task and isinstance(payload, dict):
            return task, payload
    return None



def _verdict_value(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().strip("'\".!").lower()
        if word in ("yes", "y", "true", "accept", "accepted", "correct", "oui"):
            return True
        if word in ("no", "n", "false", "reject", "rejected", "incorrect", "non"):
            return False
    return None


def parse_verdict(text: str) -> Verdict | None:
    """A verdict from ``{"accept": true|false|"yes"|"no", "reason": ...}`` or a bare yes/no answer, else None."""
    obj, _ = parse_completion(text)
    if obj is not None:
        for key in ("accept", "accepted", "verdict", "answer", "correct", "valid"):
            if key in obj:
                accept = _verdict_value(obj[key])
                if accept is not None:
                    reason = obj.get("reason", obj.get("explanation", ""))
                    return Verdict(accept, reason if isinstance(reason, str) else compact(reason))
        return None
    accept = _verdict_value(text)
    return None if accept is None else Verdict(accept, "")


def parse_requests(text: str) -> list[str] | None:
    """The request strings of ``{"requests": [...]}`` (or another single list-valued key, or a bare JSON list)."""
    s = text.strip()
    obj, _ = parse_completion(s)
    items: Any = None
    if obj is not None:
        for key in ("requests", "queries", "examples"):
            if isinstance(obj.get(key), list):
                items = obj[key]
                break
        else:
            lists = [v for v in obj.values() if isinstance(v, list)]
            items = lists[0] if len(lists) == 1 else None
    else:
        start = s.find("[")
        if start >= 0:
            try:
                items, _ = json.JSONDecoder().raw_decode(s[start:])
            except json.JSONDecodeError:
                items = None
    if not isinstance(items, list):
        return None
    out = [x.strip() for x in items if isinstance(x, str) and x.strip()]
    return out if out else None


def _parse_pool(ftype: str, pool: Any) -> tuple[Any, ...]:
    if not isinstance(pool, list):
        return ()
    if ftype == "string":
        values = tuple(str(v) for v in pool if isinstance(v, str | int | float) and not isinstance(v, bool) and str(v))
        return values
    if ftype in ("number", "date") and len(pool) == 2:
        lo, hi = pool
        if ftype == "date":  # tolerate dates where years were asked for
            lo, hi = (int(v[:4]) if isinstance(v, str) and re.match(r"^\d{4}", v) else v for v in (lo, hi))
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi)) and lo < hi:
            integral = ftype == "date" or (float(lo).is_integer() and float(hi).is_integer())
            return (int(lo), int(hi)) if integral else (lo, hi)
    return ()


def spec_from_answer(
    domain: str, seed: int, answer: dict[str, Any], min_operators: int = 4, max_operators: int = 7
) -> DomainSpec:
    """Validate a model's domain-spec answer and build the spec; the operator subset is seeded, never the model's.
    Raises ``ValueError`` naming the first problem."""
    fields_in = answer.get("fields")
    if not isinstance(fields_in, list) or not fields_in:
        raise ValueError("'fields' must be a non-empty list")
    fields: list[FieldSpec] = []
    seen: set[str] = set()
    for i, f in enumerate(fields_in):
        if not isinstance(f, dict):
            raise ValueError(f"fields[{i}] is not an object")
        name, ftype = f.get("name"), f.get("type")
        if not isinstance(name, str) or not FIELD_NAME.match(name):
            raise ValueError(f"fields[{i}]: name {name!r} is not a snake_case identifier")
        if name in seen:
            raise ValueError(f"fields[{i}]: duplicate field name {name!r}")
        seen.add(name)
        if ftype not in FIELD_TYPES:
            raise ValueError(f"field {name!r}: unknown type {ftype!r}; expected one of {FIELD_TYPES}")
        enum_values: tuple[str, ...] = ()
        if ftype == "enum":
            raw = f.get("enum_values")
            if not isinstance(raw, list) or not raw:
                raise ValueError(f"enum field {name!r} needs a non-empty 'enum_values' list")
            if not all(isinstance(v, str) and v.strip() for v in raw):
                raise ValueError(f"enum field {name!r}: enum values must be non-empty strings")
            enum_values = tuple(dict.fromkeys(v.strip() for v in raw))
        label_en = f.get("label_en") if isinstance(f.get("label_en"), str) and f["label_en"].strip() else None
        label_fr = f.get("label_fr") if isinstance(f.get("label_fr"), str) and f["label_fr"].strip() else None
        phrases: dict[str, tuple[str, str]] = {}
        if isinstance(f.get("phrases"), dict):
            for op, pair in f["phrases"].items():
                if op in OPERATOR_CATALOG and isinstance(pair, list) and len(pair) == 2 \
                        and all(isinstance(p, str) and "{v}" in p for p in pair):
                    phrases[op] = (pair[0], pair[1])
        fields.append(FieldSpec(
            name, ftype, label_en or name.replace("_", " "), label_fr or name.replace("_", " "), enum_values,
            _parse_pool(ftype, f.get("pool", f.get("values"))), phrases,
        ))
    noun_en = answer.get("noun_en") if isinstance(answer.get("noun_en"), str) and answer["noun_en"].strip() else None
    noun_fr = answer.get("noun_fr") if isinstance(answer.get("noun_fr"), str) and answer["noun_fr"].strip() else None
    operators = sample_operators(random.Random(f"{domain}:{seed}"), min_operators, max_operators)
    return DomainSpec(domain, seed, noun_en or domain.replace("_", " "), noun_fr or noun_en or domain.replace("_", " "),
                      answer.get("feminine_fr") is True, tuple(fields), operators)

