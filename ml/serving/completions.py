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

Generation always ends at the tokenizer's end-of-sequence token, at every special token and at the FIM / Qwen
control tokens (``<|endoftext|>``, ``<|fim_pad|>``, ``<|file_sep|>``...): none of them is ever part of a text.
Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status.

One worker thread owns the model (generation is not thread-safe): requests queue up and are answered in order;
up to ``max_batch`` queued requests with the same sampling settings are decoded together as one left-padded
batch. A client that goes away cancels its request; the others are unaffected.

``python -m ml.serving.completions --model-dir DIR [--adapter-dir DIR] --port 8000`` serves a model folder.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from ml.autocomplete.fim import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, FIM_TOKENS, fim_prompt

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "astforge-autocomplete"
DEFAULT_MAX_TOKENS = 64  # /v1/completions: an editor wants a line or a few, fast
DEFAULT_CHAT_MAX_TOKENS = 256  # /v1/chat/completions: a function from a comment
MAX_TOKENS_CAP = 512
# Ends of a completion besides the tokenizer's eos and its special tokens: Qwen2.5-Coder's control tokens (a FIM
# model that emits one has finished the middle) and the FIM markers themselves, which astforge's FIM tokenizer adds
# as ordinary (non-special) tokens.
STOP_TOKENS = ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>", *FIM_TOKENS)
# Prompt tokens decoded in front of the first generated ones, so that a SentencePiece "▁x" piece keeps its space.
_DECODE_CONTEXT = 5
# Below this a temperature is greedy (sampling at 1e-6 is argmax with extra steps).
_GREEDY_BELOW = 1e-5

