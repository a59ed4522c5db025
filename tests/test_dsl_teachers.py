"""DSL teachers over real HTTP: the project's chat server (OpenAI + Ollama routes) on 127.0.0.1 in front of the
programmatic teacher, an untrained tiny HF model and fault-injecting wrappers; a dead port; model-id resolution."""

from __future__ import annotations

import json
import random
import socket
import urllib.error
import urllib.request

import pytest

from ml.dsl.domains import DOMAIN_NAMES, build_domain, build_schema, sample_operators
from ml.dsl.request_templates import same_meaning
from ml.dsl.teachers import (
    DOMAIN_PROMPTS,
    HttpTeacher,
    ProgrammaticTeacher,
    TeacherQuery,
    TeacherUnavailable,
    make_teacher,
    parse_verdict,
    resolve_model_id,
)
from ml.serving import HFChatBackend, ProgrammaticChatBackend, serve
from tests.chat_faults import FaultInjectingBackend

PROTOCOLS = ("ollama", "openai")


@pytest.fixture(scope="module")
def programmatic_url():
    with serve(ProgrammaticChatBackend()) as (_, _, url):
        yield url


@pytest.fixture(scope="module")
def library():
    spec = build_domain("library", 0)
    return spec, build_schema(spec)


def _teacher(protocol: str, url: str, **kw) -> HttpTeacher:
    kw.setdefault("timeout_s", 10.0)
    kw.setdefault("backoff_s", 0.01)
    return HttpTeacher(protocol, url, "test-model", **kw)


def _wrong_ast(queries, right):
    return next(q.ast for q in queries if not same_meaning(q.ast, right))


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------- (a)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_http_teacher_over_programmatic_server_matches_in_process_teacher(protocol, programmatic_url):
    prog, http = ProgrammaticTeacher(), _teacher(protocol, programmatic_url)
    spec, examples = http.domain_spec("movies", seed=3, examples=3, min_operators=5, max_operators=6)
    ref_spec, ref_examples = prog.domain_spec("movies", seed=3, examples=3)
    assert spec.fields == ref_spec.fields and examples == ref_examples and len(examples) == 3
    assert (spec.noun_en, spec.noun_fr, spec.feminine_fr, spec.seed) == (
        ref_spec.noun_en, ref_spec.noun_fr, ref_spec.feminine_fr, 3)
    # The operator subset is seeded on the client, never the model's.
    assert spec.operators == sample_operators(random.Random("movies:3"), 5, 6)

    schema = build_schema(spec)
    got, ref = http.queries(spec, schema, 7, seed=1), prog.queries(spec, schema, 7, seed=1)
    assert [(q.lang, q.text) for q in got] == [(q.lang, q.text) for q in ref]
    assert [q.lang for q in got] == ["en", "fr", "en", "fr", "en", "fr", "en"]
    assert all(q.ast is None for q in got) and len({q.text for q in got}) == 7
    assert [http.label(spec, schema, q) for q in got] == [q.ast for q in ref]

    right, wrong = ref[0].ast, _wrong_ast(ref, ref[0].ast)
    assert http.judge(spec, schema, got[0], right, None).accept is True
    assert http.judge(spec, schema, got[0], wrong, None).accept is False
    stats = http.stats.as_dict()
    assert stats["calls"] == 1 + 2 + 7 + 2 and stats["retries"] == 0
    assert sum(v for k, v in stats.items() if k not in ("calls",)) == 0


def test_server_labels_requests_it_did_not_hand_out_and_refuses_unknown_ones(programmatic_url, library):
    spec, schema = library
    http = _teacher("openai", programmatic_url, max_retries=1)
    for q in ProgrammaticTeacher().queries(spec, schema, 4, seed=5):  # regenerated from domain + schema
        assert http.label(spec, schema, TeacherQuery(q.domain, q.lang, q.text)) == q.ast
    assert http.label(spec, schema, TeacherQuery("library", "en", "books that smell of rain")) is None
    assert http.stats.schema_invalid == 2 and http.stats.dropped == 1 and http.stats.retries == 1


