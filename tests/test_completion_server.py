"""The completion server (ml/serving/completions.py): a real uvicorn server on 127.0.0.1 over a tiny random model,
exercised with httpx the way an editor (Continue) and OpenAI clients call it. Every route test runs twice: on the
Hugging Face backend and on the llama.cpp backend serving the same model exported to GGUF f16."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from ml.autocomplete.fim import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, FIM_TOKENS, fim_prompt
from ml.autocomplete.recipe import fim_tokenizer
from ml.models.gguf_export import export_gguf
from ml.serving.completions import (
    DEFAULT_MODEL_ID,
    Event,
    HFCompletionBackend,
    SamplingParams,
    build_completion_prompt,
    chat_prompt,
    create_app,
    ensure_fim_tokens,
    serve_in_background,
)
from ml.serving.completions import main as completions_main
from ml.serving.llama_cpp_backend import LlamaCppCompletionBackend
from ml.training import base_model
from ml.training.ast_tokenizer import build_ast_tokenizer
from ml.training.base_model import save_base_model

ROOT = Path(__file__).resolve().parents[1]
CONTINUE_CONFIG = ROOT / "editors" / "continue" / "config.yaml"
FIXTURES = Path(__file__).parent / "fixtures" / "python"
CAP = 96  # the test backend's max_tokens cap: long enough to stream many deltas, short enough to be quick
PROMPTS = [f"def f{i}(x):\n    return x + {i}" for i in range(6)] + ["import os\n", "class A:\n    pass\n"]


def tiny_model(tokenizer, seed: int = 0, **overrides):
    """The project's ``tiny:qwen2`` with a wider init: at the default (0.02) a random tied model repeats its last
    token forever, and texts that are all alike would hide a request answered with another's text."""
    return base_model.tiny_model("qwen2", tokenizer, seed, **{"initializer_range": 0.2, **overrides})


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [p.read_text(errors="ignore") for p in sorted(FIXTURES.rglob("*.py"))] * 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, corpus) -> Path:
    tok = fim_tokenizer("tiny:qwen2", corpus, vocab_size=400)  # the autocomplete pipeline's own FIM tokenizer
    return save_base_model(tiny_model(tok), tok, tmp_path_factory.mktemp("completion") / "model")


@pytest.fixture(scope="module")
def hf_backend(model_dir) -> Iterator[HFCompletionBackend]:
    b = HFCompletionBackend(model_dir, max_batch=4, max_tokens_cap=CAP)
    yield b
    b.close()


@pytest.fixture(scope="module")
def gguf_file(model_dir, tmp_path_factory) -> Path:
    return export_gguf(model_dir, None, tmp_path_factory.mktemp("gguf") / "export", quantizations=()).path("f16")


@pytest.fixture(scope="module", params=["hf", "llama_cpp"])
def backend(request, hf_backend) -> Iterator:
    if request.param == "hf":
        yield hf_backend
        return
    b = LlamaCppCompletionBackend(request.getfixturevalue("gguf_file"), max_tokens_cap=CAP)
    yield b
    b.close()