__all__ = [
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


# ---------------------------------------------------------------------------------------------------- prompts


def ensure_fim_tokens(tokenizer) -> int:
    """Add the missing FIM tokens (``<|fim_prefix|>``, ``<|fim_suffix|>``, ``<|fim_middle|>``) to ``tokenizer``
    as atomic added tokens, like :func:`ml.autocomplete.recipe.fim_tokenizer` does. Returns how many were added:
    when it is not 0 the model's embedding matrix must grow to ``len(tokenizer)`` rows."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in FIM_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=False)
    return len(missing)


def build_completion_prompt(prompt: str, suffix: str | None) -> str:
    """The text the model continues: ``prompt`` as is when there is no suffix or when it is already a FIM prompt
    (an editor rendered its own template), else the PSM fill-in-the-middle prompt of ``prompt`` and ``suffix``."""
    if suffix is None or FIM_PREFIX in prompt:
        return prompt
    return fim_prompt(prompt, suffix)


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


def chat_prompt(tokenizer, messages: Sequence[dict[str, Any]]) -> str:
    """The prompt of a chat: the tokenizer's chat template (with the assistant turn opened) when it has one, else
    the message contents joined by blank lines (a base code model reads a comment and writes the code)."""
    plain = [{"role": m["role"], "content": _content_text(m.get("content"))} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in plain) + "\n"


# ---------------------------------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes. ``temperature`` 0 is greedy; ``stop`` strings end the text (not included)."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_BELOW

    def batch_key(self) -> tuple | None:
        """Requests with equal keys decode in one batch (``model.generate`` takes one sampling setting); a seeded
        request decodes alone so that its seed means the same thing whatever else is queued."""
        if self.seed is not None:
            return None
        return ("greedy",) if self.greedy else ("sample", self.temperature, self.top_p)


@dataclass
class Event:
    """What a request receives from the worker: text deltas, then one event with ``finish_reason`` (``stop`` or
    ``length``) and ``usage``, or one event with ``error``."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    error: str | None = None

    @property
    def last(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass(eq=False)
class Job:
    """One queued request: the prompt, its sampling settings and the callback that receives its events (on the
    worker thread; a callback that raises cancels the job). The worker fills ``ids`` (the prompt's tokens)."""

    prompt: str
    params: SamplingParams
    sink: Callable[[Event], None]
    ids: list[int] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()

    def deliver(self, event: Event) -> None:
        if self.cancelled.is_set():
            return
        try:
            self.sink(event)
        except Exception:  # the receiver is gone (its event loop closed): stop spending tokens on it
            self.cancel()
        if event.last:
            self.done.set()


class _Row:
    """One job's state inside a batch: incremental detokenization, stop strings, the text already sent."""

    def __init__(self, job: Job, decode: Callable[[list[int]], str], stop_ids: frozenset[int]) -> None:
        self.job = job
        self.decode = decode
        self.stop_ids = stop_ids
        context = job.ids[-_DECODE_CONTEXT:]
        self.ids = list(context)
        self.prefix_offset, self.read_offset = 0, len(context)
        self.text = ""
        self.sent = 0
        self.count = 0
        self.finished = False
        self.stops = tuple(s for s in job.params.stop if s)

    def push(self, token: int) -> None:
        if self.finished:
            return
        if self.job.cancelled.is_set():
            self.finished = True
            return
        self.count += 1
        if token in self.stop_ids:
            self.finish("stop")
            return
        self.ids.append(token)
        self._read()
        if self._stop_at() is not None:
            self.finish("stop")
        elif self.count >= self.job.params.max_tokens:
            self.finish("length")
        else:
            self._send_safe()

    def finish(self, reason: str) -> None:
        if self.finished:
            return
        self._read(final=True)
        cut = self._stop_at()
        if cut is not None:
            self.text, reason = self.text[:cut], "stop"
        self._send(len(self.text))
        self.finished = True
        prompt = len(self.job.ids)
        self.job.deliver(Event(finish_reason=reason, usage={
            "prompt_tokens": prompt, "completion_tokens": self.count, "total_tokens": prompt + self.count}))

    def _read(self, final: bool = False) -> None:
        # Decode a window that starts a few tokens back and keep what grew: a token that ends mid-character
        # ("\ufffd") waits for the next one (the detokenizer of text-generation-inference).
        before = self.decode(self.ids[self.prefix_offset:self.read_offset])
        after = self.decode(self.ids[self.prefix_offset:])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.text += after[len(before):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)

    def _stop_at(self) -> int | None:
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def _send_safe(self) -> None:
        # Hold back a tail that could be the start of a stop string: streamed text never has to be taken back.
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text) - self.sent), hold, -1):
                if self.text.endswith(s[:k]):
                    hold = k
                    break
        self._send(len(self.text) - hold)

    def _send(self, upto: int) -> None:
        if upto > self.sent:
            self.job.deliver(Event(text=self.text[self.sent:upto]))
            self.sent = upto


