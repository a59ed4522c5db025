"""The completion server's engines. :class:`QueuedCompletionBackend` is what they share: one worker thread that
owns the model (generation is not thread-safe), a queue answered in order, and each request's text streamed as it
grows (incremental detokenization, stop strings, stop tokens, cancellation). :class:`HFCompletionBackend` is a
Hugging Face causal LM (optionally with a merged LoRA adapter); up to ``max_batch`` queued requests with the same
sampling settings decode together as one left-padded batch. The llama.cpp engine (a GGUF file) is
:mod:`ml.serving.llama_cpp_backend`.

The HTTP server in front of them is :mod:`ml.serving.completions`.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from ml.autocomplete.fim import FIM_PREFIX, FIM_TOKENS
from ml.serving.completion_jobs import Event, Job, SamplingParams, build_completion_prompt, chat_prompt

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "astforge-autocomplete"
MAX_TOKENS_CAP = 512
MAX_QUEUED = 64  # requests waiting for the worker; more are refused (HTTP 429) rather than held in memory


class QueueFull(RuntimeError):
    """The backend's queue holds ``max_queued`` requests already."""
# Ends of a completion besides the tokenizer's eos and its special tokens: Qwen2.5-Coder's control tokens (a FIM
# model that emits one has finished the middle) and the FIM markers themselves, which astforge's FIM tokenizer adds
# as ordinary (non-special) tokens.
STOP_TOKENS = ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>", *FIM_TOKENS)
# Prompt tokens decoded in front of the first generated ones, so that a SentencePiece "▁x" piece keeps its space.
_DECODE_CONTEXT = 5
# The default of complete() and stream(): SamplingParams is frozen, so one shared instance is safe.
_DEFAULT_PARAMS = SamplingParams()


