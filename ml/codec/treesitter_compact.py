"""Compact mode of the tree-sitter codec: the tokens a model reads, close to the source's BPE length.

What compact mode leaves out is what the grammar (as seen in a corpus) implies; the tables that say so are
``treesitter_tables/<language>.json``, built by ``build_tables`` (``scripts/build_codec_tables.py``). A
table only decides what is *left out*: any tree encodes and decodes exactly with any table, a worse table
only gives longer sequences. Changing a table changes the format: ``format_version`` hashes it.

Within a named non-leaf node of type ``T`` the children are named children and, between them, *gaps*
(the runs of anonymous tokens: keywords, punctuation, plus any hidden text, see the module
``ml.codec.treesitter_codec``). A gap is keyed by ``(T, previous named child type or "^", next named
child type or "$")``.

* ``<N:T>`` opens a non-leaf node. When ``arity[T] == k`` the node holds exactly ``k`` named children and
  has no ``<close>``; ``<N:T> <var>`` opens one that is closed by ``<close>`` (any other count, or an end
  gap that must be written). Without an arity entry a node always ends with ``<close>``.
* a named leaf is ``<n:L> payload``; ``<n:L>`` alone when its text is ``const[L]`` (``this``, ``null``...);
  a bare ``payload`` when ``L == bare[(T, previous)]`` and the text has no whitespace. A bare payload
  never directly follows a payload-less ``<n:L>`` (that payload would be the leaf's own).
* a gap equal to ``runs[key]`` (default: empty) is left out; any other gap is written, ``<t:TEXT>`` per
  token, ``<empty>`` for an empty one.
* JavaScript ``<nl>``: a newline before the next leaf. A left-out gap before a named child is written
  before that child's ``<nl>``; a left-out end gap takes a ``<nl>`` before ``<close>`` as the newline
  before its first token. A gap whose newlines these two rules cannot place is written.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import tree_sitter

from ml.codec.base import DecodeError
from ml.codec.tokens import escape_payload, struct_name, unescape_payload

CLOSE = "<close>"
NL = "<nl>"
EMPTY = "<empty>"
VAR = "<var>"
START, END = "^", "$"
FORMAT = 2  # bump when the rules above change; the tables' hash is part of ``format_version`` too
TABLES_DIR = Path(__file__).with_name("treesitter_tables")
_WS = frozenset(b" \t\n\r\f\v")


class Tables:
    """The lookup tables of one language, keyed for the encoder and decoder."""

    def __init__(self, data: dict):
        self.data = data
        self.const = {k: v for k, v in data["const"].items()}
        self.arity = {k: int(v) for k, v in data["arity"].items()}
        self.bare = {tuple(k.split(" ")): v for k, v in data["bare"].items()}
        # runs as token tuples: the encoder compares its gap's tokens against them
        self.runs = {
            tuple(k.split(" ")): tuple("<t:" + struct_name(t) + ">" for t in v) for k, v in data["runs"].items()
        }
        self.run_texts = {k: tuple(unquote(t[3:-1]) for t in v) for k, v in self.runs.items()}
        self.const_open = {"<n:" + k + ">": v for k, v in self.const.items()}


@cache
def tables(language: str) -> Tables:
    path = TABLES_DIR / f"{language}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"const": {}, "arity": {}, "bare": {}, "runs": {}}
    return Tables(data)


@cache
def format_version(language: str) -> str:
    """Changes whenever compact tokens of ``language`` would: the rules' number and the tables' content."""
    blob = json.dumps(tables(language).data, sort_keys=True).encode()
    return f"{FORMAT}-{hashlib.sha256(blob).hexdigest()[:12]}"


def table_file(path: str) -> bool:
    """The half of a corpus the tables are built from (by a hash of the file's path); the other half is held out."""
    return hashlib.sha256(path.encode()).digest()[0] % 2 == 0


def _bare_safe(text: bytes) -> bool:
    return bool(text) and not any(b in _WS for b in text) and text.isascii()


# -- encoding -------------------------------------------------------------------------------------------


def encode(node: tree_sitter.Node, src: bytes, tab: Tables, newlines: bool, anon_cache: dict) -> list[str]:
    runs, bare, const, arity = tab.runs, tab.bare, tab.const, tab.arity
    const_open = tab.const_open
    toks: list[str] = []
    append = toks.append
    # one frame per open non-leaf node: [type, previous named child, gap tokens, gap newline flags,
    # named children so far, index of the opener token]
    frames: list[list] = []
    var_at: list[int] = []  # where a <var> goes: known only when the node ends
    cursor = node.walk()
    prev_end = -1

    def flush(frame: list, nxt: str, end: bool) -> None:
        items, nls = frame[2], frame[3]
        implied = runs.get((frame[0], frame[1], nxt), ())
        if tuple(items) == implied and (not nls or (end and nls == [0] and items)):
            if nls:
                append(NL)
        elif not items:
            append(EMPTY)
        elif not nls:
            toks.extend(items)
        else:
            for j, tok in enumerate(items):
                if j in nls:
                    append(NL)
                append(tok)
        frame[2], frame[3] = [], []

    while True:
        n = cursor.node
        start = n.start_byte
        nl = False
        frame = frames[-1] if frames else None
        if prev_end >= 0 and start > prev_end:
            gap = src[prev_end:start]
            if gap.strip():  # the text of hidden tokens: kept where it was, as a written gap token
                frame[2].append(_anon(gap, anon_cache))
            elif newlines and b"\n" in gap:
                nl = True
            prev_end = start
        if not n.is_named:
            if n.child_count:
                raise DecodeError(f"anonymous node {n.type!r} with children")
            end = n.end_byte
            if nl:
                frame[3].append(len(frame[2]))
            frame[2].append(_anon(src[start:end], anon_cache))
            prev_end = max(prev_end, end)
        else:
            ntype = n.type
            leaf = not n.child_count
            if frame is not None:
                flush(frame, ntype, False)
                if nl:
                    append(NL)
            if leaf:
                end = n.end_byte
                text = src[start:end]
                if (
                    frame is not None
                    and bare.get((frame[0], frame[1])) == ntype
                    and _bare_safe(text)
                    and not (toks and toks[-1] in const_open)
                ):
                    append(escape_payload(text.decode("ascii")))
                else:
                    append("<n:" + ntype + ">")
                    decoded = text.decode("utf-8", "surrogatepass")
                    if const.get(ntype) != decoded:
                        append(escape_payload(decoded))
                prev_end = max(prev_end, end)
            if frame is not None:
                frame[1] = ntype
                frame[4] += 1
            if not leaf:
                append("<N:" + ntype + ">")
                frames.append([ntype, START, [], [], 0, len(toks) - 1])
                cursor.goto_first_child()
                continue
        while not cursor.goto_next_sibling():
            if not frames:
                return _with_vars(toks, var_at)
            _end_node(frames.pop(), toks, runs, arity, var_at)
            cursor.goto_parent()
            if not frames:
                return _with_vars(toks, var_at)


def _with_vars(toks: list[str], var_at: list[int]) -> list[str]:
    """``toks`` with ``<var>`` at each index of ``var_at`` (indices into ``toks`` as it is)."""
    if not var_at:
        return toks
    out: list[str] = []
    last = 0
    for at in sorted(var_at):
        out += toks[last:at]
        out.append(VAR)
        last = at
    out += toks[last:]
    return out


def _anon(text: bytes, anon_cache: dict) -> str:
    tok = anon_cache.get(text)
    if tok is None:
        tok = "<t:" + struct_name(text.decode("utf-8", "surrogatepass")) + ">"
        anon_cache[text] = tok
    return tok


def _end_node(frame: list, toks: list[str], runs: dict, arity: dict, var_at: list[int]) -> None:
    ntype, prev, items, nls, count, opener = frame
    implied = runs.get((ntype, prev, END), ())
    omit = tuple(items) == implied and (not nls or (nls == [0] and items))
    k = arity.get(ntype)
    if k is not None and omit and not nls and count == k:
        return  # the decoder closes it after its k-th child
    if k is not None:
        var_at.append(opener + 1)
    if omit:
        if nls:
            toks.append(NL)
    elif not items:
        toks.append(EMPTY)
    else:
        for j, tok in enumerate(items):
            if j in nls:
                toks.append(NL)
            toks.append(tok)
    toks.append(CLOSE)


# -- decoding -------------------------------------------------------------------------------------------


def decode(tokens: list[str], tab: Tables, newlines: bool, contiguous: frozenset, line_comments: frozenset) -> str:
    runs, bare, const, arity = tab.run_texts, tab.bare, tab.const, tab.arity
    parts: list[str] = []
    types: list[str] = []  # open non-leaf node types (the separator rule reads them)
    # per open node: [previous named child, named children so far, arity or None, gap written, newline read in
    # the gap]
    frames: list[list] = []
    state = {"low": 0, "nl": False, "line": False, "leaf": False}

    def leaf(text: str, is_line_comment: bool = False) -> None:
        if state["leaf"]:
            if state["nl"] or state["line"]:
                parts.append("\n")
            else:
                low = state["low"]
                if not (low and types[low - 1] in contiguous):
                    parts.append(" ")
        parts.append(text)
        state["leaf"] = True
        state["nl"] = False
        state["line"] = is_line_comment
        state["low"] = len(types)

    def begin_child(sym: str) -> None:
        if not frames:
            return
        frame = frames[-1]
        if not frame[3]:
            for t in runs.get((types[-1], frame[0], sym), ()):
                leaf(t)
        if frame[4]:  # a newline read in this gap is the child's first leaf's, after the left-out run
            state["nl"], frame[4] = True, False
        frame[0] = sym
        frame[1] += 1
        frame[3] = False

    def end_node() -> None:
        frame = frames.pop()
        if frame[4]:
            state["nl"] = True
        if not frame[3]:
            for t in runs.get((types[-1], frame[0], END), ()):
                leaf(t)
        types.pop()
        state["low"] = min(state["low"], len(types))
        child_done()

    def child_done() -> None:
        if frames and frames[-1][2] is not None and frames[-1][1] >= frames[-1][2]:
            end_node()

    i, ntok, done = 0, len(tokens), False
    while i < ntok:
        tok = tokens[i]
        i += 1
        if not isinstance(tok, str):
            raise DecodeError(f"token {tok!r} is not a string")
        if done:
            raise DecodeError(f"token {tok!r} after the end of the tree")
        if not tok.startswith("<"):  # a bare named leaf
            if not frames:
                raise DecodeError(f"payload {tok!r} outside a node")
            ltype = bare.get((types[-1], frames[-1][0]))
            if ltype is None:
                raise DecodeError(f"payload {tok!r} where no leaf type is implied")
            begin_child(ltype)
            leaf(unescape_payload(tok), ltype in line_comments and (ltype != "comment" or tok.startswith("//")))
            child_done()
        elif tok.startswith("<N:") and tok.endswith(">"):
            ntype = tok[3:-1]
            begin_child(ntype)
            k = arity.get(ntype)
            if i < ntok and tokens[i] == VAR:
                i += 1
                k = None
            frames.append([START, 0, k, False, False])
            types.append(ntype)
            if k == 0:
                end_node()
        elif tok.startswith("<n:") and tok.endswith(">"):
            ltype = tok[3:-1]
            if i < ntok and isinstance(tokens[i], str) and not tokens[i].startswith("<"):
                text = unescape_payload(tokens[i])
                i += 1
            elif ltype in const:
                text = const[ltype]
            else:
                raise DecodeError(f"leaf {tok} without its text")
            begin_child(ltype)
            leaf(text, ltype in line_comments and (ltype != "comment" or text.startswith("//")))
            child_done()
        elif tok.startswith("<t:") and tok.endswith(">"):
            if not frames:
                raise DecodeError(f"{tok} outside a node")
            frame = frames[-1]
            frame[3] = True
            if frame[4]:
                state["nl"], frame[4] = True, False
            leaf(unquote(tok[3:-1]))
        elif tok == NL:
            if not newlines:
                raise DecodeError("<nl> in a language without newline tokens")
            if frames:
                frames[-1][4] = True
            else:
                state["nl"] = True
        elif tok == EMPTY:
            if not frames:
                raise DecodeError("<empty> outside a node")
            frames[-1][3] = True
        elif tok == CLOSE:
            if not frames or frames[-1][2] is not None:
                raise DecodeError("unexpected <close>")
            end_node()
        else:
            raise DecodeError(f"unexpected token {tok!r}")
        if not frames and state["leaf"]:
            done = True
    if frames:
        raise DecodeError("token sequence ends inside an unclosed node")
    if not state["leaf"]:
        raise DecodeError("empty token sequence")
    if state["line"]:
        parts.append("\n")
    return "".join(parts)


# -- building the tables --------------------------------------------------------------------------------


def build_tables(nodes: list[tuple[tree_sitter.Node, bytes]], min_count: int = 5) -> dict:
    """Tables from parsed units: per gap key its most frequent anonymous run, per (parent, previous) the most
    frequent leaf type, per leaf type its text when (nearly) always the same, per non-leaf type its most
    frequent named-child count when more than half of its nodes have it."""
    runs: dict = defaultdict(Counter)
    bare: dict = defaultdict(Counter)
    texts: dict = defaultdict(Counter)
    counts: dict = defaultdict(Counter)
    for root, src in nodes:
        stack = [root]
        while stack:
            n = stack.pop()
            if not n.child_count:
                if n.is_named:
                    texts[n.type][src[n.start_byte:n.end_byte].decode("utf-8", "replace")] += 1
                continue
            prev, run, named = START, [], 0
            for c in n.children:
                if c.is_named:
                    runs[(n.type, prev, c.type)][tuple(run)] += 1
                    if not c.child_count and _bare_safe(src[c.start_byte:c.end_byte]):
                        bare[(n.type, prev)][c.type] += 1
                    prev, run, named = c.type, [], named + 1
                    stack.append(c)
                else:
                    run.append(src[c.start_byte:c.end_byte].decode("utf-8", "replace"))
            runs[(n.type, prev, END)][tuple(run)] += 1
            counts[n.type][named] += 1

    def top(counter: Counter):
        (value, n), = counter.most_common(1)
        return value, n, sum(counter.values())

    out: dict = {"const": {}, "arity": {}, "bare": {}, "runs": {}}
    for key, c in sorted(runs.items()):
        run, n, total = top(c)
        if run and n >= min_count:
            out["runs"][" ".join(key)] = list(run)
    for key, c in sorted(bare.items()):
        ltype, n, total = top(c)
        if n >= min_count:
            out["bare"][" ".join(key)] = ltype
    for ltype, c in sorted(texts.items()):
        text, n, total = top(c)
        if n >= min_count and n >= 0.99 * total:
            out["const"][ltype] = text
    for ntype, c in sorted(counts.items()):
        k, n, total = top(c)
        if n >= min_count and 2 * n > total:
            out["arity"][ntype] = k
    return out