def _row_criteria(rows: list[_Row]):
    """A ``StoppingCriteria`` that feeds each new token to its row and tells ``generate`` which rows are done."""
    import torch
    from transformers import StoppingCriteria

    class RowCriteria(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            for row, token in zip(rows, input_ids[:, -1].tolist(), strict=True):
                row.push(token)
            return torch.tensor([r.finished for r in rows], dtype=torch.bool, device=input_ids.device)

    return RowCriteria()


class HFCompletionBackend:
    """A Hugging Face causal LM folder (and optionally a PEFT LoRA adapter, merged into it) behind one worker
    thread.

    ``model_dir``: a folder ``AutoModelForCausalLM`` loads. ``adapter_dir``: a PEFT adapter trained on that model
    (a mismatching or incomplete one raises ``ValueError``); its tokenizer is used when it saved one. The FIM
    tokens are added when the tokenizer lacks them (new embedding rows at the mean of the others). ``device``:
    ``cpu``, ``cuda`` or ``auto``. ``max_batch``: how many queued requests with the same sampling settings decode
    together. ``max_tokens_cap``: the most new tokens a request gets, whatever it asks."""

    def __init__(self, model_dir: str | Path, adapter_dir: str | Path | None = None, device: str = "cpu",
                 max_batch: int = 4, *, model_name: str | None = None,
                 max_tokens_cap: int = MAX_TOKENS_CAP) -> None:
        from transformers import AutoTokenizer

        from ml.compute import resolve_compute
        from ml.training.base_model import resize_with_mean_init
        from ml.training.sft import load_adapter, load_base

        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise ValueError(f"model folder {model_dir} is missing or has no config.json")
        # Serving merges the adapter, so the weights stay unquantized (bf16 on a GPU, fp32 on the CPU).
        plan = resolve_compute(device=device, quantization="none")
        if adapter_dir is not None:
            adapter_dir = Path(adapter_dir)
            model = load_adapter(model_dir, adapter_dir, plan=plan).merge_and_unload()
            has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
            tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir if has_tokenizer else model_dir))
        else:
            model = load_base(model_dir, plan)
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if ensure_fim_tokens(tokenizer):
            log.warning("%s has no FIM tokens: added them with untrained embedding rows", model_dir)
            resize_with_mean_init(model, len(tokenizer))
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = plan.device
        self.model_name = model_name or DEFAULT_MODEL_ID
        self.max_batch = int(max_batch)
        self.max_tokens_cap = int(max_tokens_cap)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.stop_ids = self._stop_ids()
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        self.cancelled = 0  # requests whose client went away mid-generation (a counter for logs and tests)
        self._pending: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="astforge-completions", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------------------------------- public surface

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> str:
        return chat_prompt(self.tokenizer, messages)

    def submit(self, prompt: str, params: SamplingParams, sink: Callable[[Event], None]) -> Job:
        """Queue ``prompt``; ``sink`` receives its :class:`Event` s on the worker thread. Returns the job (cancel
        it when nobody listens any more)."""
        max_tokens = max(1, min(params.max_tokens, self.max_tokens_cap, self.context_length - 1))
        job = Job(prompt, replace(params, max_tokens=max_tokens), sink)
        with self._cv:
            if self._closed:
                raise RuntimeError("the completion backend is closed")
            self._pending.append(job)
            self._cv.notify()
        return job

    def complete(self, prompt: str, params: SamplingParams = SamplingParams(), *,
                 suffix: str | None = None) -> tuple[str, str, dict[str, int]]:
        """Blocking: (text, finish_reason, usage) of one completion (``suffix`` as in the HTTP route)."""
        events = list(self.stream(prompt, params, suffix=suffix))
        last = events[-1]
        return "".join(e.text for e in events), str(last.finish_reason), dict(last.usage or {})

    def stream(self, prompt: str, params: SamplingParams = SamplingParams(), *,
               suffix: str | None = None) -> Iterator[Event]:
        """Blocking iterator over the events of one completion; raises ``RuntimeError`` on a generation error."""
        import queue

        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        job = self.submit(build_completion_prompt(prompt, suffix), params, events.put)
        try:
            while True:
                event = events.get()
                if event.error:
                    raise RuntimeError(event.error)
                yield event
                if event.last:
                    return
        finally:
            job.cancel()

    def close(self) -> None:
        """Stop the worker after the job it is running; queued jobs are dropped."""
        with self._cv:
            self._closed = True
            self._pending.clear()
            self._cv.notify_all()
        self._worker.join(timeout=30)

    # ----------------------------------------------------------------------------------------- worker

    def _stop_ids(self) -> frozenset[int]:
        tok, ids = self.tokenizer, set(self.tokenizer.all_special_ids)
        for source in (tok.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            ids.update(source if isinstance(source, list) else [source] if source is not None else [])
        ids.update(i for i, t in tok.added_tokens_decoder.items() if t.special)
        vocab = tok.get_vocab()
        ids.update(vocab[t] for t in STOP_TOKENS if t in vocab)
        return frozenset(ids)

    def _next_batch(self) -> list[Job] | None:
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            first = self._pending.popleft()
            batch, key = [first], first.params.batch_key()
            if key is not None:
                for job in list(self._pending):
                    if len(batch) >= self.max_batch:
                        break
                    if job.params.batch_key() == key:
                        self._pending.remove(job)
                        batch.append(job)
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [j for j in batch if not j.cancelled.is_set()]
            if not live:
                continue
            try:
                for job in live:
                    job.ids = self._prompt_ids(job)
                self._generate(live)
            except Exception as exc:  # a failed batch answers its requests with an error, the worker lives on
                log.exception("generation failed")
                for job in live:
                    if not job.done.is_set():
                        job.deliver(Event(error=f"generation failed: {type(exc).__name__}: {exc}"))

    def _prompt_ids(self, job: Job) -> list[int]:
        # Tokenized here, not in the request's thread: a fast tokenizer used from two threads at once can fail
        # with "Already borrowed".
        ids = self.tokenizer(job.prompt, add_special_tokens=False)["input_ids"]
        if not ids:  # an empty prompt: the model starts a document, as after OpenAI's <|endoftext|>
            bos = self.tokenizer.bos_token_id
            ids = [bos if bos is not None else self.pad_id]
        # Too long for the context: keep the end of the prompt, next to where the completion goes.
        return list(ids[-(self.context_length - job.params.max_tokens):])

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _generate(self, jobs: list[Job]) -> None:
        import torch
        from transformers import StoppingCriteriaList

        rows = [_Row(job, self._decode, self.stop_ids) for job in jobs]
        width = max(len(j.ids) for j in jobs)
        # Left padding: every row's next token is at the same column.
        input_ids = torch.tensor([[self.pad_id] * (width - len(j.ids)) + j.ids for j in jobs], device=self.device)
        mask = torch.tensor([[0] * (width - len(j.ids)) + [1] * len(j.ids) for j in jobs], device=self.device)
        params = jobs[0].params
        # Explicit values for everything OpenAI's API fixes: a model's generation_config.json (Qwen's top_k 20,
        # repetition_penalty 1.05...) must not change what a request asked for.
        sampling: dict[str, Any] = {"do_sample": False, "repetition_penalty": 1.0}
        if not params.greedy:
            sampling |= {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
            if params.seed is not None:
                torch.manual_seed(params.seed)
        with torch.no_grad():
            self.model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=max(j.params.max_tokens for j in jobs),
                pad_token_id=self.pad_id, eos_token_id=sorted(self.stop_ids),
                stopping_criteria=StoppingCriteriaList([_row_criteria(rows)]), **sampling)
        for row in rows:
            if row.job.cancelled.is_set():
                self.cancelled += 1
            elif not row.finished:  # the context is full
                row.finish("length")


class CompletionBackend(Protocol):
    """What :func:`create_app` needs from a backend (:class:`HFCompletionBackend` is one)."""

    model_name: str
    max_tokens_cap: int

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> str: ...

    def submit(self, prompt: str, params: SamplingParams, sink: Callable[[Event], None]) -> Job: ...


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
    stop: StrictStr | list[StrictStr] | None = None
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

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompt = build_completion_prompt(body.text, body.suffix)
        shape = _Shape(chat=False, model=backend.model_name)
        return await _answer(backend, prompt, body.params(DEFAULT_MAX_TOKENS), shape, bool(body.stream),
                             body.include_usage, echo=body.text if body.echo else "")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        try:
            prompt = backend.chat_prompt([m.model_dump() for m in body.messages])
        except Exception as exc:  # a chat template that rejects the roles (e.g. two user turns in a row)
            raise _APIError(400, f"messages: {exc}", param="messages") from exc
        shape = _Shape(chat=True, model=backend.model_name)
        return await _answer(backend, prompt, body.params(DEFAULT_CHAT_MAX_TOKENS), shape,
                             bool(body.stream), body.include_usage)

    return app


# ---------------------------------------------------------------------------------------------------- CLI


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
