"""The code-completion server an editor talks to: OpenAI-compatible routes over a Hugging Face causal LM.

Routes (FastAPI, served by uvicorn):

- ``POST /v1/completions``: OpenAI's legacy completions API. ``prompt``, optional ``suffix`` (fill-in-the-middle:
  the server builds ``<|fim_prefix|>{prompt}<|fim_suffix|>{suffix}<|fim_middle|>``; a prompt that already holds
  ``<|fim_prefix|>`` is served as is, which is what Continue sends with ``provider: openai`` and a FIM template),
  ``max_tokens`` (default 64, capped), ``temperature`` (0 = greedy), ``top_p``, ``seed``, ``stop`` (str or list:
  the text is cut before the first stop string), ``stream`` (server-sent events, then ``data: [DONE]``).
- ``POST /v1/chat/completions``: comment-to-code; the messages go through the tokenizer's chat template when it
  has one, else their contents are joined by blank lines. Also streams.
- ``GET /v1/models`` (the served model's id), ``GET /health``.

Hostile or careless requests get a 4xx and leave the server as it was: a body over 8 MiB is a 413, a model id
other than the served one a 404 ``model_not_found``, more than 32 stop strings, a lone surrogate or a bad type a
400, a full queue (64 waiting requests) a 429 with ``Retry-After``; ``max_tokens`` above the cap is served up to
the cap. A prompt longer than the context is truncated from the left, as editors expect (the code next to the
cursor matters most), keeping a leading ``<|fim_prefix|>``/BOS token; a suffix keeps its start.

Generation always ends at the tokenizer's end-of-sequence token, at every special token and at the FIM / Qwen
control tokens (``<|endoftext|>``, ``<|fim_pad|>``, ``<|file_sep|>``...): none of them is ever part of a text.
Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status.

One worker thread owns the model (generation is not thread-safe): requests queue up and are answered in order;
up to ``max_batch`` queued requests with the same sampling settings are decoded together as one left-padded
batch. A client that goes away cancels its request; the others are unaffected.

The model, its worker thread and the batching are in :mod:`ml.serving.completion_backend`; prompts, sampling settings
and events in :mod:`ml.serving.completion_jobs`. Their public names are importable from here too.

``python -m ml.serving.completions --model-dir DIR [--adapter-dir DIR] --port 8000`` serves a model folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from ml.autocomplete.fim import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from ml.serving.completion_backend import (
    DEFAULT_MODEL_ID,
    MAX_TOKENS_CAP,
    CompletionBackend,
    HFCompletionBackend,
    QueueFull,
    ensure_fim_tokens,
)
from ml.serving.completion_jobs import (
    DEFAULT_MAX_TOKENS,
    Event,
    Job,
    SamplingParams,
    build_completion_prompt,
    chat_prompt,
)

log = logging.getLogger(__name__)

DEFAULT_CHAT_MAX_TOKENS = 256  # /v1/chat/completions: a function from a comment
MAX_BODY_BYTES = 8 * 1024 * 1024  # a request body above this is refused (413) before it is parsed
MAX_STOP_STRINGS = 32  # OpenAI allows 4; editors send a handful (Continue: 5)

__all__ = [
    "serve_in_background",
    "DEFAULT_MODEL_ID",
    "FIM_MIDDLE",
    "FIM_PREFIX",
    "FIM_SUFFIX",
    "CompletionBackend",
    "Event",
    "HFCompletionBackend",
    "Job",
    "SamplingParams",
    "build_completion_prompt",
    "chat_prompt",
    "create_app",
    "ensure_fim_tokens",
    "main",
    "serve",
]


# ---------------------------------------------------------------------------------------------------- HTTP


PositiveInt = Annotated[StrictInt, Field(gt=0)]
Temperature = Annotated[float, Field(strict=True, ge=0, le=2)]
TopP = Annotated[float, Field(strict=True, gt=0, le=1)]


class _Sampling(BaseModel):
    # Fields OpenAI defines that change nothing here (frequency_penalty, logprobs, user...) are accepted and ignored.
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    max_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=MAX_STOP_STRINGS)] | None = None
    seed: StrictInt | None = None
    n: Annotated[StrictInt, Field(ge=1, le=1)] | None = None
    stream: StrictBool | None = False
    stream_options: dict[str, Any] | None = None

    def params(self, default_max_tokens: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=self.max_tokens or default_max_tokens,
            temperature=float(self.temperature if self.temperature is not None else 0.0),
            top_p=float(self.top_p if self.top_p is not None else 1.0),
            stop=tuple(stop), seed=self.seed)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Sampling):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=1)]
    suffix: StrictStr | None = None
    echo: StrictBool | None = False

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None


class ChatRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]


def _check_unicode(param: str, value: Any) -> None:
    """A lone surrogate (JSON allows "\\ud800") is no text a tokenizer can take: refuse it as a 400."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(f"{param}.{key}" if param else str(key), item)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_unicode(f"{param}.{i}", item)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _APIError(400, f"{param}: not valid Unicode (a lone surrogate at character {exc.start})",
                            code="invalid_value", param=param) from exc