@pytest.fixture(scope="module")
def url(backend) -> Iterator[str]:
    with serve_in_background(create_app(backend)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def post(client: httpx.Client, path: str, body: dict) -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def sse(client: httpx.Client, path: str, body: dict) -> list[dict]:
    """The JSON chunks of a streamed answer; the stream must end with ``data: [DONE]``."""
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        data = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert data[-1] == "[DONE]" and "[DONE]" not in data[:-1]
    return [json.loads(d) for d in data[:-1]]


def completion_text(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["text"] for c in chunks if c["choices"])


@pytest.fixture(scope="module")
def greedy(client) -> dict[str, dict]:
    """The non-streamed greedy answer to each prompt, asked one at a time."""
    return {p: post(client, "/v1/completions", {"prompt": p, "max_tokens": 48}) for p in PROMPTS}


# ---------------------------------------------------------------------------------------------------- routes


def test_health_and_models(client):
    assert client.get("/health").json() == {"status": "ok", "model": DEFAULT_MODEL_ID}
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [DEFAULT_MODEL_ID]
    assert models["data"][0]["object"] == "model"


def test_completion_has_openai_shape_and_the_backend_text(client, backend, greedy):
    for prompt, body in greedy.items():
        assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
        assert body["model"] == DEFAULT_MODEL_ID and isinstance(body["created"], int)
        (choice,) = body["choices"]
        assert set(choice) == {"text", "index", "logprobs", "finish_reason"} and choice["index"] == 0
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["prompt_tokens"] == len(backend.tokenize(prompt))
        assert choice["finish_reason"] in ("stop", "length")
        if choice["finish_reason"] == "length":
            assert usage["completion_tokens"] == 48
        else:
            assert usage["completion_tokens"] < 48
        assert backend.complete(prompt, SamplingParams(max_tokens=48))[0] == choice["text"]
    texts = [b["choices"][0]["text"] for b in greedy.values()]
    assert len(set(texts)) == len(texts), "distinct prompts should get distinct completions from this model"
    assert sum(b["choices"][0]["finish_reason"] == "length" for b in greedy.values()) >= 2


def test_streamed_chunks_concatenate_to_the_non_streamed_text(client, greedy):
    for prompt, body in greedy.items():
        chunks = sse(client, "/v1/completions", {"prompt": prompt, "max_tokens": 48,
                                                 "stream_options": {"include_usage": True}})
        *content, last, usage = chunks
        assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
        assert all(c["choices"][0]["finish_reason"] is None for c in content)
        assert last["choices"][0] == {"text": "", "index": 0, "logprobs": None,
                                      "finish_reason": body["choices"][0]["finish_reason"]}
        assert usage["choices"] == [] and usage["usage"] == body["usage"]
        assert completion_text(chunks) == body["choices"][0]["text"]
    longest = max(greedy, key=lambda p: len(greedy[p]["choices"][0]["text"]))
    assert len(sse(client, "/v1/completions", {"prompt": longest, "max_tokens": 48})) > 5, "one delta per token"


def test_stop_strings_cut_the_text(client, greedy):
    prompt = next(p for p in PROMPTS if greedy[p]["choices"][0]["finish_reason"] == "length")
    full = greedy[prompt]["choices"][0]["text"]
    start = next(i for i in range(3, len(full) - 3) if full[i:i + 3].isascii() and full[i:i + 3].isprintable())
    stop = full[start:start + 3]
    expected = full[:full.index(stop)]
    for value in (stop, ["never-in-the-text", stop]):
        body = post(client, "/v1/completions", {"prompt": prompt, "max_tokens": 48, "stop": value})
        assert body["choices"][0]["text"] == expected
        assert body["choices"][0]["finish_reason"] == "stop"
        streamed = sse(client, "/v1/completions", {"prompt": prompt, "max_tokens": 48, "stop": value})
        assert completion_text(streamed) == expected
        assert streamed[-1]["choices"][0]["finish_reason"] == "stop"


def test_max_tokens_is_capped(client, greedy):
    prompt = next(p for p in PROMPTS if greedy[p]["choices"][0]["finish_reason"] == "length")
    body = post(client, "/v1/completions", {"prompt": prompt, "max_tokens": 100_000})
    assert body["usage"]["completion_tokens"] <= CAP
    assert body["choices"][0]["text"].startswith(greedy[prompt]["choices"][0]["text"])
    short = post(client, "/v1/completions", {"prompt": prompt, "max_tokens": 3})
    assert short["usage"]["completion_tokens"] == 3 and short["choices"][0]["finish_reason"] == "length"


def test_suffix_builds_the_fim_prompt(client, backend):
    prefix, suffix = "def area(r):\n    return ", "\n\nprint(area(2))\n"
    with_suffix = post(client, "/v1/completions", {"prompt": prefix, "suffix": suffix, "max_tokens": 24})
    rendered = post(client, "/v1/completions", {"prompt": fim_prompt(prefix, suffix), "max_tokens": 24})
    plain = post(client, "/v1/completions", {"prompt": prefix, "max_tokens": 24})
    assert with_suffix["choices"] == rendered["choices"]
    fim_ids = backend.tokenize(fim_prompt(prefix, suffix))
    assert with_suffix["usage"]["prompt_tokens"] == len(fim_ids) != plain["usage"]["prompt_tokens"]
    # the three FIM markers are one token each
    markers = [backend.tokenize(t) for t in FIM_TOKENS]
    assert all(len(m) == 1 for m in markers) and {m[0] for m in markers} <= set(fim_ids)
    # a prompt that is already a FIM prompt (an editor's template) is served as is, suffix or not
    again = post(client, "/v1/completions", {"prompt": fim_prompt(prefix, suffix), "suffix": "x = 1",
                                              "max_tokens": 24})
    assert again["choices"] == rendered["choices"]


def test_build_completion_prompt():
    assert build_completion_prompt("a = ", None) == "a = "
    assert build_completion_prompt("a = ", "") == f"{FIM_PREFIX}a = {FIM_SUFFIX}{FIM_MIDDLE}"
    spm = fim_prompt("a = ", "\n", order="spm")
    assert build_completion_prompt(spm, "ignored") == spm


def test_temperature_samples_and_a_seed_repeats(client):
    body = {"prompt": PROMPTS[0], "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 7}
    first, second = post(client, "/v1/completions", body), post(client, "/v1/completions", body)
    assert first["choices"] == second["choices"]
    # a seed holds for its own request only: unseeded samples after it do not all repeat it
    unseeded = [post(client, "/v1/completions", {**body, "seed": None})["choices"] for _ in range(3)]
    assert any(c != first["choices"] for c in unseeded)
    echoed = post(client, "/v1/completions", {"prompt": PROMPTS[1], "max_tokens": 8, "echo": True})
    assert echoed["choices"][0]["text"].startswith(PROMPTS[1])


def test_chat_completions(client):
    messages = [{"role": "system", "content": "Write Python."},
                {"role": "user", "content": [{"type": "text", "text": "# add two numbers\ndef add(a, b):"}]}]
    body = post(client, "/v1/chat/completions", {"messages": messages, "max_tokens": 32})
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    chunks = sse(client, "/v1/chat/completions", {"messages": messages, "max_tokens": 32})
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == choice["message"]["content"]


def test_chat_prompt_uses_the_template_when_there_is_one(backend):
    messages = [{"role": "user", "content": "# sum a list"}, {"role": "assistant", "content": "sum(xs)"}]
    assert backend.chat_prompt(messages) == "# sum a list\n\nsum(xs)\n"  # this tokenizer has no template
    templated = build_ast_tokenizer("tiny:qwen2", ["def f(x): return x\n"] * 4, [], vocab_size=300)
    templated.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert chat_prompt(templated, messages[:1]) == "<user># sum a list\n<assistant>"


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {}, "prompt"),
    ("/v1/completions", {"prompt": 123}, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -3}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "10"}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": 5}, "temperature"),
    ("/v1/completions", {"prompt": "x", "stop": 3}, "stop"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream"),
    ("/v1/completions", {"prompt": "x", "suffix": 1}, "suffix"),
    ("/v1/completions", {"prompt": "x", "n": 2}, "n"),
    ("/v1/completions", [{"prompt": "x"}], None),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, "messages.0.role"),
    ("/v1/chat/completions", {"prompt": "hi"}, "messages"),
])
def test_bad_requests_get_openai_errors(client, path, body, param):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_a_body_that_is_not_json_is_a_400(client):
    r = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_unknown_routes_and_methods(client):
    for method, path, status in (("GET", "/v1/nope", 404), ("POST", "/v1/engines/x/completions", 404),
                                 ("GET", "/v1/completions", 405)):
        r = client.request(method, path)
        assert r.status_code == status
        assert r.json()["error"]["type"] in ("not_found_error", "invalid_request_error")
        assert r.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------------- robustness


