"""Schema-constrained decoding of DSL query ASTs with llguidance.

The student reads a JSON Schema and a request and must emit one JSON object that validates against the schema.
:class:`JsonSchemaLogitsProcessor` keeps one ``llguidance.LLMatcher`` per batch row (rows may carry different
schemas) and masks the logits of each step to the tokens that keep the row's text a prefix of a valid document;
once a row's object is complete only EOS is allowed. :func:`generate_json` is greedy batched generation with it.

The grammars and matchers come from :mod:`ml.dsl.schema_grammar` (what llguidance needed of the schemas is noted
there); the length budget's completions from :mod:`ml.dsl.closing`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from ml.dsl.schema_grammar import closer, executor, ll_tokenizer, matcher
from ml.dsl.stopping import json_end_stopping
from ml.evaluation.lm import left_padded_batches

# ---------------------------------------------------------------------------------------------------- processor


def _mask_word(token: int) -> tuple[int, int]:
    """(word index, int32 value) of the bitmask bit of ``token``."""
    bit = token % 32
    return token // 32, (1 << bit) if bit < 31 else -(1 << 31)


class JsonSchemaLogitsProcessor(LogitsProcessor):
    """Masks each row's scores to the tokens its schema allows after the row's generated tokens.

    ``prompt_lengths[i]``: where row ``i``'s generated tokens start in ``input_ids`` (with left padding every row
    has the batch width). Each call consumes the row's new token(s), computes the next masks for all live rows (in
    parallel with ``LLExecutor`` when the CPU has cores to spare, see ``parallel``) and applies them. A row whose
    object is complete (matcher accepting or stopped) may only emit EOS; a row that has emitted EOS (or whose
    matcher broke, see ``errors``) is finished: only EOS stays allowed, and whatever ``generate`` pads it with is
    ignored. Score columns past the tokenizer's vocabulary (models whose embedding has padding rows) are always
    masked.

    Length budget (``max_new_tokens`` given): an untrained or unsure model can write digits or string characters
    forever, and a cut-off object is no object. Once a row's remaining tokens come within ``budget_window`` of
    its last known completion length (refreshed at least every ``recheck_every`` steps), each step checks that
    the greedy choice (the arg-max of the masked scores) still leaves a completion (:class:`Closer`) that fits in the
    remaining tokens; when it does not, the row is steered along the completion token by token (``closed[i]`` set).
    With greedy decoding every row so ends with a complete object, unless its completion outgrew the window
    between two refreshes (deep nesting). A sampled token may differ from the arg-max: then it is best effort.

    ``greedy``: for greedy decoding only (``generate_json``): a row whose arg-max token is allowed is masked to that
    token alone, without computing its full mask (the same choice; a trained student's arg-max is nearly always
    allowed). The length-budget check first tries the known completion after the new token (one validation)
    before walking a new one.

    ``mask_us``: per step, microseconds spent in llguidance for the batch (consume the new tokens + fill the
    bitmask); ``call_us``: per step, the whole call (incl. the budget check and applying the mask).
    """

    # Masks of a batch computed by llguidance's thread pool: None = only when the CPU has cores torch's threads
    # leave free (on 2 cores the pool and torch's spinning OpenMP threads contend: mean mask time 0.76 ms per step
    # in parallel vs 0.38 ms in turn, bench/dsl_eval.py).
    parallel: bool | None = None

    def __init__(
        self,
        tokenizer,
        schemas: Sequence[dict[str, Any]],
        prompt_lengths: Sequence[int],
        eos_token_id: int | Sequence[int] | None = None,
        max_new_tokens: int | None = None,
        budget_window: int = 32,
        recheck_every: int = 8,
        greedy: bool = False,
    ) -> None:
        import llguidance.torch as llt

        if len(schemas) != len(prompt_lengths):
            raise ValueError(f"{len(schemas)} schemas for {len(prompt_lengths)} prompt lengths")
        self._llt = llt
        self.lltok = ll_tokenizer(tokenizer)
        self.closer = closer(tokenizer)
        self.n_vocab = self.lltok.vocab_size
        eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no EOS token: pass eos_token_id")
        self.eos_ids = [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]
        self.prompt_lengths = [int(n) for n in prompt_lengths]
        self.max_new_tokens = max_new_tokens
        self.budget_window = budget_window
        self.recheck_every = recheck_every
        self.greedy = greedy
        self.greedy_hits = 0  # rows whose arg-max needed no mask (greedy fast path)
        self.matchers = [matcher(tokenizer, s) for s in schemas]
        n = len(schemas)
        self.consumed = [0] * n
        self.finished = [False] * n
        self.closed = [False] * n
        self.errors: list[str | None] = [None] * n
        self._queue: list[list[int]] = [[] for _ in range(n)]
        self._close_len: list[int | None] = [None] * n  # completion length at the last check
        self._checked_at = [0] * n  # tokens consumed at the last check
        self._path: list[tuple[int, list[int]] | None] = [None] * n  # (tokens consumed, completion from there)
        self.bitmask = llt.allocate_token_bitmask(n, self.n_vocab)
        self._eos_row = torch.zeros(self.bitmask.shape[1], dtype=torch.int32)
        for e in self.eos_ids:
            w, v = _mask_word(e)
            self._eos_row[w] |= v
        self._shifts: dict[torch.device, torch.Tensor] = {}
        self.mask_us: list[float] = []
        self.call_us: list[float] = []

    # -- state

    def _advance(self, input_ids: torch.LongTensor) -> None:
        width = input_ids.shape[1]
        todo = [i for i in range(len(self.matchers)) if not self.finished[i]]
        if not todo:
            return
        new = [width - self.prompt_lengths[i] - self.consumed[i] for i in todo]
        if max(new) <= 0:
            return
        if max(new) == 1:
            last = input_ids[:, -1].tolist()
            rows = {i: [last[i]] if k == 1 else [] for i, k in zip(todo, new)}
        else:
            cpu = input_ids.tolist()
            rows = {i: cpu[i][width - k:] if k > 0 else [] for i, k in zip(todo, new)}
        for i, toks in rows.items():
            self.consumed[i] += len(toks)
            for t in toks:
                q = self._queue[i]
                if q and q[0] == t:
                    q.pop(0)
                else:
                    q.clear()
                if t in self.eos_ids:
                    self.finished[i] = True
                    break
                m = self.matchers[i]
                if not m.consume_token(t):
                    self.finished[i] = True
                    self.errors[i] = m.get_error() or f"token {t} rejected"
                    break

    def _fits(self, i: int, token: int, budget: int) -> bool:
        """Whether row ``i`` still has a completion that fits in ``budget`` tokens after ``token``; the completion
        found is kept (``_path``) for the next step."""
        m = self.matchers[i]
        self._checked_at[i] = self.consumed[i]
        path = self._path[i]
        known = path[1] if path is not None and path[0] == self.consumed[i] else None
        if known is not None and known[:1] == [token]:
            rest = known[1:]  # the model follows the known completion: no need to walk again
        else:
            if m.validate_tokens([token]) != 1:
                return True  # not an allowed token (an all -inf row): nothing to check
            if known is not None and len(known) <= budget and self.closer.completes(m, [token, *known]):
                # A token inside a string or number (or any that keeps the structure) leaves the known completion
                # valid after it: one validation instead of a walk. It may not be the shortest completion, so
                # only a fit is taken from it; a miss walks.
                rest = known
            else:
                m.consume_token(token)
                try:
                    rest = self.closer.closing(m)
                finally:
                    m.rollback(1)
                if rest is None:
                    return False
        self._path[i] = (self.consumed[i] + 1, rest)
        self._close_len[i] = len(rest) + 1
        return len(rest) <= budget

    def _budget(self, live: list, out: torch.Tensor, forced: dict[int, list[int]]) -> None:
        for m, i in live:
            remaining = self.max_new_tokens - self.consumed[i]
            q = self._queue[i]
            if q and m.validate_tokens(q[:1]) != 1:
                q.clear()
            if not q:
                known = self._close_len[i]
                due = (known is None or remaining <= known + self.budget_window
                       or self.consumed[i] - self._checked_at[i] >= self.recheck_every)
                path = self._path[i]
                current = path[1] if path is not None and path[0] == self.consumed[i] else None
                if not due or self._fits(i, int(out[i].argmax()), remaining - 1):
                    continue
                if not current or m.validate_tokens(current[:1]) != 1:
                    current = self.closer.closing(m) or []
                q = self._queue[i] = list(current)
            if q:
                self.closed[i] = True
                forced[i] = q[:1]

    # -- step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        t0 = time.perf_counter()
        batch = input_ids.shape[0]
        if batch != len(self.matchers):
            raise ValueError(f"batch of {batch} rows, processor built for {len(self.matchers)}")
        self._advance(input_ids)
        live, eos_only = [], []
        for i, m in enumerate(self.matchers):
            if self.finished[i] or m.is_accepting() or m.is_stopped():
                self.bitmask[i] = self._eos_row
                eos_only.append(i)
            else:
                live.append((m, i))
        todo = self._greedy_rows(live, scores) if self.greedy else live
        if len(todo) > 1 and self._parallel(scores):
            self._llt.fill_next_token_bitmask_par(executor(), todo, self.bitmask)
        else:
            for m, i in todo:
                self._llt.fill_next_token_bitmask(m, self.bitmask, i)
        t1 = time.perf_counter()
        out = self._apply(scores)
        forced: dict[int, list[int]] = {i: self.eos_ids for i in eos_only}
        if self.max_new_tokens is not None:
            self._budget(live, out, forced)
        for i, toks in forced.items():
            # Forced rows get their token(s) at 0: an earlier processor (e.g. min_new_tokens) may have set -inf.
            out[i] = float("-inf")
            for t in toks:
                if t < out.shape[-1]:
                    out[i, t] = 0.0
        self.mask_us.append((t1 - t0) * 1e6)
        self.call_us.append((time.perf_counter() - t0) * 1e6)
        return out

    def _greedy_rows(self, live: list, scores: torch.Tensor) -> list:
        """Greedy fast path: a row whose arg-max token its matcher takes gets a mask of that token alone (the choice
        the full mask would lead to, for one validation instead of a mask). Returns the rows that need a mask."""
        top = scores.argmax(dim=-1).tolist()
        bits = self.bitmask.numpy()  # a view: numpy row writes cost a fraction of torch indexing from Python
        todo = []
        for m, i in live:
            t = top[i]
            if t < self.n_vocab and m.validate_tokens([t]) == 1:
                w, v = _mask_word(t)
                bits[i] = 0
                bits[i, w] = v
                self.greedy_hits += 1
            else:
                todo.append((m, i))
        return todo

    def _parallel(self, scores: torch.Tensor) -> bool:
        if self.parallel is not None:
            return self.parallel
        return scores.device.type != "cpu" or (os.cpu_count() or 1) > torch.get_num_threads()

    def _apply(self, scores: torch.FloatTensor) -> torch.FloatTensor:
        """``scores`` with every disallowed column at -inf (in place)."""
        device = scores.device
        n = min(self.n_vocab, scores.shape[-1])
        if device.type == "cpu" and scores.dtype in (torch.float32, torch.float64) and sys.byteorder == "little":
            bits = np.unpackbits(self.bitmask.numpy().view(np.uint8), axis=1, count=n, bitorder="little")
            view = scores.numpy()
            np.putmask(view[:, :n], bits == 0, -np.inf)
            if view.shape[1] > n:
                view[:, n:] = -np.inf
            return scores
        shifts = self._shifts.get(device)
        if shifts is None:
            shifts = self._shifts[device] = torch.arange(32, dtype=torch.int32, device=device)
        bm = self.bitmask.to(device, non_blocking=True)
        allowed = ((bm.unsqueeze(-1) >> shifts) & 1).view(bm.shape[0], -1)[:, :n].bool()
        scores[:, :n].masked_fill_(~allowed, float("-inf"))
        scores[:, n:] = float("-inf")
        return scores


# ---------------------------------------------------------------------------------------------------- generation


@dataclass
class GenerationResult:
    """Decoded completions (new tokens only, special tokens skipped), per-step mask timings (µs, see
    :class:`JsonSchemaLogitsProcessor`), wall seconds of the whole call, generated tokens (EOS / pad excluded), and
    per row (constrained only) the matcher error if any and whether the length budget steered it to a close."""

    texts: list[str]
    mask_us: list[float] = field(default_factory=list)
    call_us: list[float] = field(default_factory=list)
    seconds: float = 0.0
    new_tokens: int = 0
    errors: list[str | None] = field(default_factory=list)
    closed: list[bool] = field(default_factory=list)


@torch.no_grad()
def generate_json(
    model,
    tokenizer,
    prompts: list[str],
    schemas: list[dict] | None,
    max_new_tokens: int,
    batch_size: int = 8,
    constrained: bool = True,
    fixed_length: bool = False,
    stop_at_json_end: bool = True,
) -> GenerationResult:
    """Greedy, left-padded batched generation; with ``constrained`` each prompt's completion is held to its schema.
    ``stop_at_json_end``: an unconstrained row stops at its first complete JSON object (ml/dsl/stopping.py).

    ``fixed_length``: every batch runs exactly ``max_new_tokens`` steps (EOS does not stop generation; a constrained
    row emits EOS after its object, which decoding drops). For timing comparisons between the two modes."""
    from transformers import LogitsProcessorList

    if constrained and (schemas is None or len(schemas) != len(prompts)):
        raise ValueError("constrained generation needs one schema per prompt")
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    result = GenerationResult(texts=[])
    # fixed_length stops on an id past the logits width: no row ever emits it, so every batch runs max_new_tokens
    # steps. (eos_token_id=None would not do: generate fills None from model.generation_config.)
    stop_id = model.get_output_embeddings().weight.shape[0] if fixed_length else eos
    free_stop = stop_at_json_end and not constrained and not fixed_length
    t0 = time.perf_counter()
    for i, enc, width in left_padded_batches(tokenizer, prompts, batch_size, device):
        rows = enc["input_ids"].shape[0]
        processors = LogitsProcessorList()
        proc = None
        if constrained:
            proc = JsonSchemaLogitsProcessor(
                tokenizer, schemas[i : i + rows], [width] * rows, eos, max_new_tokens=max_new_tokens, greedy=True
            )
            processors.append(proc)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            top_k=None,
            top_p=None,
            temperature=None,
            logits_processor=processors,
            pad_token_id=pad,
            eos_token_id=stop_id,
            stopping_criteria=[json_end_stopping(tokenizer, width)] if free_stop else None,
        )
        special = {eos, pad}
        for row in gen[:, width:].tolist():
            kept = []
            for t in row:
                if t in special:
                    break
                kept.append(t)
            result.new_tokens += len(kept)
            result.texts.append(tokenizer.decode(kept, skip_special_tokens=True))
        if proc is not None:
            result.mask_us += proc.mask_us
            result.call_us += proc.call_us
            result.errors += proc.errors
            result.closed += proc.closed
    result.seconds = time.perf_counter() - t0
    return result
