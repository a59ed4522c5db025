"""Schema-constrained decoding of DSL query ASTs with llguidance.

The student reads a JSON Schema and a request and must emit one JSON object that validates against the schema.
:class:`JsonSchemaLogitsProcessor` keeps one ``llguidance.LLMatcher`` per batch row (rows may carry different
schemas) and masks the logits of each step to the tokens that keep the row's text a prefix of a valid document;
once a row's object is complete only EOS is allowed. :func:`generate_json` is greedy batched generation with it.

What llguidance needed (checked against llguidance 1.9.1, see ``tests/test_dsl_constrained.py``):

* no rewrite of the ``comparison`` def: llguidance intersects the sibling ``anyOf`` branches with the base
  ``properties`` (``value: {}``) and ``additionalProperties: false`` itself. A random walk over its token masks only
  ever produces documents that validate against the original schema, and the masks are identical to those of the
  hand-rewritten form (``anyOf`` of complete ``{op, field, value}`` objects).
* llguidance emits object properties in ``properties`` order (and rejects any other order), so
  :func:`decoding_schema` reorders every ``properties`` map to the training key order of ``ml.dsl.format``
  (``filter, sort, limit``; ``op, field, value``; ``op, args``; ``op, arg``; ``field, order``).
* ``x-guidance`` forces compact separators and no free whitespace, so that constrained output is byte-identical to
  ``ast_to_text`` (the default would allow whitespace between tokens).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from ml.dsl.format import _KEY_ORDER
from ml.dsl.stopping import json_end_stopping
from ml.evaluation.lm import left_padded_batches

# Compact JSON, exactly as ``ast_to_text`` writes it: no whitespace anywhere, "," between items, ":" after keys.
X_GUIDANCE = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
_RANK = {k: i for i, k in enumerate(_KEY_ORDER)}


# ---------------------------------------------------------------------------------------------------- schema


def _reorder_properties(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _reorder_properties(v) for k, v in node.items()}
        props = out.get("properties")
        if isinstance(props, dict) and all(isinstance(v, (dict, bool)) for v in props.values()):
            keys = sorted(props, key=lambda k: (_RANK.get(k, len(_RANK)), list(props).index(k)))
            out["properties"] = {k: props[k] for k in keys}
        return out
    if isinstance(node, list):
        return [_reorder_properties(x) for x in node]
    return node


def decoding_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema handed to llguidance: ``schema`` with every ``properties`` map in training key order and
    ``x-guidance`` set to compact, whitespace-free JSON. Accepts the same documents as ``schema``."""
    out = _reorder_properties(copy.deepcopy(schema))
    out["x-guidance"] = dict(X_GUIDANCE)
    return out


def _schema_key(schema: dict[str, Any] | str) -> str:
    return "lark:" + schema if isinstance(schema, str) else json.dumps(schema, sort_keys=True, ensure_ascii=False)


_GRAMMARS: dict[str, str] = {}


def grammar_for(schema: dict[str, Any] | str) -> str:
    """llguidance grammar of ``decoding_schema(schema)``, or of an llguidance Lark grammar given as a string (e.g.
    the srl step: tags around two JSON schemas), cached by content. Raises ``ValueError`` when llguidance rejects
    it."""
    import llguidance

    key = _schema_key(schema)
    if key not in _GRAMMARS:
        if isinstance(schema, str):
            grammar = llguidance.grammar_from("lark", schema)
        else:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(decoding_schema(schema))
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
        if is_error:
            raise ValueError(f"llguidance rejects the schema: {messages[0] if messages else '?'}")
        _GRAMMARS[key] = grammar
    return _GRAMMARS[key]


# ---------------------------------------------------------------------------------------------------- tokenizer


class _TokenizerState:
    """What llguidance keeps per HF tokenizer: its ``LLTokenizer``, the :class:`Closer` and one template matcher
    per schema (a fresh matcher costs milliseconds, a ``deep_copy`` of the template microseconds)."""

    max_templates = 256

    def __init__(self, size: int, lltok) -> None:
        self.size = size
        self.lltok = lltok
        self.closer: Closer | None = None
        self.templates: dict[str, Any] = {}


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state(tokenizer) -> _TokenizerState:
    import llguidance.hf

    hit = _STATES.get(tokenizer)
    if hit is None or hit.size != len(tokenizer):  # first use, or tokens were added since
        hit = _STATES[tokenizer] = _TokenizerState(len(tokenizer), llguidance.hf.from_tokenizer(tokenizer))
    return hit


def ll_tokenizer(tokenizer):
    """The ``llguidance.LLTokenizer`` of a HF fast tokenizer, built once per tokenizer object (rebuilt if tokens
    were added since)."""
    return _state(tokenizer).lltok


def closer(tokenizer) -> Closer:
    """The :class:`Closer` of a HF tokenizer (cached like :func:`ll_tokenizer`)."""
    st = _state(tokenizer)
    if st.closer is None:
        st.closer = Closer(st.lltok)
    return st.closer


def matcher(tokenizer, schema: dict[str, Any]):
    """A fresh ``LLMatcher`` for ``schema`` over ``tokenizer`` (a copy of a cached template; warnings not logged).
    Raises ``ValueError`` when llguidance rejects the schema."""
    import llguidance

    st = _state(tokenizer)
    key = _schema_key(schema)
    template = st.templates.get(key)
    if template is None:
        template = llguidance.LLMatcher(st.lltok, grammar_for(schema), log_level=0)
        if template.is_error():
            raise ValueError(f"llguidance rejects the schema: {template.get_error()}")
        if len(st.templates) >= st.max_templates:
            st.templates.pop(next(iter(st.templates)))
        st.templates[key] = template
    return template.deep_copy()