def test_server_routes_and_errors(programmatic_url):
    def get(path):
        with urllib.request.urlopen(programmatic_url + path, timeout=5) as r:
            return r.status, json.loads(r.read())

    def post(path, data: bytes):
        req = urllib.request.Request(programmatic_url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    status, models = get("/v1/models")
    assert status == 200 and models["data"][0]["id"] == "astforge-programmatic"
    assert get("/api/tags")[1]["models"][0]["name"] == "astforge-programmatic"
    assert post("/v1/nope", b"{}")[0] == 404
    with pytest.raises(urllib.error.HTTPError) as info:
        get("/nope")
    assert info.value.code == 404
    assert post("/v1/chat/completions", b"{not json")[0] == 400
    status, body = post("/api/chat", b'{"messages": "hi"}')
    assert status == 400 and "messages" in json.loads(body)["error"]
    hello = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": False}).encode()
    status, body = post("/v1/chat/completions", hello)
    answer = json.loads(body)
    assert status == 200 and answer["object"] == "chat.completion" and answer["model"] == "m"
    assert answer["choices"][0]["finish_reason"] == "stop" and "error" in json.loads(
        answer["choices"][0]["message"]["content"])
    ollama = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    status, body = post("/api/chat", json.dumps(ollama).encode())
    assert status == 200 and json.loads(body.splitlines()[0])["done"] is True  # Ollama streams by default


# ---------------------------------------------------------------------------------------------------- (b)


@pytest.fixture(scope="module")
def tiny_model_url(library):
    from ml.dsl.format import schema_to_text
    from ml.dsl.request_templates import generate_queries
    from ml.training.ast_tokenizer import build_ast_tokenizer
    from ml.training.base_model import build_base_model

    spec, schema = library
    texts = [f"{q.text_en} {q.text_fr}" for q in generate_queries(spec, 40, 0)] + [schema_to_text(schema)]
    tok = build_ast_tokenizer("tiny:gemma3_text", texts, [], 1000)
    model = build_base_model("tiny:gemma3_text", tok)
    with serve(HFChatBackend(model, tok, max_new_tokens=12)) as (_, _, url):
        yield url


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_untrained_model_answers_are_counted_and_dropped(protocol, tiny_model_url, library):
    spec, schema = library
    http = _teacher(protocol, tiny_model_url, max_retries=1)
    q = ProgrammaticTeacher().queries(spec, schema, 1, seed=0)[0]
    assert http.label(spec, schema, TeacherQuery(q.domain, q.lang, q.text)) is None
    s = http.stats
    assert (s.calls, s.retries, s.dropped) == (2, 1, 1) and s.invalid_json + s.schema_invalid == 2
    assert http.judge(spec, schema, q, q.ast, None) is None
    assert (s.calls, s.retries, s.dropped) == (4, 2, 2) and s.timeouts == s.http_errors == 0


# ---------------------------------------------------------------------------------------------------- (c)


@pytest.mark.parametrize(
    ("faults", "max_retries", "expect_ast", "counts"),
    [
        (["timeout", "timeout"], 1, False, {"calls": 2, "timeouts": 2, "retries": 1, "dropped": 1}),
        (["timeout"], 2, True, {"calls": 2, "timeouts": 1, "retries": 1, "dropped": 0}),
        (["error500", "error500"], 2, True, {"calls": 3, "http_errors": 2, "retries": 2, "dropped": 0}),
        (["error503"] * 3, 2, False, {"calls": 3, "http_errors": 3, "retries": 2, "dropped": 1}),
        (["error400"], 2, False, {"calls": 1, "http_errors": 1, "retries": 0, "dropped": 1}),  # not retried
        (["garbage", "invalid"], 2, True,
         {"calls": 3, "invalid_json": 1, "schema_invalid": 1, "retries": 2, "dropped": 0}),
    ],
)
def test_injected_faults_are_retried_counted_then_dropped(faults, max_retries, expect_ast, counts, library):
    spec, schema = library
    q = ProgrammaticTeacher().queries(spec, schema, 1, seed=2)[0]
    backend = FaultInjectingBackend(ProgrammaticChatBackend(), faults, sleep_s=1.0)
    with serve(backend) as (_, _, url):
        http = _teacher("openai", url, timeout_s=0.3, max_retries=max_retries)
        got = http.label(spec, schema, TeacherQuery(q.domain, q.lang, q.text))
    assert (got == q.ast) if expect_ast else got is None
    stats = http.stats.as_dict()
    assert {k: stats[k] for k in counts} == counts


# ---------------------------------------------------------------------------------------------------- (d)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dead_server_raises_teacher_unavailable(protocol, library):
    spec, schema = library
    url = f"http://127.0.0.1:{_dead_port()}"
    http = _teacher(protocol, url, max_retries=1)
    with pytest.raises(TeacherUnavailable, match=url.replace(".", r"\.")) as info:
        http.label(spec, schema, TeacherQuery("library", "en", "books by Hugo"))
    assert protocol in str(info.value) and ("ollama serve" if protocol == "ollama" else "vllm serve") in str(info.value)
    assert http.stats.calls == 2
    for call in (lambda: http.queries(spec, schema, 2, seed=0),
                 lambda: http.domain_spec("library", seed=0, examples=1),
                 lambda: http.judge(spec, schema, TeacherQuery("library", "en", "x"), {}, None)):
        with pytest.raises(TeacherUnavailable):
            call()


def test_wrong_route_is_a_configuration_error(programmatic_url, library):
    spec, schema = library
    http = _teacher("openai", programmatic_url + "/not-here")
    with pytest.raises(TeacherUnavailable, match="404"):
        http.label(spec, schema, TeacherQuery("library", "en", "books by Hugo"))


# ---------------------------------------------------------------------------------------------------- (e)


def test_resolve_model_id_precedence(monkeypatch, tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LLM_MODEL", raising=False)
    assert resolve_model_id(cwd=work) == "gpt-oss:120b"
    (home / ".llmrc").write_text("# teacher\nLLM_MODEL=home-model\n")
    assert resolve_model_id(cwd=work) == "home-model"
    (work / ".llmrc").write_text("\nqwen3:32b\n")
    assert resolve_model_id(cwd=work) == "qwen3:32b"
    (work / ".llmrc").write_text('model = "llama3.3:70b"\n')
    assert resolve_model_id(cwd=work) == "llama3.3:70b"
    monkeypatch.setenv("LLM_MODEL", "env-model")
    assert resolve_model_id(cwd=work) == "env-model"
    assert resolve_model_id("explicit", cwd=work) == "explicit"
    assert make_teacher("openai", base_url="http://127.0.0.1:1").model == "env-model"
    assert make_teacher("ollama").url == "http://127.0.0.1:11434/api/chat"
    assert make_teacher("openai", base_url="http://h:8000/v1", model="m").url == "http://h:8000/v1/chat/completions"
    with pytest.raises(ValueError, match="unknown teacher backend"):
        make_teacher("gpt")


def test_teacher_resource(programmatic_url):
    import dagster as dg

    from resources import TeacherResource

    assert TeacherResource().teacher().name == "programmatic"
    t = TeacherResource(backend="openai", base_url=programmatic_url, model="m", max_retries=0).teacher()
    assert isinstance(t, HttpTeacher) and t.url == f"{programmatic_url}/v1/chat/completions" and t.max_retries == 0
    with pytest.raises(dg.Failure, match="unknown backend"):
        TeacherResource(backend="claude").teacher()


# ---------------------------------------------------------------------------------------------------- (f)


GOOD_SPEC = {"noun_en": "books", "noun_fr": "livres", "fields": [
    {"name": "author", "type": "string", "label_en": "author", "pool": ["Hugo", "Austen"]},
    {"name": "year", "type": "number", "pool": [1800, 2024]},
    {"name": "genre", "type": "enum", "enum_values": ["fantasy", "poetry"]},
], "examples": ["books by Hugo", "books by Hugo", "poetry books"]}


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("I cannot help with that.", "no JSON object"),
        ({"fields": []}, "non-empty list"),
        ({"fields": [{"name": "Publication Year", "type": "number"}]}, "snake_case"),
        ({"fields": [{"name": "year", "type": "integer"}]}, "unknown type"),
        ({"fields": [{"name": "genre", "type": "enum", "enum_values": []}]}, "enum_values"),
    ],
)
def test_malformed_domain_spec_raises_after_the_bound(answer, problem):
    text = answer if isinstance(answer, str) else json.dumps(answer)
    with serve(lambda messages: text) as (_, _, url):
        http = _teacher("ollama", url, max_retries=2)
        with pytest.raises(ValueError, match=problem):
            http.domain_spec("library", seed=0, examples=2)
    assert http.stats.calls == 3 and http.stats.retries == 2


