"""A small chat server speaking the OpenAI and Ollama chat protocols, for the project's own teachers and models.

Routes: OpenAI ``GET /v1/models``, ``POST /v1/chat/completions``; Ollama ``GET /api/tags``, ``POST /api/chat``;
``GET /`` and ``GET /health`` for liveness. Errors are JSON with a proper status (400 bad body, 404 unknown route,
500 backend failure): OpenAI's ``{"error": {"message", "type", "code"}}``, Ollama's ``{"error": message}`` under
``/api/``. Streaming requests get the whole answer as one chunk. FastAPI app (:func:`create_chat_app`) served by
uvicorn; :func:`serve` runs it on a background thread.

A backend is any callable ``messages -> str`` (the assistant's reply); optional attribute ``model_name``. It runs
in a worker thread, so a slow one does not hold up other requests.

- :class:`ProgrammaticChatBackend`: the programmatic teacher behind the route. It answers the ``TASK:`` /
  ``INPUT:`` prompts that :class:`ml.dsl.teachers.http_teacher.HttpTeacher` sends.
- :class:`HFChatBackend`: greedy generation from a Hugging Face causal LM (a trained student, or a tiny one).

``python -m ml.serving.chat_server --backend programmatic --port 8011`` serves the programmatic teacher.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ml.dsl.domains import build_domain, schema_errors, spec_from_dict, spec_to_dict
from ml.dsl.teachers.base import TeacherQuery
from ml.dsl.teachers.programmatic import ProgrammaticTeacher, lookup_request, unique_queries
from ml.dsl.teachers.prompts import parse_task

Messages = list[dict[str, Any]]
ChatBackend = Callable[[Messages], str]


class BackendError(Exception):
    """Raised by a backend to answer with an HTTP error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _schema_key(schema: Any) -> str:
    shown = {k: v for k, v in schema.items() if k not in ("$schema", "$id")} if isinstance(schema, dict) else schema
    return hashlib.sha1(json.dumps(shown, sort_keys=True).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------- backends


class ProgrammaticChatBackend:
    """Answers the teacher prompts (``TASK:`` / ``INPUT:`` lines) with :class:`ProgrammaticTeacher`.

    ``domain_spec`` → the seeded spec's fields and example requests; ``queries`` → ``{"requests": [...]}`` generated
    from ``INPUT.spec``; ``label`` → the AST of a request it generated (remembered from its ``queries`` answers, else
    regenerated from the domain and the schema's operators), or ``{"error": "unknown request"}``; ``judge`` →
    ``same_meaning`` of the candidate and its own label (``INPUT.reference`` when it does not know the request)."""

    model_name = "astforge-programmatic"

    def __init__(self) -> None:
        self.teacher = ProgrammaticTeacher()
        self._memory: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()

    def __call__(self, messages: Messages) -> str:
        parsed = parse_task(messages)
        if parsed is None:
            return _compact({"error": "no TASK/INPUT lines in the prompt"})
        task, inp = parsed
        handler = {"domain_spec": self._domain_spec, "queries": self._queries, "label": self._label,
                   "judge": self._judge}.get(task)
        if handler is None:
            return _compact({"error": f"unknown task {task!r}"})
        try:
            return _compact(handler(inp))
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            return _compact({"error": f"{task}: {exc}"})

    def _domain_spec(self, inp: dict) -> dict:
        spec, examples = self.teacher.domain_spec(
            inp["domain"], seed=int(inp.get("seed", 0)), examples=int(inp.get("examples", 0))
        )
        data = spec_to_dict(spec)
        return {"noun_en": data["noun_en"], "noun_fr": data["noun_fr"], "feminine_fr": data["feminine_fr"],
                "fields": data["fields"], "examples": examples}

    def _queries(self, inp: dict) -> dict:
        spec = spec_from_dict(inp["spec"])
        n, lang, seed = int(inp["n"]), inp.get("lang", "en"), int(inp.get("seed", 0))
        exclude = {t for t in inp.get("exclude", ()) if isinstance(t, str)}
        key = _schema_key(inp.get("schema"))
        pairs = unique_queries(spec, n + len(exclude), seed)
        with self._lock:
            for q in pairs:
                self._memory[(key, q.text_en)] = q.ast
                self._memory[(key, q.text_fr)] = q.ast
        texts = [q.text_fr if lang == "fr" else q.text_en for q in pairs]
        return {"requests": [t for t in texts if t not in exclude][:n]}

    def _find(self, inp: dict) -> dict | None:
        schema, text = inp["schema"], inp["request"]
        with self._lock:
            ast = self._memory.get((_schema_key(schema), text))
        if ast is None:  # not handed out by this server: regenerate from the domain and the schema's operators
            try:
                spec = build_domain(inp["domain"], int(inp.get("domain_seed", 0)))
                ops = tuple(schema["$defs"]["comparison"]["properties"]["op"]["enum"])
                spec = spec_from_dict({**spec_to_dict(spec), "operators": list(ops)})
            except (KeyError, ValueError, TypeError):
                return None
            ast = lookup_request(spec, text)
        if ast is None or schema_errors(ast, schema):
            return None
        return ast

    def _label(self, inp: dict) -> dict:
        ast = self._find(inp)
        return ast if ast is not None else {"error": "unknown request"}

    def _judge(self, inp: dict) -> dict:
        ref = self._find(inp)
        if ref is None:
            ref = inp.get("reference")
        if not isinstance(ref, dict):
            return {"error": "unknown request"}
        query = TeacherQuery(inp.get("domain", ""), inp.get("lang", "en"), inp["request"], ref)
        verdict = self.teacher.judge(None, inp["schema"], query, inp["candidate"], ref)  # type: ignore[arg-type]
        return {"accept": verdict.accept, "reason": verdict.reason}


class HFChatBackend:
    """Greedy generation from a causal LM: the prompt is the tokenizer's chat template when it has one, else the
    message contents joined by blank lines. ``model_dir_or_model``: a saved model folder (tokenizer read from it
    unless given) or a loaded model (``tokenizer`` then required). Prompts longer than the model's context are cut
    from the left."""

    def __init__(self, model_dir_or_model: Any, tokenizer: Any = None, max_new_tokens: int = 128,
                 model_name: str | None = None) -> None:
        if isinstance(model_dir_or_model, str | Path):
            from transformers import AutoModelForCausalLM

            from ml.models.loading import load_tokenizer

            folder = Path(model_dir_or_model)
            tokenizer = tokenizer or load_tokenizer(folder)
            model = AutoModelForCausalLM.from_pretrained(folder)
            self.model_name = model_name or folder.name
        else:
            if tokenizer is None:
                raise ValueError("HFChatBackend: a loaded model needs its tokenizer")
            model = model_dir_or_model
            self.model_name = model_name or getattr(model.config, "model_type", "hf-model")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self._lock = threading.Lock()

    def prompt(self, messages: Messages) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(str(m.get("content") or "") for m in messages)

    def __call__(self, messages: Messages) -> str:
        import torch

        enc = self.tokenizer(self.prompt(messages), return_tensors="pt", add_special_tokens=False)
        ids, mask = enc["input_ids"], enc.get("attention_mask")
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and ids.shape[1] + self.max_new_tokens > limit:
            keep = max(1, limit - self.max_new_tokens)
            ids = ids[:, -keep:]
            mask = mask[:, -keep:] if mask is not None else None
        device = next(self.model.parameters()).device
        ids = ids.to(device)
        mask = mask.to(device) if mask is not None else torch.ones_like(ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self._lock, torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, pad_token_id=pad)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------------- HTTP server


def _words(text: str) -> int:
    return len(text.split())


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _json(status: int, body: Any, media_type: str = "application/json") -> Response:
    data = body if isinstance(body, bytes) else _compact(body).encode("utf-8")
    return Response(data, status_code=status, media_type=media_type)


def _error(path: str, status: int, message: str) -> Response:
    if path.startswith("/api/"):  # Ollama's error shape
        return _json(status, {"error": message})
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "server_error")
    return _json(status, {"error": {"message": message, "type": kind, "code": status}})


