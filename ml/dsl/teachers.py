"""Teachers for the DSL pipeline: domain specs, EN/FR requests, labels (request → schema-valid AST) and verdicts.

Backends:

- ``programmatic`` (:class:`ProgrammaticTeacher`): deterministic, built on :mod:`ml.dsl.domains` and
  :mod:`ml.dsl.programmatic_teacher`. Requests are rendered from their AST, so positives are correct by construction;
  the verdict is :func:`ml.dsl.semantics.equivalent` against the reference (the same records selected; the
  canonical form of :func:`same_meaning` when no spec is given).
- ``ollama`` / ``openai`` (:class:`HttpTeacher`): a chat model behind Ollama's native ``/api/chat`` or any
  OpenAI-compatible ``/v1/chat/completions`` (vLLM, llama.cpp server, :mod:`ml.serving.chat_server`). Every answer
  is parsed and validated; bad answers are retried a bounded number of times, counted in :class:`TeacherStats`,
  then dropped. A server that cannot be reached at all raises :class:`TeacherUnavailable`.

Every prompt starts with a machine-readable ``TASK: <task>`` line and, in the user message, an ``INPUT: {json}``
line holding the task's inputs, followed by a human-readable instruction. Real LLMs read the instruction; the
project's own server (:class:`ml.serving.chat_server.ProgrammaticChatBackend`) reads the two machine lines.

Only the standard library is used for HTTP (``urllib.request``).
"""

from __future__ import annotations

import copy
import http.client
import json
import math
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ml.dsl.domains import (
    DOMAIN_NAMES,
    FIELD_TYPES,
    OPERATOR_CATALOG,
    DomainSpec,
    FieldSpec,
    build_domain,
    sample_operators,
    schema_errors,
    spec_to_dict,
)
from ml.dsl.format import parse_completion
from ml.dsl.programmatic_teacher import Query, generate_queries, same_meaning

DEFAULT_MODEL = "gpt-oss:120b"
DEFAULT_BASE_URLS = {"ollama": "http://127.0.0.1:11434", "openai": "http://127.0.0.1:8000"}
PROTOCOLS = ("ollama", "openai")
BACKENDS = ("programmatic", *PROTOCOLS)
TASKS = ("domain_spec", "queries", "label", "judge")
LANGS = ("en", "fr")
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

# Example requests shown with a domain spec are drawn from a seed stream disjoint from the query seeds.
EXAMPLE_SEED_OFFSET = 1_000_003
# A programmatic label lookup for a request it did not hand out itself regenerates these query seeds.
LOOKUP_SEEDS = tuple(range(8))
LOOKUP_N = 256
FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
MIN_FIELDS, MAX_FIELDS = 4, 7


# ---------------------------------------------------------------------------------------------------- interface


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


# ---------------------------------------------------------------------------------------------------- programmatic


def unique_queries(spec: DomainSpec, k: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()
                   ) -> list[Query]:
    """The first ``k`` seeded queries of ``spec`` whose English and French texts are new (not seen before in the
    stream, not in ``exclude``). ``generate_queries`` is prefix-stable, so this is deterministic. May return fewer
    than ``k`` when the domain cannot produce that many distinct requests."""
    if k <= 0:
        return []
    m = max(2 * k, 8)
    while True:
        seen = set(exclude)
        out: list[Query] = []
        pool = generate_queries(spec, m, seed)
        for q in pool:
            if q.text_en in seen or q.text_fr in seen:
                continue
            seen.update((q.text_en, q.text_fr))
            out.append(q)
            if len(out) == k:
                return out
        if m >= 20 * k + 64:
            return out
        m *= 2


def lookup_request(spec: DomainSpec, text: str, seeds=LOOKUP_SEEDS, n: int = LOOKUP_N) -> dict | None:
    """The AST of a request the programmatic teacher renders for ``spec`` (query seeds ``seeds``, first ``n``
    queries each), or None."""
    for s in seeds:
        for q in generate_queries(spec, n, s):
            if text in (q.text_en, q.text_fr):
                return copy.deepcopy(q.ast)
    return None


