"""A small chat server speaking the OpenAI and Ollama chat protocols, for the project's own teachers and models.

Routes: OpenAI ``GET /v1/models``, ``POST /v1/chat/completions``; Ollama ``GET /api/tags``, ``POST /api/chat``;
``GET /`` and ``GET /health`` for liveness. Errors are JSON with a proper status (400 bad body, 404 unknown route,
500 backend failure). Streaming requests get the whole answer as one chunk.

A backend is any callable ``messages -> str`` (the assistant's reply); optional attribute ``model_name``.

- :class:`ProgrammaticChatBackend`: the programmatic teacher behind the route. It answers the ``TASK:`` /
  ``INPUT:`` prompts that :class:`ml.dsl.teachers.HttpTeacher` sends.
- :class:`HFChatBackend`: greedy generation from a Hugging Face causal LM (a trained student, or a tiny one).
- :class:`FaultInjectingBackend`: garbage / slow / failing answers on a schedule, for tests.

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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

from ml.dsl.domains import build_domain, schema_errors, spec_from_dict, spec_to_dict
from ml.dsl.teachers import (
    ProgrammaticTeacher,
    TeacherQuery,
    lookup_request,
    parse_task,
    unique_queries,
)

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
            from transformers import AutoModelForCausalLM, AutoTokenizer

            folder = Path(model_dir_or_model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(folder)
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


FAULTS = ("ok", "garbage", "invalid", "timeout", "error500", "error503", "error400")


class FaultInjectingBackend:
    """Wraps a backend and misbehaves on a schedule: call ``i`` applies ``faults[i]`` (then ``ok`` forever).

    ``garbage``: text that holds no JSON object; ``invalid``: a JSON object no query schema accepts; ``timeout``:
    sleeps ``sleep_s`` before answering (a client with a shorter timeout gives up); ``error<status>``: answers that
    HTTP status; ``ok``: the wrapped backend's answer."""

    def __init__(self, inner: ChatBackend, faults: Sequence[str], sleep_s: float = 2.0) -> None:
        for f in faults:
            if f not in FAULTS and not (f.startswith("error") and f[5:].isdigit()):
                raise ValueError(f"unknown fault {f!r}; expected one of {FAULTS}")
        self.inner = inner
        self.faults = list(faults)
        self.sleep_s = sleep_s
        self.calls = 0
        self.model_name = getattr(inner, "model_name", "faulty")
        self._lock = threading.Lock()

    @classmethod
    def first(cls, inner: ChatBackend, fault: str, k: int, sleep_s: float = 2.0) -> FaultInjectingBackend:
        """``fault`` for the first ``k`` calls, then the wrapped backend."""
        return cls(inner, [fault] * k, sleep_s)

    def __call__(self, messages: Messages) -> str:
        with self._lock:
            fault = self.faults[self.calls] if self.calls < len(self.faults) else "ok"
            self.calls += 1
        if fault == "garbage":
            return "Sure! Here is what I think: the answer is probably fine {not json"
        if fault == "invalid":
            return '{"answer": "no idea"}'
        if fault.startswith("error"):
            raise BackendError(int(fault[5:]), f"injected fault: HTTP {fault[5:]}")
        if fault == "timeout":
            time.sleep(self.sleep_s)
        return self.inner(messages)


# ---------------------------------------------------------------------------------------------------- HTTP server


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], backend: ChatBackend, model_name: str | None = None,
                 verbose: bool = False) -> None:
        super().__init__(address, _Handler)
        self.backend = backend
        self.model_name = model_name or getattr(backend, "model_name", None) or "astforge"
        self.verbose = verbose


