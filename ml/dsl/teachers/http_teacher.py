"""The LLM teacher: a chat model behind Ollama's native ``/api/chat`` or any OpenAI-compatible
``/v1/chat/completions`` (vLLM, llama.cpp server, :mod:`ml.serving.chat_server`), over ``httpx``.

Every answer is parsed and validated (:mod:`ml.dsl.teachers.prompts`); bad answers are retried a bounded number
of times, counted in :class:`~ml.dsl.teachers.base.TeacherStats`, then dropped. A server that cannot be reached at
all raises :class:`~ml.dsl.teachers.base.TeacherUnavailable`. The model id comes from :func:`resolve_model_id`
(argument, env ``LLM_MODEL``, a ``.llmrc`` file, or the default).
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx

from ml.dsl.domains import FIELD_TYPES, DomainSpec, schema_errors, spec_to_dict
from ml.dsl.format import parse_completion
from ml.dsl.teachers.base import Teacher, TeacherQuery, TeacherUnavailable, interleave
from ml.dsl.teachers.prompts import (
    DOMAIN_PROMPTS,
    DOMAIN_SPEC_INSTRUCTION,
    JUDGE_INSTRUCTION,
    LABEL_INSTRUCTION,
    LANGUAGE_NAMES,
    MAX_FIELDS,
    MIN_FIELDS,
    QUERIES_INSTRUCTION,
    build_messages,
    parse_requests,
    parse_verdict,
    prompt_schema,
    spec_from_answer,
)

DEFAULT_MODEL = "gpt-oss:120b"
DEFAULT_BASE_URLS = {"ollama": "http://127.0.0.1:11434", "openai": "http://127.0.0.1:8000"}
PROTOCOLS = ("ollama", "openai")


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



class _Unreachable(Exception):
    """A connection could not be made (refused, DNS failure, connect timeout)."""


class _Rejected(Exception):
    """The server refused this request (HTTP 4xx other than 408/429): sending it again would not help."""


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")



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
        # A local server is reached directly, whatever proxy the environment names (trust_env reads *_PROXY).
        # timeout_s bounds the connect and every read/write, as a socket timeout did.
        self._client = httpx.Client(timeout=self.timeout_s, trust_env=not _is_loopback(self.url),
                                    follow_redirects=True)

    def close(self) -> None:
        """Close the pooled connections (the teacher is unusable afterwards)."""
        self._client.close()

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
        try:
            response = self._client.post(self.url, content=json.dumps(self._body(messages)).encode("utf-8"),
                                         headers=headers)
        except httpx.ConnectTimeout as exc:  # no connection within timeout_s
            self._count(timeouts=1)
            raise _Unreachable(str(exc) or "connect timeout") from exc
        except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:  # refused, DNS failure, not an http URL
            self._count(http_errors=1)
            raise _Unreachable(str(exc)) from exc
        except httpx.TimeoutException:  # waiting for or reading the answer
            self._count(timeouts=1)
            return None
        except httpx.TransportError:  # dropped connection, bad status line
            self._count(http_errors=1)
            return None
        if response.status_code >= 400:
            self._count(http_errors=1)
            code = response.status_code
            detail = response.content.decode("utf-8", "replace")[:300] or response.reason_phrase
            if code in (401, 403, 404):
                raise self._unavailable(f"HTTP {code} {detail}")
            if code == 408:
                self._count(timeouts=1)
            elif code < 500 and code != 429:
                raise _Rejected(f"HTTP {code} {detail}")
            return None
        raw = response.content
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
                       "schema": prompt_schema(schema)}
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
                   "schema": prompt_schema(schema), "request": query.text}
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
                   "schema": prompt_schema(schema), "request": query.text, "candidate": candidate,
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