def test_a_client_that_leaves_mid_stream_does_not_break_the_server(url, client, backend, greedy):
    prompt = next(p for p in PROMPTS if greedy[p]["choices"][0]["finish_reason"] == "length")
    before = backend.cancelled
    with httpx.Client(base_url=url, timeout=60) as leaving, \
            leaving.stream("POST", "/v1/completions", json={"prompt": prompt, "max_tokens": CAP, "stream": True}) as r:
        first = next(line for line in r.iter_lines() if line)
        assert first.startswith("data: {")
    # the connection is closed with the stream half read: the server stops that generation...
    deadline = time.monotonic() + 10
    while backend.cancelled == before:
        assert time.monotonic() < deadline, "the abandoned generation was not cancelled"
        time.sleep(0.01)
    # ...and answers the next request normally
    after = post(client, "/v1/completions", {"prompt": prompt, "max_tokens": 48})
    assert after["choices"] == greedy[prompt]["choices"]
    assert client.get("/health").status_code == 200


def test_a_cancelled_job_stops_generating(backend, greedy):
    prompt = next(p for p in PROMPTS if greedy[p]["choices"][0]["finish_reason"] == "length")
    seen, before = [], backend.cancelled

    def sink(event):
        seen.append(event)
        raise ConnectionError("the listener left")  # a sink that fails cancels its job

    job = backend.submit(prompt, SamplingParams(max_tokens=CAP), sink)
    # the next request queues behind it: when it is answered, the cancelled one has run (an earlier test's abandoned
    # stream may bump the counter first, so the counter alone does not say that)
    assert backend.complete(prompt, SamplingParams(max_tokens=48))[0] == greedy[prompt]["choices"][0]["text"]
    deadline = time.monotonic() + 30  # (the answer may have shared a batch with it: its end is counted after)
    while backend.cancelled == before:
        assert time.monotonic() < deadline, "the cancelled job was not counted"
        time.sleep(0.01)
    assert job.cancelled.is_set()
    assert len(seen) == 1 and not seen[0].last and not job.done.is_set()