def _words(text: str) -> int:
    return len(text.split())


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer
    server_version = "astforge-chat/0.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else _compact(body).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    def _error(self, status: int, message: str) -> None:
        if self.path.startswith("/api/"):
            self._send(status, {"error": message})
        else:
            kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "server_error")
            self._send(status, {"error": {"message": message, "type": kind, "code": status}})

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def do_GET(self) -> None:
        route, name, now = self._route(), self.server.model_name, int(time.time())
        if route in ("/", "/health"):
            self._send(200, {"status": "ok", "model": name})
        elif route == "/v1/models":
            self._send(200, {"object": "list",
                             "data": [{"id": name, "object": "model", "created": now, "owned_by": "astforge"}]})
        elif route == "/api/tags":
            self._send(200, {"models": [{"name": name, "model": name, "modified_at": _iso_now(), "size": 0,
                                         "digest": "", "details": {"format": "astforge"}}]})
        else:
            self._error(404, f"unknown route GET {route}")

    def do_POST(self) -> None:
        route = self._route()
        if route not in ("/v1/chat/completions", "/api/chat"):
            self._error(404, f"unknown route POST {route}")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length).decode("utf-8")) if length else None
        except (ValueError, UnicodeDecodeError) as exc:
            self._error(400, f"request body is not JSON: {exc}")
            return
        if not isinstance(body, dict):
            self._error(400, "request body must be a JSON object")
            return
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
        ):
            self._error(400, "'messages' must be a non-empty list of {role, content} objects")
            return
        try:
            content = self.server.backend(messages)
        except BackendError as exc:
            self._error(exc.status, exc.message)
            return
        except Exception as exc:  # a backend failure is a 500, not a crash
            self._error(500, f"backend failed: {type(exc).__name__}: {exc}")
            return
        model = body.get("model") if isinstance(body.get("model"), str) and body.get("model") else None
        model = model or self.server.model_name
        if route == "/api/chat":
            self._ollama(body, model, content, messages)
        else:
            self._openai(body, model, content, messages)

    def _ollama(self, body: dict, model: str, content: str, messages: Messages) -> None:
        answer = {"model": model, "created_at": _iso_now(), "message": {"role": "assistant", "content": content},
                  "done": True, "done_reason": "stop",
                  "prompt_eval_count": sum(_words(str(m.get("content") or "")) for m in messages),
                  "eval_count": _words(content)}
        if body.get("stream", True):  # Ollama streams by default: one NDJSON line holding everything
            self._send(200, (_compact(answer) + "\n").encode("utf-8"), "application/x-ndjson")
        else:
            self._send(200, answer)

    def _openai(self, body: dict, model: str, content: str, messages: Messages) -> None:
        prompt_tokens = sum(_words(str(m.get("content") or "")) for m in messages)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream"):
            chunk = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": content},
                                  "finish_reason": "stop"}]}
            self._send(200, f"data: {_compact(chunk)}\n\ndata: [DONE]\n\n".encode(), "text/event-stream")
            return
        self._send(200, {
            "id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": _words(content),
                      "total_tokens": prompt_tokens + _words(content)},
        })


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ServerHandle(NamedTuple):
    """``(server, thread, base_url)``; also a context manager that stops the server on exit."""

    server: ChatServer
    thread: threading.Thread
    base_url: str

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(backend: ChatBackend, host: str = "127.0.0.1", port: int = 0, *, model_name: str | None = None,
          verbose: bool = False) -> ServerHandle:
    """Start a :class:`ChatServer` on a daemon thread (``port=0``: an ephemeral port). Returns
    ``(server, thread, base_url)``; use it as ``with serve(backend) as (server, thread, url): ...``."""
    server = ChatServer((host, port), backend, model_name=model_name, verbose=verbose)
    thread = threading.Thread(target=server.serve_forever, name="astforge-chat-server", daemon=True)
    thread.start()
    bound_host, bound_port = server.server_address[:2]
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
    server = ChatServer((args.host, args.port), backend, model_name=args.model_name, verbose=args.verbose)
    host, port = server.server_address[:2]
    base = f"http://{host}:{port}"
    print(f"serving {args.backend} as {server.model_name!r} on {base} "
          f"(OpenAI: {base}/v1/chat/completions, Ollama: {base}/api/chat); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