def interleave(en: list[str], fr: list[str], n: int) -> list[tuple[str, str]]:
    """``[(en, e0), (fr, f0), (en, e1), ...]`` cut to ``n``: the order every teacher returns requests in."""
    out: list[tuple[str, str]] = []
    for i in range(max(len(en), len(fr))):
        if i < len(en):
            out.append(("en", en[i]))
        if i < len(fr):
            out.append(("fr", fr[i]))
    return out[:n]


class ProgrammaticTeacher(Teacher):
    """The deterministic teacher: specs from :func:`build_domain`, requests rendered from sampled ASTs."""

    name = "programmatic"

    def domain_spec(self, domain, *, seed, examples, min_operators=4, max_operators=7):
        self._count(calls=1)
        try:
            spec = build_domain(domain, seed, min_operators=min_operators, max_operators=max_operators)
        except KeyError as exc:
            raise ValueError(f"programmatic teacher: {exc.args[0]}") from exc
        return spec, [q.text_en for q in unique_queries(spec, examples, EXAMPLE_SEED_OFFSET + seed)]

    def queries(self, spec, schema, n, *, seed):
        self._count(calls=1)
        pairs = unique_queries(spec, math.ceil(n / 2), seed)
        out = []
        for q in pairs:
            out.append(TeacherQuery(spec.name, "en", q.text_en, copy.deepcopy(q.ast)))
            out.append(TeacherQuery(spec.name, "fr", q.text_fr, copy.deepcopy(q.ast)))
        out = out[:n]
        if len(out) < n:
            self._count(dropped=n - len(out))
        return out

    def label(self, spec, schema, query):
        self._count(calls=1)
        ast = copy.deepcopy(query.ast) if query.ast is not None else lookup_request(spec, query.text)
        if ast is None:
            self._count(dropped=1)
            return None
        if schema_errors(ast, schema):
            self._count(schema_invalid=1, dropped=1)
            return None
        return ast

    def judge(self, spec, schema, query, candidate, reference):
        self._count(calls=1)
        ref = reference if reference is not None else query.ast
        if ref is None:
            ref = lookup_request(spec, query.text)
        if ref is None:
            self._count(dropped=1)
            return None
        # The verdict is on meaning only: schema validity is scored on its own (schema_valid), and a judge that
        # also rejected schema-invalid answers would make teacher_accept_rate equal semantic_pass_rate.
        if not isinstance(candidate, dict):
            return Verdict(False, "candidate is not a JSON object")
        if spec is None:  # a caller without the domain's spec (the chat server): canonical form only
            same_form = same_meaning(candidate, ref)
            return Verdict(same_form, "same canonical form" if same_form else "canonical form differs")
        from ml.dsl.semantics import equivalent

        same = equivalent(candidate, ref, spec)
        return Verdict(same.equivalent, same.reason)


# ---------------------------------------------------------------------------------------------------- prompts

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


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _prompt_schema(schema: dict) -> dict:
    return {k: v for k, v in schema.items() if k not in ("$schema", "$id")}


