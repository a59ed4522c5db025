"""Short completions of a partial JSON document under an llguidance matcher: the length budget of
:class:`ml.dsl.constrained.JsonSchemaLogitsProcessor` asks :class:`Closer` whether (and how) a row can still
close its object in the tokens it has left."""

from __future__ import annotations

import numpy as np

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