class _BodyTooLarge(Exception):
    pass


class _LimitBody:
    """ASGI middleware: a body over ``limit`` bytes (by Content-Length, or as it arrives) is a 413."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send):
        body = json.dumps(_error_body(f"the request body is over {self.limit} bytes", "invalid_request_error",
                                      "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param


def _error_body(message: str, kind: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
           param: str | None = None) -> JSONResponse:
    return JSONResponse(_error_body(message, kind, code, param), status_code=status)


_VALIDATION_CODES = {"missing": "missing_required_parameter", "json_invalid": "invalid_json"}
_TYPE_LABELS = {"str", "int", "float", "bool", "list", "dict"}


def _sse(payload: Any) -> str:
    # ASCII escapes: a raw U+2028 or U+0085 in a completion would end the line for clients that split like
    # str.splitlines (httpx's iter_lines does).
    return f"data: {json.dumps(payload, ensure_ascii=True, separators=(',', ':'))}\n\n"


async def _events(backend: CompletionBackend, prompt: str, params: SamplingParams) -> AsyncIterator[Event]:
    """The request's events, as the worker thread produces them. Leaving early (a client that went away, a
    cancelled task) cancels the job."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()
    job = backend.submit(prompt, params, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event))
    try:
        while True:
            event = await queue.get()
            yield event
            if event.last:
                return
    finally:
        job.cancel()


