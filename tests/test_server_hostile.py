"""Hostile requests to the completion server (a real uvicorn on 127.0.0.1, a tiny model): each gets a clear 4xx or
a bounded answer, and afterwards the server is healthy, still answers correctly, and its memory stayed bounded."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ml.autocomplete.fim import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from ml.autocomplete.recipe import fim_tokenizer
from ml.serving.completion_backend import QueueFull
from ml.serving.completion_jobs import MAX_PROMPT_CHARS, build_completion_prompt, clip_prompt
from ml.serving.completions import (
    MAX_BODY_BYTES,
    MAX_STOP_STRINGS,
    HFCompletionBackend,
    SamplingParams,
    create_app,
    serve_in_background,
)
from ml.training import base_model
from ml.training.base_model import save_base_model

FIXTURES = Path(__file__).parent / "fixtures" / "python"
CAP = 16


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> Iterator[HFCompletionBackend]:
    corpus = [p.read_text(errors="ignore") for p in sorted(FIXTURES.rglob("*.py"))] * 3
    tok = fim_tokenizer("tiny:qwen2", corpus, vocab_size=400)
    model = base_model.tiny_model("qwen2", tok, 0, initializer_range=0.2)
    folder = save_base_model(model, tok, tmp_path_factory.mktemp("hostile") / "model")
    b = HFCompletionBackend(folder, max_batch=4, max_tokens_cap=CAP)
    yield b
    b.close()


@pytest.fixture(scope="module")
def url(backend) -> Iterator[str]:
    with serve_in_background(create_app(backend)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=120) as c:
        yield c


def _healthy(client: httpx.Client, reference: str) -> None:
    assert client.get("/health").json()["status"] == "ok"
    again = client.post("/v1/completions", json={"prompt": "def f(x):\n    return", "max_tokens": 8})
    assert again.status_code == 200 and again.json()["choices"][0]["text"] == reference


@pytest.fixture(scope="module")
def reference(client) -> str:
    r = client.post("/v1/completions", json={"prompt": "def f(x):\n    return", "max_tokens": 8})
    assert r.status_code == 200
    return r.json()["choices"][0]["text"]


HOSTILE = [
    # (name, body or raw bytes, expected status, expected error code or None for a 200)
    ("invalid JSON", b'{"prompt": "x", ', 400, "invalid_json"),
    ("max_tokens negative", {"prompt": "x", "max_tokens": -5}, 400, "invalid_value"),
    ("unknown model", {"prompt": "x", "model": "gpt-4"}, 404, "model_not_found"),
    ("non-numeric temperature", {"prompt": "x", "temperature": "hot"}, 400, "invalid_value"),
    ("n = 1000", {"prompt": "x", "n": 1000}, 400, "invalid_value"),
    ("100 stop strings", {"prompt": "x", "stop": [f"s{i}" for i in range(100)]}, 400, "invalid_value"),
    ("lone surrogate", b'{"prompt": "def f(\\ud800):"}', 400, "invalid_value"),
    ("lone surrogate in a chat", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', 400, "invalid_value"),
    ("body over the limit", b'{"prompt": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}', 413, "request_too_large"),
    ("max_tokens 10^9", {"prompt": "x", "max_tokens": 10**9}, 200, None),
    ("NUL bytes", {"prompt": "def f(\u0000):\n\u0000", "stop": ["\u0000"]}, 200, None),
    ("2 MB prompt", {"prompt": "x = 1\n" * (2 * 1024 * 1024 // 6), "max_tokens": 4}, 200, None),
    ("2 MB FIM prompt", {"prompt": "a = 1\n" * 350_000, "suffix": "b = 2\n" * 350_000, "max_tokens": 4}, 200, None),
]


@pytest.mark.parametrize(("name", "body", "status", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_request_gets_a_clear_answer(client, reference, name, body, status, code):
    path = "/v1/chat/completions" if b"messages" in (body if isinstance(body, bytes) else b"") else "/v1/completions"
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text[:300]
    if code is None:
        choice = r.json()["choices"][0]
        assert r.json()["usage"]["completion_tokens"] <= CAP and choice["finish_reason"] in {"stop", "length"}
    else:
        error = r.json()["error"]
        assert error["code"] == code and error["message"]
    _healthy(client, reference)


def test_an_abandoned_stream_leaves_the_server_healthy(url, client, reference, backend):
    with httpx.Client(base_url=url, timeout=60) as c, c.stream(
            "POST", "/v1/completions", json={"prompt": "def g(", "max_tokens": CAP, "stream": True}) as r:
        assert r.status_code == 200
        next(r.iter_bytes())  # the first bytes, then the client leaves
    _healthy(client, reference)


def test_a_client_that_sends_half_a_body_and_hangs_up(url, client, reference):
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{\"prompt\": \"abc")
    _healthy(client, reference)


def test_sixteen_concurrent_clients_with_bounded_memory(url, client, reference):
    for _ in range(2):  # warm up allocations (tokenizer caches, the first batches)
        client.post("/v1/completions", json={"prompt": "x" * 5000, "max_tokens": CAP})
    before = _rss_kb()

    def one(i: int) -> int:
        with httpx.Client(base_url=url, timeout=120) as c:
            body = {"prompt": f"def f{i}(x):\n    return " + "y" * 20_000, "max_tokens": CAP, "stream": i % 2 == 0}
            r = c.post("/v1/completions", json=body)
            return r.status_code

    for _ in range(3):
        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(one, range(16))) == {200}
    grown_mb = (_rss_kb() - before) / 1024
    assert grown_mb < 300, f"RSS grew by {grown_mb:.0f} MB over 48 requests"
    _healthy(client, reference)


def test_a_full_queue_is_a_429_and_the_server_recovers(backend, client, reference):
    gate, stuck = threading.Event(), threading.Event()
    blocked = backend.submit("x", SamplingParams(max_tokens=1), lambda event: (stuck.set(), gate.wait(30)))
    assert stuck.wait(30)  # the worker is inside the blocked job's callback: nothing leaves the queue now
    jobs = []
    try:
        with pytest.raises(QueueFull):
            for _ in range(backend.max_queued + 1):
                jobs.append(backend.submit("y", SamplingParams(max_tokens=1), lambda event: None))
        r = client.post("/v1/completions", json={"prompt": "z", "max_tokens": 1})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
    finally:
        for job in jobs:
            job.cancel()
        gate.set()
        blocked.cancel()
    _healthy(client, reference)


def test_prompt_clipping_keeps_the_end_and_the_fim_marker():
    long = "a" * (MAX_PROMPT_CHARS + 100) + "END"
    assert clip_prompt(long).endswith("END") and len(clip_prompt(long)) == MAX_PROMPT_CHARS
    rendered = FIM_PREFIX + long + FIM_SUFFIX + "s" + FIM_MIDDLE
    clipped = clip_prompt(rendered)
    assert clipped.startswith(FIM_PREFIX) and clipped.endswith(FIM_MIDDLE) and len(clipped) == MAX_PROMPT_CHARS
    built = build_completion_prompt(long, "START" + "b" * (MAX_PROMPT_CHARS + 100))
    assert built.startswith(FIM_PREFIX) and FIM_SUFFIX + "START" in built
    assert len(built) < 2 * MAX_PROMPT_CHARS + 100


def test_a_prompt_longer_than_the_context_keeps_its_fim_marker(backend):
    prompt = build_completion_prompt("x = 1\n" * 4000, "y = 2\n")
    ids = backend.tokenize(prompt)
    assert len(ids) > backend.context_length
    from ml.serving.completion_jobs import Job

    job = Job(prompt, SamplingParams(max_tokens=CAP), lambda event: None)
    kept = backend._prompt_ids(job)
    assert len(kept) == backend.context_length - CAP
    assert kept[0] == ids[0] and kept[0] in backend.marker_ids and kept[-1] == ids[-1]


def test_stop_strings_up_to_the_limit_are_served(client):
    body = {"prompt": "x", "max_tokens": 4, "stop": [f"never{i}" for i in range(MAX_STOP_STRINGS)]}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert json.loads(r.text)["choices"][0]["finish_reason"] in {"stop", "length"}