def test_concurrent_requests_get_their_own_greedy_answers(url, greedy):
    def ask(i_prompt):
        i, prompt = i_prompt
        with httpx.Client(base_url=url, timeout=60) as c:
            body = {"prompt": prompt, "max_tokens": 48}
            if i % 2:
                return completion_text(sse(c, "/v1/completions", body))
            return post(c, "/v1/completions", body)["choices"][0]["text"]

    work = list(enumerate(PROMPTS * 2))
    with ThreadPoolExecutor(len(work)) as pool:
        answers = list(pool.map(ask, work))
    assert answers == [greedy[p]["choices"][0]["text"] for _, p in work]


class FailingBackend:
    """The real backend's names, but every request fails on the worker side (as a generation error would)."""

    def __init__(self, inner) -> None:
        self.inner, self.model_name, self.max_tokens_cap = inner, inner.model_name, inner.max_tokens_cap

    def chat_prompt(self, messages):
        return self.inner.chat_prompt(messages)

    def submit(self, prompt, params, sink):
        def fail(event):
            sink(Event(error="generation failed: RuntimeError: injected"))

        return self.inner.submit(prompt, replace(params, max_tokens=1), fail)


def test_a_failed_generation_is_a_500_json_error(backend):
    with serve_in_background(create_app(FailingBackend(backend))) as base, \
            httpx.Client(base_url=base, timeout=60) as c:
        for body in ({"prompt": "x = "}, {"prompt": "x = ", "stream": True}):
            r = c.post("/v1/completions", json=body)
            assert r.status_code == 500
            assert r.json()["error"]["type"] == "server_error" and "injected" in r.json()["error"]["message"]
        assert c.get("/health").status_code == 200


def test_the_command_line_serves_a_model_folder(model_dir):
    with socket.socket() as s:  # a free port (released just before the server binds it)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ml.serving.completions", "--model-dir", str(model_dir),
                             "--host", "127.0.0.1", "--port", str(port), "--model-name", "m-test"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            assert c.get("/v1/models").json()["data"][0]["id"] == "m-test"
            body = post(c, "/v1/completions", {"prompt": "def f(", "max_tokens": 4})
            assert body["model"] == "m-test" and body["usage"]["completion_tokens"] <= 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_command_line_refuses_a_folder_without_a_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        completions_main(["--model-dir", str(tmp_path / "nope")])
    assert exit_.value.code == 2 and "config.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- Continue


def continue_autocomplete_model() -> dict:
    config = yaml.safe_load(CONTINUE_CONFIG.read_text())
    assert {"name", "version", "schema"} <= set(config) and config["schema"] == "v1"
    (model,) = [m for m in config["models"] if "autocomplete" in m.get("roles", [])]
    return model


def test_continue_config_points_at_the_server():
    model = continue_autocomplete_model()
    assert model["provider"] == "openai"
    assert model["apiBase"] == "http://127.0.0.1:8000/v1/"
    assert model["model"] == DEFAULT_MODEL_ID
    template = model["promptTemplates"]["autocomplete"]
    assert template == "<|fim_prefix|>{{{prefix}}}<|fim_suffix|>{{{suffix}}}<|fim_middle|>"