class _Shape:
    """The OpenAI response and chunk shapes of one route (legacy completions or chat)."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def response(self, text: str, finish: str, usage: dict) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage}
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage}

    def chunk(self, text: str | None, finish: str | None = None, first: bool = False) -> dict:
        if self.chat:
            delta: dict[str, str] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                "usage": usage}


async def _answer(backend: CompletionBackend, prompt: str, params: SamplingParams,
                  shape: _Shape, stream: bool, include_usage: bool, echo: str = ""):
    events = _events(backend, prompt, params)
    if not stream:
        parts, last = [echo], Event()
        try:
            async for event in events:
                parts.append(event.text)
                last = event
        finally:
            await events.aclose()
        if last.error:
            return _error(500, last.error, "server_error", "generation_failed")
        return JSONResponse(shape.response("".join(parts), str(last.finish_reason), dict(last.usage or {})))

    # The status line waits for the first event, so that a request that fails at once still gets a 500.
    first = await anext(events)
    if first.error:
        await events.aclose()
        return _error(500, first.error, "server_error", "generation_failed")

    async def body() -> AsyncIterator[str]:
        event: Event | None = first
        try:
            if shape.chat:
                yield _sse(shape.chunk(None, first=True))
            if echo:
                yield _sse(shape.chunk(echo))
            while event is not None:
                if event.error:
                    yield _sse(_error_body(event.error, "server_error", "generation_failed"))
                    break
                if event.text:
                    yield _sse(shape.chunk(event.text))
                if event.finish_reason:
                    yield _sse(shape.chunk(None, event.finish_reason))
                    if include_usage:
                        yield _sse(shape.usage_chunk(dict(event.usage or {})))
                    break
                event = await anext(events, None)
            yield "data: [DONE]\n\n"
        finally:
            await events.aclose()  # a client that went away mid-stream cancels its generation here

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_app(backend: CompletionBackend) -> FastAPI:
    """The FastAPI app serving ``backend`` (see the module docstring for the routes)."""
    app = FastAPI(title="astforge completions", summary="OpenAI-compatible code completion", version="0.1.0")
    app.state.backend = backend

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "invalid"}
        # Drop "body" and pydantic's union-branch labels ("str", "list[str]") from the location.
        loc = [str(p) for p in first.get("loc", ())[1:] if isinstance(p, int) or str(p).isidentifier()
               and str(p) not in _TYPE_LABELS]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        if first.get("type") == "missing" and not loc:
            message = "the request body must be a JSON object"
        return _error(400, message, code=_VALIDATION_CODES.get(str(first.get("type")), "invalid_value"), param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(404, f"unknown route {request.method} {request.url.path}", "not_found_error",
                          "unknown_url")
        if exc.status_code == 405:
            return _error(405, f"method {request.method} not allowed on {request.url.path}", "invalid_request_error",
                          "method_not_allowed")
        return _error(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(_APIError)
    async def api_error(request: Request, exc: _APIError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.kind, exc.code, exc.param)

    @app.exception_handler(QueueFull)
    async def busy(request: Request, exc: QueueFull) -> JSONResponse:
        response = _error(429, f"the server is busy: {exc}", "rate_limit_error", "queue_full")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"{type(exc).__name__}: {exc}", "server_error", "internal_error")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": backend.model_name}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": backend.model_name, "object": "model", "created": 0,
                                            "owned_by": "astforge"}]}

    def check(body: _Sampling) -> None:
        if body.model is not None and body.model != backend.model_name:
            raise _APIError(404, f"the model {body.model!r} does not exist here; this server serves "
                                 f"{backend.model_name!r} (GET /v1/models)", "invalid_request_error",
                            "model_not_found", "model")
        _check_unicode("", body.model_dump(exclude_none=True))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check(body)
        prompt = build_completion_prompt(body.text, body.suffix)
        shape = _Shape(chat=False, model=backend.model_name)
        return await _answer(backend, prompt, body.params(DEFAULT_MAX_TOKENS), shape, bool(body.stream),
                             body.include_usage, echo=body.text if body.echo else "")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        check(body)
        try:
            prompt = backend.chat_prompt([m.model_dump() for m in body.messages])
        except Exception as exc:  # a chat template that rejects the roles (e.g. two user turns in a row)
            raise _APIError(400, f"messages: {exc}", param="messages") from exc
        shape = _Shape(chat=True, model=backend.model_name)
        return await _answer(backend, prompt, body.params(DEFAULT_CHAT_MAX_TOKENS), shape,
                             bool(body.stream), body.include_usage)

    app.add_middleware(_LimitBody, limit=MAX_BODY_BYTES)
    return app


# ---------------------------------------------------------------------------------------------------- CLI


@contextmanager
def serve_in_background(app: FastAPI, *, start_timeout_s: float = 60.0) -> Iterator[str]:
    """``app`` on a real uvicorn server on a free port of 127.0.0.1, in a background thread; yields its base URL
    and stops it on exit (``RuntimeError`` when it does not start or stop). For tests and benchmarks."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        if thread.is_alive():
            raise RuntimeError("uvicorn did not stop")


def serve(backend: CompletionBackend, host: str = "127.0.0.1", port: int = 8000, *,
          log_level: str = "info") -> None:
    """Serve ``backend`` with uvicorn until interrupted (blocking)."""
    import uvicorn

    uvicorn.run(create_app(backend), host=host, port=port, log_level=log_level)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a Hugging Face causal LM (optionally with a LoRA adapter) "
                                                 "over OpenAI's completions and chat completions APIs.")
    parser.add_argument("--model-dir", required=True, help="Hugging Face model folder")
    parser.add_argument("--adapter-dir", help="PEFT LoRA adapter folder trained on --model-dir (merged)")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_ID, help="model id the server reports")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--max-batch", type=int, default=4, help="queued requests decoded together")
    parser.add_argument("--max-tokens-cap", type=int, default=MAX_TOKENS_CAP)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        backend = HFCompletionBackend(args.model_dir, args.adapter_dir, device=args.device, max_batch=args.max_batch,
                                      model_name=args.model_name, max_tokens_cap=args.max_tokens_cap)
    except ValueError as exc:
        parser.error(str(exc))
    base = f"http://{args.host}:{args.port}/v1"
    print(f"serving {args.model_dir} as {backend.model_name!r}: {base}/completions, {base}/chat/completions",
          flush=True)
    try:
        serve(backend, args.host, args.port)
    finally:
        backend.close()


if __name__ == "__main__":
    main()