class _IgnoreTrailingSlash:
    """``/v1/models/`` is ``/v1/models`` (clients join base URLs and paths in every way)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(scope["path"]) > 1 and scope["path"].endswith("/"):
            scope = {**scope, "path": scope["path"].rstrip("/") or "/"}
        await self.app(scope, receive, send)


def create_chat_app(backend: ChatBackend, model_name: str | None = None) -> FastAPI:
    """The FastAPI app serving ``backend`` over the OpenAI and Ollama chat routes (see the module docstring)."""
    name = model_name or getattr(backend, "model_name", None) or "astforge"
    app = FastAPI(title="astforge chat", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.model_name = name
    app.add_middleware(_IgnoreTrailingSlash)

    @app.exception_handler(StarletteHTTPException)
    async def unknown(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (404, 405):  # a GET of a POST route is an unknown route too, as before
            return _error(request.url.path, 404, f"unknown route {request.method} {request.url.path}")
        return _error(request.url.path, exc.status_code, str(exc.detail))

    @app.get("/")
    @app.get("/health")
    async def health() -> Response:
        return _json(200, {"status": "ok", "model": name})

    @app.get("/v1/models")
    async def models() -> Response:
        return _json(200, {"object": "list", "data": [{"id": name, "object": "model", "created": int(time.time()),
                                                      "owned_by": "astforge"}]})

    @app.get("/api/tags")
    async def tags() -> Response:
        return _json(200, {"models": [{"name": name, "model": name, "modified_at": _iso_now(), "size": 0,
                                       "digest": "", "details": {"format": "astforge"}}]})

    async def chat(request: Request, answer: Callable[[dict, str, str, Messages], Response]) -> Response:
        path = request.url.path
        raw = await request.body()
        try:
            body = json.loads(raw.decode("utf-8")) if raw else None
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(path, 400, f"request body is not JSON: {exc}")
        if not isinstance(body, dict):
            return _error(path, 400, "request body must be a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
        ):
            return _error(path, 400, "'messages' must be a non-empty list of {role, content} objects")
        try:
            content = await run_in_threadpool(backend, messages)
        except BackendError as exc:
            return _error(path, exc.status, exc.message)
        except Exception as exc:  # a backend failure is a 500, not a crash
            return _error(path, 500, f"backend failed: {type(exc).__name__}: {exc}")
        model = body.get("model") if isinstance(body.get("model"), str) and body.get("model") else name
        return answer(body, model, content, messages)

    @app.post("/v1/chat/completions")
    async def openai_chat(request: Request) -> Response:
        return await chat(request, _openai)

    @app.post("/api/chat")
    async def ollama_chat(request: Request) -> Response:
        return await chat(request, _ollama)

    return app


def _ollama(body: dict, model: str, content: str, messages: Messages) -> Response:
    answer = {"model": model, "created_at": _iso_now(), "message": {"role": "assistant", "content": content},
              "done": True, "done_reason": "stop",
              "prompt_eval_count": sum(_words(str(m.get("content") or "")) for m in messages),
              "eval_count": _words(content)}
    if body.get("stream", True):  # Ollama streams by default: one NDJSON line holding everything
        return _json(200, (_compact(answer) + "\n").encode("utf-8"), "application/x-ndjson")
    return _json(200, answer)


def _openai(body: dict, model: str, content: str, messages: Messages) -> Response:
    prompt_tokens = sum(_words(str(m.get("content") or "")) for m in messages)
    ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if body.get("stream"):
        chunk = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": content},
                              "finish_reason": "stop"}]}
        return _json(200, f"data: {_compact(chunk)}\n\ndata: [DONE]\n\n".encode(), "text/event-stream")
    return _json(200, {
        "id": ident, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": _words(content),
                  "total_tokens": prompt_tokens + _words(content)},
    })


class ServerHandle(NamedTuple):
    """``(server, thread, base_url)``; also a context manager that stops the server on exit."""

    server: uvicorn.Server
    thread: threading.Thread
    base_url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(backend: ChatBackend, host: str = "127.0.0.1", port: int = 0, *, model_name: str | None = None,
          verbose: bool = False) -> ServerHandle:
    """Start uvicorn serving :func:`create_chat_app` on a daemon thread (``port=0``: an ephemeral port) and wait
    until it listens. Returns ``(server, thread, base_url)``; use it as
    ``with serve(backend) as (server, thread, url): ...``."""
    config = uvicorn.Config(create_chat_app(backend, model_name), host=host, port=port, lifespan="off",
                            log_level="info" if verbose else "warning", access_log=verbose,
                            # a backend still sleeping for a client that gave up must not hold the exit long
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="astforge-chat-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:  # uvicorn exits its thread when it cannot bind
            server.should_exit = True
            raise OSError(f"the chat server did not start on {host}:{port}")
        time.sleep(0.01)
    bound_host, bound_port = server.servers[0].sockets[0].getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    return ServerHandle(server, thread, f"http://{shown}:{bound_port}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a backend over the OpenAI and Ollama chat protocols.")
    parser.add_argument("--backend", choices=("programmatic", "hf"), default="programmatic")
    parser.add_argument("--model-dir", help="saved Hugging Face model folder (--backend hf)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--model-name", help="model id reported by the server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if args.backend == "hf":
        if not args.model_dir:
            parser.error("--backend hf needs --model-dir")
        backend: ChatBackend = HFChatBackend(args.model_dir, max_new_tokens=args.max_new_tokens)
    else:
        backend = ProgrammaticChatBackend()
    app = create_chat_app(backend, args.model_name)
    base = f"http://{args.host}:{args.port}"
    print(f"serving {args.backend} as {app.state.model_name!r} on {base} "
          f"(OpenAI: {base}/v1/chat/completions, Ollama: {base}/api/chat); Ctrl-C stops", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                access_log=args.verbose)


if __name__ == "__main__":
    main()