def test_chatty_answers_are_tolerated():
    fenced = "Here you go:\n```json\n" + json.dumps(GOOD_SPEC) + "\n```\nAnything else?"
    with serve(lambda messages: fenced) as (_, _, url):
        spec, examples = _teacher("openai", url).domain_spec("library", seed=4, examples=5)
    assert spec.field_names == ("author", "year", "genre") and spec.field("genre").enum_values == ("fantasy", "poetry")
    assert spec.field("year").pool == (1800, 2024) and spec.field("year").label_fr == "year"
    assert examples == ["books by Hugo", "poetry books"] and "eq" in spec.operators
    assert parse_verdict('{"accept": "yes", "reason": "ok"}').accept is True
    assert parse_verdict('"no"').accept is False and parse_verdict("YES.").accept is True
    assert parse_verdict('{"reason": "hmm"}') is None
    assert set(DOMAIN_PROMPTS) >= set(DOMAIN_NAMES)


def test_prompts_carry_machine_readable_task_lines(library):
    spec, schema = library
    seen: list = []

    def record(messages):
        seen.append(messages)
        return '{"accept": "no", "reason": "wrong field"}'

    with serve(record) as (_, _, url):
        verdict = _teacher("ollama", url).judge(spec, schema, TeacherQuery("library", "fr", "des livres"), {}, None)
    assert verdict.accept is False and verdict.reason == "wrong field"
    system, user = seen[0]
    assert system["content"].startswith("TASK: judge\n")
    first, second = user["content"].splitlines()[:2]
    assert first == "TASK: judge" and json.loads(second.removeprefix("INPUT: "))["request"] == "des livres"
    prog = ProgrammaticTeacher()
    assert prog.judge(spec, schema, TeacherQuery("library", "en", "x"), {}, None) is None  # no reference
    assert prog.stats.dropped == 1