def test_the_request_continue_sends(url, client):
    model = continue_autocomplete_model()
    options = model["defaultCompletionOptions"]
    prefix, suffix = "def total(xs):\n    return ", "\n\nprint(total([1, 2]))\n"
    # Continue joins its (here: no) context snippets in front of the prefix with a newline, and renders the
    # Handlebars template; triple braces insert the text unescaped.
    prompt = (model["promptTemplates"]["autocomplete"]
              .replace("{{{prefix}}}", "\n" + prefix).replace("{{{suffix}}}", suffix))
    assert prompt == fim_prompt("\n" + prefix, suffix)
    # Continue's OpenAI provider: new URL("completions", apiBase), the model's completion options, its default
    # multi-line stops, and "stream": true. The test server listens on another port than the config's 8000.
    endpoint = urljoin(model["apiBase"], "completions")
    endpoint = url + urlsplit(endpoint).path
    body = {"model": model["model"], "prompt": prompt, "max_tokens": options["maxTokens"],
            "temperature": options["temperature"], "stop": ["\n\n", "\r\n\r\n", "/src/", "#- coding: utf-8", "```"],
            "stream": True}
    with httpx.Client(timeout=60) as editor, editor.stream(
            "POST", endpoint, json=body, headers={"Authorization": f"Bearer {model['apiKey']}"}) as r:
        assert r.status_code == 200
        streamed = ""
        for line in r.iter_lines():  # what Continue's streamSse + _legacystreamComplete keep
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                choices = json.loads(line[5:])["choices"]
                if choices and choices[0].get("text"):
                    streamed += choices[0]["text"]
    answer = post(client, "/v1/completions", {**body, "stream": False})
    assert streamed == answer["choices"][0]["text"]
    assert answer["usage"]["completion_tokens"] > 0


# ---------------------------------------------------------------------------------------------------- loading


def test_fim_tokens_are_added_when_the_tokenizer_lacks_them(tmp_path, corpus):
    tok = build_ast_tokenizer("tiny:qwen2", corpus, [], vocab_size=300)
    assert FIM_PREFIX not in tok.get_vocab()
    folder = save_base_model(tiny_model(tok), tok, tmp_path / "plain")
    assert ensure_fim_tokens(tok) == 3 and ensure_fim_tokens(tok) == 0
    assert len(tok(FIM_MIDDLE, add_special_tokens=False)["input_ids"]) == 1
    b = HFCompletionBackend(folder, max_tokens_cap=8)
    try:
        assert b.model.get_input_embeddings().weight.shape[0] == len(b.tokenizer) == len(tok)
        text, finish, usage = b.complete("x = ", suffix="\n")
        assert finish in ("stop", "length")
        assert usage["prompt_tokens"] == len(tok(fim_prompt("x = ", "\n"), add_special_tokens=False)["input_ids"])
    finally:
        b.close()


def test_an_adapter_is_merged_and_a_wrong_one_is_refused(tmp_path, model_dir, hf_backend, corpus):
    backend = hf_backend
    from peft import LoraConfig, get_peft_model

    def lora(base, out: Path, save_tokenizer: bool) -> Path:
        torch.manual_seed(1)  # init_lora_weights=False: a random B, so the adapter changes the output
        peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
        peft_model.save_pretrained(out)
        if save_tokenizer:
            backend.tokenizer.save_pretrained(out)
        return out

    good = lora(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "good", True)
    b = HFCompletionBackend(model_dir, adapter_dir=good, max_tokens_cap=16)
    try:
        assert not hasattr(b.model, "peft_config"), "the adapter is merged into the model"
        params = SamplingParams(max_tokens=16)
        assert b.complete(PROMPTS[0], params)[0] != backend.complete(PROMPTS[0], params)[0]
    finally:
        b.close()

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="incomplete"):
        HFCompletionBackend(model_dir, adapter_dir=tmp_path / "empty")
    narrow = lora(tiny_model(backend.tokenizer, hidden_size=64, intermediate_size=128), tmp_path / "narrow", False)
    with pytest.raises(ValueError, match="does not match"):
        HFCompletionBackend(model_dir, adapter_dir=narrow)
    with pytest.raises(ValueError, match="config.json"):
        HFCompletionBackend(tmp_path / "nowhere")