def build_messages(task: str, payload: dict[str, Any], instruction: str) -> list[dict[str, str]]:
    """The chat messages of one teacher task: the TASK line opens both messages, INPUT is one JSON line."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return [
        {"role": "system", "content": SYSTEM_TEMPLATE.format(task=task)},
        {"role": "user",
         "content": USER_TEMPLATE.format(task=task, payload=_compact(payload), instruction=instruction)},
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


# ---------------------------------------------------------------------------------------------------- model id


def _read_llmrc(path: Path) -> str | None:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    plain = None
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" in line:
            key, _, value = line.partition("=")
            key = key.strip().removeprefix("export ").strip()
            if key.lower() in ("model", "llm_model"):
                value = value.strip().strip("'\"")
                if value:
                    return value
            continue
        if plain is None:
            plain = line.strip("'\"")
    return plain or None


def resolve_model_id(explicit: str | None = None, cwd: Path | None = None) -> str:
    """The teacher model: ``explicit`` if given, else env ``LLM_MODEL``, else a ``.llmrc`` in ``cwd`` then in the
    home folder (a plain model id line, or ``model=<id>`` / ``LLM_MODEL=<id>``), else ``gpt-oss:120b``."""
    if explicit and explicit.strip():
        return explicit.strip()
    env = os.environ.get("LLM_MODEL", "").strip()
    if env:
        return env
    for folder in (cwd or Path.cwd(), Path.home()):
        found = _read_llmrc(Path(folder) / ".llmrc")
        if found:
            return found
    return DEFAULT_MODEL


# ---------------------------------------------------------------------------------------------------- HTTP teacher


class _Unreachable(Exception):
    """A connection could not be made (refused, DNS failure, connect timeout)."""


class _Rejected(Exception):
    """The server refused this request (HTTP 4xx other than 408/429): sending it again would not help."""


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


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
                    return Verdict(accept, reason if isinstance(reason, str) else _compact(reason))
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


class HttpTeacher(Teacher):
    """A chat model behind Ollama (``protocol="ollama"``: ``POST {base_url}/api/chat``, ``"format": "json"``) or an
    OpenAI-compatible server (``protocol="openai"``: ``POST {base_url}/v1/chat/completions``).

    Each task makes up to ``1 + max_retries`` calls; invalid JSON, schema-invalid answers, timeouts, HTTP 5xx / 429
    and failed connections are counted and retried (with a short growing pause for the transport failures). When
    every attempt of a task failed to connect, :class:`TeacherUnavailable` is raised; so are 401/403/404 answers
    (wrong key, URL or model); other 4xx answers end the task's attempts (counted, dropped). ``backoff_s`` is the
    pause unit between transport retries; ``json_mode`` asks for JSON output (Ollama ``"format": "json"``, OpenAI
    ``"response_format": {"type": "json_object"}``); turn it off for a server that rejects those."""

    def __init__(
        self,
        protocol: str,
        base_url: str,
        model: str,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        api_key: str | None = None,
        temperature: float = 0.0,
        backoff_s: float = 0.5,
        json_mode: bool = True,
    ) -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.protocol = protocol
        self.name = protocol
        self.base_url = (base_url or DEFAULT_BASE_URLS[protocol]).rstrip("/")
        self.model = model
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.api_key = api_key or None
        self.temperature = float(temperature)
        self.backoff_s = float(backoff_s)
        self.json_mode = bool(json_mode)
        if protocol == "ollama":
            self.url = f"{self.base_url}/api/chat"
        elif self.base_url.endswith("/v1"):
            self.url = f"{self.base_url}/chat/completions"
        else:
            self.url = f"{self.base_url}/v1/chat/completions"
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.url) else []
        self._opener = urllib.request.build_opener(*handlers)

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "model": self.model, "url": self.url}

    # ------------------------------------------------------------------ transport

    def _how_to_start(self) -> str:
        if self.protocol == "ollama":
            return (f"start it with `ollama serve` and fetch the model with `ollama pull {self.model}`, or point "
                    "the teacher resource's base_url at a running Ollama (or use backend='programmatic')")
        return ("start an OpenAI-compatible server there, e.g. `vllm serve <model> --port 8000`, "
                "`llama-server -m <model.gguf> --port 8000` or `python -m ml.serving.chat_server --backend "
                "programmatic --port 8000`, or set the teacher resource's base_url (or use backend='programmatic')")

    def _unavailable(self, why: str) -> TeacherUnavailable:
        return TeacherUnavailable(
            f"{self.protocol} teacher at {self.url} (model {self.model!r}) is unavailable: {why}. "
            f"{self._how_to_start()}."
        )

    def _body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        if self.protocol == "ollama":
            body = {"model": self.model, "messages": messages, "stream": False,
                    "options": {"temperature": self.temperature}}
            if self.json_mode:
                body["format"] = "json"
            return body
        body = {"model": self.model, "messages": messages, "temperature": self.temperature, "stream": False}
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def _content(self, data: Any) -> str | None:
        try:
            if self.protocol == "ollama":
                content = data["message"]["content"]
            else:
                content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return None
        return content if isinstance(content, str) else None

    def _call(self, messages: list[dict[str, str]]) -> str | None:
        """One HTTP call: the answer's text, or None after counting a transient failure. Raises ``_Unreachable``
        when no connection could be made and :class:`TeacherUnavailable` on a configuration error."""
        self._count(calls=1)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.url, data=json.dumps(self._body(messages)).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            self._count(http_errors=1)
            detail = exc.read().decode("utf-8", "replace")[:300] if exc.fp is not None else ""
            if exc.code in (401, 403, 404):
                raise self._unavailable(f"HTTP {exc.code} {detail or exc.reason}") from exc
            if exc.code == 408:
                self._count(timeouts=1)
            elif 400 <= exc.code < 500 and exc.code != 429:
                raise _Rejected(f"HTTP {exc.code} {detail or exc.reason}") from exc
            return None
        except urllib.error.URLError as exc:  # raised while connecting / sending
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                self._count(timeouts=1)
            else:
                self._count(http_errors=1)
            raise _Unreachable(str(reason)) from exc
        except TimeoutError:  # waiting for or reading the answer
            self._count(timeouts=1)
            return None
        except (http.client.HTTPException, ConnectionError, OSError):  # dropped connection, bad status line
            self._count(http_errors=1)
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._count(invalid_json=1)
            return None
        content = self._content(data)
        if content is None:
            self._count(invalid_json=1)
        return content

    def _run(self, task: str, messages: list[dict[str, str]], parse) -> Any:
        """Up to ``1 + max_retries`` attempts of ``parse(content)`` (which returns a value, or None after counting
        why the answer was unusable). None when all attempts failed."""
        unreachable: list[str] = []
        attempts = 1 + self.max_retries
        for attempt in range(attempts):
            if attempt:
                self._count(retries=1)
            try:
                content = self._call(messages)
            except _Rejected:
                break
            except _Unreachable as exc:
                unreachable.append(str(exc))
                if attempt + 1 < attempts:
                    time.sleep(self.backoff_s * (attempt + 1))
                continue
            if content is None:
                if attempt + 1 < attempts:
                    time.sleep(self.backoff_s * (attempt + 1) / 4)
                continue
            value = parse(content)
            if value is not None:
                return value
        if len(unreachable) == attempts:
            raise self._unavailable(f"{task}: no connection after {attempts} attempts ({unreachable[-1]})")
        return None

    # ------------------------------------------------------------------ tasks

    def domain_spec(self, domain, *, seed, examples, min_operators=4, max_operators=7):
        description = DOMAIN_PROMPTS.get(domain, domain.replace("_", " "))
        payload = {"domain": domain, "description": description, "seed": seed, "examples": examples,
                   "min_fields": MIN_FIELDS, "max_fields": MAX_FIELDS, "field_types": list(FIELD_TYPES)}
        instruction = DOMAIN_SPEC_INSTRUCTION.format(
            types="|".join(FIELD_TYPES), min_fields=MIN_FIELDS, max_fields=MAX_FIELDS, examples=examples
        )
        problems: list[str] = []

        def parse(content: str):
            obj, why = parse_completion(content)
            if obj is None:
                self._count(invalid_json=1)
                problems.append(why or "no JSON object")
                return None
            try:
                spec = spec_from_answer(domain, seed, obj, min_operators, max_operators)
            except ValueError as exc:
                self._count(schema_invalid=1)
                problems.append(str(exc))
                return None
            raw = obj.get("examples")
            texts = [x.strip() for x in raw if isinstance(x, str) and x.strip()] if isinstance(raw, list) else []
            return spec, list(dict.fromkeys(texts))[:examples]

        result = self._run("domain_spec", build_messages("domain_spec", payload, instruction), parse)
        if result is None:
            self._count(dropped=1)
            last = problems[-1] if problems else "no usable answer (timeouts or HTTP errors)"
            raise ValueError(
                f"{self.protocol} teacher ({self.model} at {self.url}) gave no valid domain spec for {domain!r} "
                f"after {1 + self.max_retries} attempts; last problem: {last}"
            )
        return result

    def _requests(self, spec: DomainSpec, schema: dict, lang: str, k: int, seed: int, taken: set[str]) -> list[str]:
        """Up to ``k`` new requests in ``lang``; each retry asks only for the missing ones, excluding ``taken``."""
        got: list[str] = []
        attempts = 1 + self.max_retries
        unreachable = 0
        for attempt in range(attempts):
            missing = k - len(got)
            if missing <= 0:
                break
            if attempt:
                self._count(retries=1)
            payload = {"domain": spec.name, "description": DOMAIN_PROMPTS.get(spec.name, spec.name), "seed": seed,
                       "n": missing, "lang": lang, "exclude": sorted(taken), "spec": spec_to_dict(spec),
                       "schema": _prompt_schema(schema)}
            instruction = QUERIES_INSTRUCTION.format(n=missing, language=LANGUAGE_NAMES.get(lang, lang))
            try:
                content = self._call(build_messages("queries", payload, instruction))
            except _Rejected:
                break
            except _Unreachable as exc:
                unreachable += 1
                if unreachable == attempts:
                    raise self._unavailable(f"queries: no connection after {attempts} attempts ({exc})") from exc
                time.sleep(self.backoff_s * (attempt + 1))
                continue
            if content is None:
                continue
            texts = parse_requests(content)
            if texts is None:
                self._count(invalid_json=1)
                continue
            for t in texts:
                if t not in taken and len(got) < k:
                    taken.add(t)
                    got.append(t)
        return got

    def queries(self, spec, schema, n, *, seed):
        if n <= 0:
            return []
        taken: set[str] = set()
        en = self._requests(spec, schema, "en", math.ceil(n / 2), seed, taken)
        fr = self._requests(spec, schema, "fr", n // 2, seed, taken)
        out = [TeacherQuery(spec.name, lang, text) for lang, text in interleave(en, fr, n)]
        if len(out) < n:
            self._count(dropped=n - len(out))
        return out

    def label(self, spec, schema, query):
        payload = {"domain": spec.name, "domain_seed": spec.seed, "lang": query.lang,
                   "schema": _prompt_schema(schema), "request": query.text}
        instruction = LABEL_INSTRUCTION.format(language=LANGUAGE_NAMES.get(query.lang, query.lang))

        def parse(content: str):
            ast, _ = parse_completion(content)
            if ast is None:
                self._count(invalid_json=1)
                return None
            if schema_errors(ast, schema):
                self._count(schema_invalid=1)
                return None
            return ast

        ast = self._run("label", build_messages("label", payload, instruction), parse)
        if ast is None:
            self._count(dropped=1)
        return ast

    def judge(self, spec, schema, query, candidate, reference):
        payload = {"domain": spec.name, "domain_seed": spec.seed, "lang": query.lang,
                   "schema": _prompt_schema(schema), "request": query.text, "candidate": candidate,
                   "reference": reference}

        def parse(content: str):
            verdict = parse_verdict(content)
            if verdict is None:
                self._count(invalid_json=1)
            return verdict

        verdict = self._run("judge", build_messages("judge", payload, JUDGE_INSTRUCTION), parse)
        if verdict is None:
            self._count(dropped=1)
        return verdict


# ---------------------------------------------------------------------------------------------------- factory


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
    "DEFAULT_MODEL",
    "DOMAIN_PROMPTS",
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
    "parse_task",
    "resolve_model_id",
    "unique_queries",
]