_EXECUTOR = None


def _executor():
    global _EXECUTOR
    if _EXECUTOR is None:
        import llguidance

        _EXECUTOR = llguidance.LLExecutor()
    return _EXECUTOR


# ---------------------------------------------------------------------------------------------------- closing

# Byte preference of the closing walk: close strings / objects / arrays first, then "eq" (an operator every field
# takes), "0" (the shortest number), then any other byte. A walk that picks the first allowed byte in this order
# ends a number at once, closes every container as soon as its schema lets it, and never opens an and/or/not node.
_CLOSE_ORDER = (b'"}],eq0123456789' + bytes(range(ord("a"), ord("z") + 1)) + bytes(range(ord("A"), ord("Z") + 1))
                + bytes(range(32, 127)) + bytes(range(256)))


class Closer:
    """Short completions of a matcher's current text: a greedy walk over single-byte tokens in ``_CLOSE_ORDER``
    (forced bytes taken in one go), undone afterwards. Used by the length budget of
    :class:`JsonSchemaLogitsProcessor`: ``{"filter":{"op":"lt","field":"year","value":18941894`` closes as ``}}``."""

    quick = 4  # the closers of _CLOSE_ORDER (after EOS) are tried one by one before falling back to the full mask

    def __init__(self, lltok) -> None:
        self.lltok = lltok
        byte_tokens: list[int] = []
        for b in dict.fromkeys(_CLOSE_ORDER):
            ids = lltok.tokenize_bytes(bytes([b]))
            if len(ids) == 1 and lltok.decode_bytes(ids) == bytes([b]):
                byte_tokens.append(ids[0])
        self.byte_tokens = np.array(byte_tokens, dtype=np.int64)
        self.eos = set(lltok.eos_tokens)
        self.eos_id = lltok.eos_tokens[0]
        self.quick_ids = [self.eos_id, *byte_tokens[: self.quick]]

    def _tokens(self, data: bytes) -> list[int]:
        if data.isascii():
            return self.lltok.greedy_tokenize(data.decode())  # much cheaper than the HF tokenizer round trip
        return self.lltok.tokenize_bytes(data)

    def _quick_after(self, m, prefix: list[int]) -> int | None:
        """EOS or the first closer of ``_CLOSE_ORDER`` that ``m`` takes after ``prefix`` (validated, not consumed);
        ``None`` when none does."""
        for t in self.quick_ids:
            if m.validate_tokens([*prefix, t]) == len(prefix) + 1:
                return t
        return None

    def _next_token(self, m) -> int | None:
        """The most preferred token ``m`` takes now (full mask), EOS excluded."""
        bits = np.frombuffer(m.compute_bitmask(), dtype=np.uint8)
        pref = self.byte_tokens
        ok = np.flatnonzero((bits[pref >> 3] >> (pref & 7)) & 1)
        if ok.size:
            return int(pref[ok[0]])
        # no single byte fits (a multi-byte token only): any allowed token
        for t in np.flatnonzero(np.unpackbits(bits, bitorder="little")).tolist():
            if t not in self.eos:
                return t
        return None

    def completes(self, m, ids: list[int]) -> bool:
        """Whether ``ids`` take ``m`` to a complete document: EOS is allowed after them. One ``validate_tokens``
        (``m`` is not touched), ~10 µs against several hundred for a :meth:`closing` walk."""
        if not ids:
            return m.is_accepting()  # a stopped matcher validates no further token, EOS included
        return m.validate_tokens([*ids, self.eos_id]) == len(ids) + 1

    def closing(self, m, max_tokens: int = 2048) -> list[int] | None:
        """Tokens that complete ``m``'s document (a greedy tokenization of the completion when the matcher takes
        it, else the tokens of the walk); ``m`` is left as it was. ``None`` when no completion was found within
        ``max_tokens``.

        Each step takes the forced bytes and the next preferred token in one consume: the quick candidates are
        validated after the forced tokens without consuming them (validation costs a few µs, a consume tens)."""
        walk: list[int] = []
        ok = True
        try:
            while not m.is_accepting():
                if m.is_stopped() or m.is_error() or len(walk) > max_tokens:
                    ok = False
                    break
                ff = m.compute_ff_bytes()
                ids = self._tokens(ff) if ff else []
                if ids and m.validate_tokens(ids) != len(ids):
                    ids = []
                t = self._quick_after(m, ids)
                if t is None:
                    if ids:
                        m.consume_tokens(ids)
                        walk += ids
                    t = self._next_token(m)
                    if t is None:
                        ok = m.is_accepting()
                        break
                    ids = []
                if t == self.eos_id:  # complete after the forced bytes
                    if ids:
                        m.consume_tokens(ids)
                        walk += ids
                    break
                ids.append(t)
                m.consume_tokens(ids)
                walk += ids
        finally:
            if walk:
                m.rollback(len(walk))
        if not ok:
            return None
        short = self._tokens(self.lltok.decode_bytes(walk))
        if len(short) < len(walk) and m.validate_tokens(short) == len(short):
            return short
        return walk


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
            self._llt.fill_next_token_bitmask_par(_executor(), todo, self.bitmask)
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
