"""Byte automata of the tree-sitter grammar's leaf payloads (over the *escaped* payload text, as the model writes it).

Every lexer has ``start``, ``step(state, byte)`` (None: refused), ``accepting(state, text)`` (``text`` None: the
state alone, used to prefer pieces that finish a payload), ``cont_ok(state, text)`` (a length cap),
``accepts_text(text)`` and ``sig_of(text)`` (the (first, last) token classes the leaf gives its parent). States are
small and hashable: they are part of the mask key.
"""

from __future__ import annotations

from ml.codec.tokens import escape_payload, unescape_payload
from ml.constrained.treesitter_productions import FIRST_CLASSES, OTHER, RESERVED, first_class, last_class

PLAIN = (OTHER, OTHER)
# Where the text stands: at a boundary, in a bare payload, after a space or <sep> (a bare payload must start), in a
# raw payload (after <n:TYPE>).
M_BOUND, M_PLAIN, M_PEND, M_RAW = range(4)
SP, LT = 0x20, 0x3C
_ALPHA = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_$")
_DIGIT = frozenset(b"0123456789")
# Words of a quoted string: no quote of any kind, no backslash (escapes are leaves of their own), no "$" / braces
# (template substitutions), no "<" (the escape of a payload).
FRAGMENT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _.,:;!?-+*/=()[]#@%&|^~")
# A line comment: any printable ASCII but "<" and backslash.
COMMENT = frozenset(range(0x20, 0x7F)) - frozenset(b"<\\")


class _Lexer:
    def accepts_text(self, text: str) -> bool:
        esc = escape_payload(text).encode()
        st = self.start
        for c in esc:
            st = self.step(st, c)
            if st is None:
                return False
        return self.accepting(st, esc)

    def sig_of(self, text: str) -> tuple:
        return PLAIN

    def cont_ok(self, state, text: bytes) -> bool:
        return len(text) < self.MAX


class Ident(_Lexer):
    MAX = 40
    start = 0

    def __init__(self, reserved: frozenset):
        self.reserved = frozenset(w.encode() for w in reserved)

    def step(self, st, c):
        if c in _ALPHA or (st and c in _DIGIT):
            return 1
        return None

    def accepting(self, st, text):
        return st == 1 and (text is None or bytes(text) not in self.reserved)


class Number(_Lexer):
    MAX = 9
    start = 0

    def step(self, st, c):
        if st == 0:
            return "z" if c == 0x30 else "d" if c in _DIGIT else None
        return "d" if st == "d" and c in _DIGIT else None

    def accepting(self, st, text):
        return st in ("z", "d")


class Words(_Lexer):
    MAX = 160

    def __init__(self, prefix: str):
        self.prefix = prefix.encode()
        self.chars = COMMENT if prefix else FRAGMENT
        self.start = 0

    def step(self, st, c):
        p = len(self.prefix)
        if st < p:
            return st + 1 if c == self.prefix[st] else None
        return p + 1 if c in self.chars else None

    def accepting(self, st, text):
        p = len(self.prefix)
        return st > p or (p > 0 and st == p)


class TextSet(_Lexer):
    """Only the (escaped) texts seen in the context: a byte trie, state = node id."""

    start = 0

    def __init__(self, texts):
        self.edges: list[dict] = [{}]
        self.final: list[bool] = [False]
        for t in texts:
            n = 0
            for c in t.encode():
                nxt = self.edges[n].get(c)
                if nxt is None:
                    self.edges.append({})
                    self.final.append(False)
                    nxt = self.edges[n][c] = len(self.edges) - 1
                n = nxt
            self.final[n] = True

    def step(self, st, c):
        return self.edges[st].get(c)

    def accepting(self, st, text):
        return self.final[st]

    def cont_ok(self, state, text):
        return True

    def sig_of(self, text: str) -> tuple:
        raw = unescape_payload(text)
        return first_class(raw), last_class(raw)


def lexer_for(language: str, kind: tuple, sigs: frozenset):
    """The lexer of a payload kind (``treesitter_productions.payload_kinds``) whose texts have a class pair in
    ``sigs``; None when no text can."""
    name = kind[0]
    if name == "set":
        texts = [t for t in kind[1] if (first_class(unescape_payload(t)), last_class(unescape_payload(t))) in sigs]
        return TextSet(texts) if texts else None
    if PLAIN not in sigs:
        return None
    if name == "ident":
        return Ident(FIRST_CLASSES if kind[1] == "starts" else RESERVED[language])
    if name == "number":
        return Number()
    return Words(kind[1])


def simulate_piece(piece: bytes, mode, lex, lstate, cont_ok, start_lex, can_end=False, after_bare=None):
    """(lexer, state) after ``piece`` continues the payload being written (or starts the bare payload a boundary
    allows); None when it cannot. A payload ends at a structural token, or (a bare one) at a space that starts a
    piece and the next bare payload (GPT-2 style pieces carry their leading space); no other space is allowed
    outside raw payloads."""
    if mode == M_PLAIN and piece[0] == SP:
        if not can_end or after_bare is None:
            return None
        if len(piece) == 1:
            return after_bare, None
        lex, st, piece = after_bare, after_bare.start, piece[1:]
    elif mode in (M_BOUND, M_PEND):
        if start_lex is None or piece[0] == SP:
            return None
        lex, st = start_lex, start_lex.start
    else:
        if not cont_ok:
            return None
        st = lstate
    for c in piece:
        if c == SP and mode != M_RAW:
            return None
        st = lex.step(st, c)
        if st is None:
            return None
    return lex, st