def ensure_fim_tokens(tokenizer) -> int:
    """Add the missing FIM tokens (``<|fim_prefix|>``, ``<|fim_suffix|>``, ``<|fim_middle|>``) to ``tokenizer``
    as atomic added tokens, like :func:`ml.autocomplete.recipe.fim_tokenizer` does. Returns how many were added:
    when it is not 0 the model's embedding matrix must grow to ``len(tokenizer)`` rows."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in FIM_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=False)
    return len(missing)


# ---------------------------------------------------------------------------------------------------- the engine


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


class QueuedCompletionBackend:
    """One worker thread that owns a model and answers queued requests in order; subclasses tokenize
    (:meth:`_prompt_ids`), decode token ids to text (:meth:`_decode`) and generate (:meth:`_generate`, which feeds
    each new token to its request's :class:`_Row`). ``max_batch``: how many queued requests with the same sampling
    settings a subclass may get at once. ``max_tokens_cap``: the most new tokens a request gets, whatever it asks.
    Subclasses set their model up, then call ``super().__init__`` (which starts the worker)."""

    def __init__(self, *, model_name: str | None, max_batch: int, max_tokens_cap: int, context_length: int,
                 stop_ids: frozenset[int], bos_id: int | None, pad_id: int, max_queued: int = MAX_QUEUED) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.model_name = model_name or DEFAULT_MODEL_ID
        self.max_batch = int(max_batch)
        self.max_tokens_cap = int(max_tokens_cap)
        self.context_length = int(context_length)
        self.stop_ids = stop_ids
        self.bos_id, self.pad_id = bos_id, pad_id
        self.cancelled = 0  # requests whose client went away mid-generation (a counter for logs and tests)
        self.max_queued = int(max_queued)
        # Kept in front of a prompt clipped to the context: BOS and the FIM prefix token (when it is one token).
        fim_prefix = self._tokenize(FIM_PREFIX)
        self.marker_ids = frozenset([i for i in (bos_id, *fim_prefix[: len(fim_prefix) == 1]) if i is not None])
        self._pending: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="astforge-completions", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------------------------------- public surface

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> str:
        raise NotImplementedError

    def tokenize(self, text: str) -> list[int]:
        """The token ids of ``text`` as a prompt: FIM and control tokens one id each, nothing added in front. On the
        caller's thread: for tests and tools, not while requests are being served."""
        return self._tokenize(text)

    def submit(self, prompt: str, params: SamplingParams, sink: Callable[[Event], None]) -> Job:
        """Queue ``prompt``; ``sink`` receives its :class:`Event` s on the worker thread. Returns the job (cancel
        it when nobody listens any more)."""
        max_tokens = max(1, min(params.max_tokens, self.max_tokens_cap, self.context_length - 1))
        job = Job(prompt, replace(params, max_tokens=max_tokens), sink)
        with self._cv:
            if self._closed:
                raise RuntimeError("the completion backend is closed")
            if len(self._pending) >= self.max_queued:  # requests whose client left hold no slot
                self._pending = collections.deque(j for j in self._pending if not j.cancelled.is_set())
            if len(self._pending) >= self.max_queued:
                raise QueueFull(f"{len(self._pending)} requests are already waiting; retry shortly")
            self._pending.append(job)
            self._cv.notify()
        return job

    def complete(self, prompt: str, params: SamplingParams = _DEFAULT_PARAMS, *,
                 suffix: str | None = None) -> tuple[str, str, dict[str, int]]:
        """Blocking: (text, finish_reason, usage) of one completion (``suffix`` as in the HTTP route)."""
        events = list(self.stream(prompt, params, suffix=suffix))
        last = events[-1]
        return "".join(e.text for e in events), str(last.finish_reason), dict(last.usage or {})

    def stream(self, prompt: str, params: SamplingParams = _DEFAULT_PARAMS, *,
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
        # with "Already borrowed", and llama.cpp's context is not thread-safe.
        ids = self._tokenize(job.prompt)
        if not ids:  # an empty prompt: the model starts a document, as after OpenAI's <|endoftext|>
            ids = [self.bos_id if self.bos_id is not None else self.pad_id]
        # Too long for the context: keep the end of the prompt, next to where the completion goes, and its first
        # token when that is a FIM or BOS marker (the model was trained with it in front).
        budget = self.context_length - job.params.max_tokens
        if len(ids) <= budget:
            return list(ids)
        head = ids[:1] if ids[0] in self.marker_ids else []
        return head + list(ids[len(ids) - (budget - len(head)):])

    def _rows(self, jobs: list[Job]) -> list[_Row]:
        return [_Row(job, self._decode, self.stop_ids) for job in jobs]

    def _finish(self, rows: list[_Row]) -> None:
        for row in rows:
            if row.job.cancelled.is_set():
                self.cancelled += 1
            elif not row.finished:  # the context is full
                row.finish("length")

    def _tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _generate(self, jobs: list[Job]) -> None:
        raise NotImplementedError


class HFCompletionBackend(QueuedCompletionBackend):
    """A Hugging Face causal LM folder (and optionally a PEFT LoRA adapter, merged into it) behind one worker
    thread.

    ``model_dir``: a folder ``AutoModelForCausalLM`` loads. ``adapter_dir``: a PEFT adapter trained on that model
    (a mismatching or incomplete one raises ``ValueError``); its tokenizer is used when it saved one. The FIM
    tokens are added when the tokenizer lacks them (new embedding rows at the mean of the others). ``device``:
    ``cpu``, ``cuda`` or ``auto``. ``max_batch``: how many queued requests with the same sampling settings decode
    together. ``max_tokens_cap``: the most new tokens a request gets, whatever it asks. ``fim_tokens=False``
    serves the model as it is (a chat model such as the DSL student has no use for them)."""

    def __init__(self, model_dir: str | Path, adapter_dir: str | Path | None = None, device: str = "cpu",
                 max_batch: int = 4, *, model_name: str | None = None,
                 max_tokens_cap: int = MAX_TOKENS_CAP, fim_tokens: bool = True) -> None:

        from ml.compute import resolve_compute
        from ml.models.loading import load_for_generation
        from ml.training.base_model import resize_with_mean_init

        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise ValueError(f"model folder {model_dir} is missing or has no config.json")
        # Serving merges the adapter, so the weights stay unquantized (bf16 on a GPU, fp32 on the CPU).
        plan = resolve_compute(device=device, quantization="none")
        model, tokenizer = load_for_generation(model_dir, adapter_dir, plan)
        if fim_tokens and ensure_fim_tokens(tokenizer):
            log.warning("%s has no FIM tokens: added them with untrained embedding rows", model_dir)
            resize_with_mean_init(model, len(tokenizer))
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = plan.device
        pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        super().__init__(model_name=model_name, max_batch=max_batch, max_tokens_cap=max_tokens_cap,
                         context_length=int(getattr(model.config, "max_position_embeddings", 0) or 2048),
                         stop_ids=self._stop_ids(), bos_id=tokenizer.bos_token_id, pad_id=pad_id)

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> str:
        return chat_prompt(self.tokenizer, messages)

    def _stop_ids(self) -> frozenset[int]:
        tok, ids = self.tokenizer, set(self.tokenizer.all_special_ids)
        for source in (tok.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            ids.update(source if isinstance(source, list) else [source] if source is not None else [])
        ids.update(i for i, t in tok.added_tokens_decoder.items() if t.special)
        vocab = tok.get_vocab()
        ids.update(vocab[t] for t in STOP_TOKENS if t in vocab)
        return frozenset(ids)

    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _generate(self, jobs: list[Job]) -> None:
        import torch
        from transformers import StoppingCriteriaList

        rows = self._rows(jobs)
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
        self._finish(rows)


class CompletionBackend(Protocol):
    """What :func:`create_app` needs from a backend (:class:`HFCompletionBackend` and
    :class:`ml.serving.llama_cpp_backend.LlamaCppCompletionBackend` are two)."""

    model_name: str
    max_tokens_cap: int

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> str: ...

    def submit(self, prompt: str, params: SamplingParams, sink: Callable[[Event], None]) -> Job: ...
