"""The productions a tree-sitter slice's grammar automaton admits, read from compact (format 2) encodings of real units.

A node's *items* are the codec tokens it owns, in order, with each child reduced to one symbol: ``("v",)`` for
``<var>``, ``("t", TOKEN)`` for a written gap token, ``("e",)`` ``<empty>``, ``("l",)`` ``<nl>``, ``("c",)``
``<close>``, ``("N", C, first, last)`` a non-leaf child and ``("n", C, first, last, opening)`` a named leaf. A
child's ``first`` / ``last`` are the classes of the first and last source token it decodes to (``"{"``,
``"function"``, ``";"``..., else ``"*"``): the automaton composes a child only where a real tree had a child of the
same type *and* classes, which is what keeps JavaScript's automatic semicolons (a statement that ends without ``;``
is followed by a newline or ``}``) and statement starts (``{``, ``function``) the way real code has them.
``opening`` is the node's first source token when the node itself wrote it before any child (a string's quote),
the context of a leaf's payload. A production ends with ``("$", first, last)``: the node's own classes.

A node type's productions are the set of item sequences seen for it; ``ROOT`` holds the unit's own node. Leaf
payloads: :func:`payload_kinds` decides per leaf type whether its text is an identifier, a number, quoted-string
words, a line comment, or only one of the texts seen (the fallback, sound by construction).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path
from urllib.parse import unquote

from ml.codec import treesitter_compact as compact
from ml.codec.tokens import escape_payload

TABLES_DIR = Path(__file__).with_name("treesitter_productions")
ROOT = "ROOT"
OTHER = "*"
# Source tokens whose place matters across a child boundary (first / last token of a child).
FIRST_CLASSES = frozenset(("{", "(", "[", "`", "function", "class", "let", "async", "+", "-", "++", "--", "/", "<"))
LAST_CLASSES = frozenset((";", "}"))
IDENT_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,39}\Z")
NUMBER_RE = re.compile(r"(0|[1-9][0-9]{0,8})\Z")
QUOTES = frozenset(('"', "'", "`"))
JS_RESERVED = frozenset(
    "break case catch class const continue debugger default delete do else export extends finally for function if "
    "import in instanceof new return super switch this throw try typeof var void while with yield let static enum "
    "await async implements package protected interface private public null true false".split()
)
JAVA_RESERVED = frozenset(
    "abstract assert boolean break byte case catch char class const continue default do double else enum extends "
    "final finally float for goto if implements import instanceof int interface long native new package private "
    "protected public return short static strictfp super switch synchronized this throw throws transient try void "
    "volatile while true false null var yield record sealed permits non-sealed when module open exports".split()
)
RESERVED = {"javascript": JS_RESERVED, "java": JAVA_RESERVED}
KEY_NAMES = frozenset(("property_identifier",))  # JavaScript property names: a keyword is a name here


def first_class(text: str) -> str:
    return text if text in FIRST_CLASSES else OTHER


def last_class(text: str) -> str:
    return text if text in LAST_CLASSES else OTHER


class _Frame:
    __slots__ = ("type", "prev", "count", "k", "written", "items", "first", "last", "opening", "slot")

    def __init__(self, ntype, k, slot):
        self.type, self.prev, self.count, self.k, self.written = ntype, compact.START, 0, k, False
        self.items: list = []
        self.first = self.last = self.opening = None
        self.slot = slot  # where this node's item sits in its parent's items


def analyse(tokens: list[str], tab: compact.Tables, out: dict, leaves: dict) -> None:
    """Add the productions of one unit's compact ``tokens`` to ``out`` (type -> Counter of item tuples) and its
    leaf texts to ``leaves`` ((leaf type, parent type, opening) -> Counter of escaped payloads). Follows
    ``treesitter_compact.decode`` step for step (same left-out runs), so the classes are those of the decoded source."""
    runs, bare, const, arity = tab.run_texts, tab.bare, tab.const, tab.arity
    root = _Frame(ROOT, 1, None)
    frames = [root]

    def leaf_text(text: str) -> None:
        for f in frames:
            if f.first is None:
                f.first = text
                if f.count == 0 and f.type != ROOT:
                    f.opening = text
            f.last = text

    def begin_child(sym: str) -> None:
        f = frames[-1]
        if not f.written:
            for t in runs.get((f.type, f.prev, sym), ()):
                leaf_text(t)
        f.prev, f.count, f.written = sym, f.count + 1, False

    def end_node() -> None:
        f = frames.pop()
        if not f.written:
            for t in runs.get((f.type, f.prev, compact.END), ()):
                leaf_text(t)
        sig = (first_class(f.first or ""), last_class(f.last or ""))
        out[f.type][(*f.items, ("$", *sig))] += 1
        parent = frames[-1]
        parent.items[f.slot] = ("N", f.type, *sig)
        child_done()

    def child_done() -> None:
        f = frames[-1]
        if f.k is not None and f.count >= f.k and f.type != ROOT:
            end_node()

    def add_leaf(ltype: str, payload: str | None) -> None:
        f = frames[-1]
        text = const[ltype] if payload is None else _unescape(payload)
        begin_child(ltype)
        opening = f.opening
        leaf_text(text)
        esc = escape_payload(text)
        leaves[(ltype, f.type, opening)][esc] += 1
        f.items.append(("n", ltype, first_class(text), last_class(text), opening))
        child_done()

    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        i += 1
        f = frames[-1]
        if not tok.startswith("<"):
            add_leaf(bare[(f.type, f.prev)], tok)
        elif tok.startswith("<N:"):
            ntype = tok[3:-1]
            begin_child(ntype)
            k = arity.get(ntype)
            f.items.append(None)
            child = _Frame(ntype, k, len(f.items) - 1)
            frames.append(child)
            if i < n and tokens[i] == compact.VAR:
                i += 1
                child.k = None
                child.items.append(("v",))
            elif k == 0:
                end_node()
        elif tok.startswith("<n:"):
            payload = None
            if i < n and not tokens[i].startswith("<"):
                payload = tokens[i]
                i += 1
            add_leaf(tok[3:-1], payload)
        elif tok.startswith("<t:"):
            f.written = True
            f.items.append(("t", tok))
            leaf_text(unquote(tok[3:-1]))
        elif tok == compact.NL:
            f.items.append(("l",))
        elif tok == compact.EMPTY:
            f.written = True
            f.items.append(("e",))
        elif tok == compact.CLOSE:
            f.items.append(("c",))
            end_node()
        else:
            raise ValueError(f"unexpected token {tok!r}")
    if len(frames) != 1 or len(root.items) != 1:
        raise ValueError("not one whole unit")
    out[ROOT][(*root.items, ("$", *root.items[0][2:4]))] += 1


def _unescape(payload: str) -> str:
    from ml.codec.tokens import unescape_payload

    return unescape_payload(payload)


def build(language: str, codes: list[str]) -> dict:
    """The production table of ``codes`` (units of ``language``; those that do not encode are skipped): what
    ``TreeSitterGrammar`` reads. JSON-ready: ``productions`` type -> item sequences, ``payloads`` per leaf context
    its payload kind (only a ``set`` keeps its texts)."""
    from ml.codec.treesitter_codec import TreeSitterCodec

    codec = TreeSitterCodec(language)
    tab = compact.tables(language)
    out: dict = defaultdict(Counter)
    leaves: dict = defaultdict(Counter)
    used = 0
    for code in codes:
        try:
            tokens = codec.encode(code, "compact")
        except ValueError:
            continue
        analyse(tokens, tab, out, leaves)
        used += 1
    kinds = payload_kinds(language, list(leaves.items()))
    return {
        "language": language,
        "format_version": compact.format_version(language),
        "units": used,
        "productions": {t: [list(map(list, items)) for items in sorted(c, key=repr)] for t, c in sorted(out.items())},
        "payloads": [[list(ctx), kind[0], sorted(kind[1]) if kind[0] == "set" else kind[1]]
                     for ctx, kind in sorted(kinds.items(), key=repr)],
    }


@cache
def load(language: str) -> dict:
    """The committed production table of ``language`` (``scripts/build_grammar_tables.py``); it must match the
    codec's current compact format."""
    path = TABLES_DIR / f"{language}.json"
    data = json.loads(path.read_text())
    if data["format_version"] != compact.format_version(language):
        raise ValueError(f"{path} was built for compact format {data['format_version']}, the codec writes "
                         f"{compact.format_version(language)}: rebuild it with scripts/build_grammar_tables.py")
    return data


def payload_kinds(language: str, leaves: list) -> dict:
    """Per leaf context (leaf type, parent type, opening): ``("ident", "reserved" | "starts")`` (the words it may not
    be), ``("number", None)``, ``("words", prefix)`` or ``("set", texts)``. A leaf type is an identifier / number
    when (nearly) every text seen is one (and not a reserved word); quoted strings' fragments and line comments take
    words (no quotes, backslashes, ``$``, braces); any other context only the texts seen in it."""
    by_type: dict = defaultdict(Counter)
    reserved = RESERVED[language]
    leaves = [(tuple(k), v) for k, v in leaves]
    for (ltype, _parent, _opening), texts in leaves:
        for t in texts:
            kind = "reserved" if t in reserved else "ident" if IDENT_RE.match(t) else "number" if NUMBER_RE.match(
                t) else "other"
            by_type[ltype][kind] += 1
    comments = {"javascript": ("comment",), "java": ("line_comment",)}[language]
    out = {}
    for (ltype, parent, opening), texts in leaves:
        c = by_type[ltype]
        total = sum(c.values())
        if ltype in comments:
            kind = ("words", "//")
        elif ltype == "string_fragment" and opening in QUOTES:
            kind = ("words", "")
        elif c["ident"] + (c["reserved"] if ltype in KEY_NAMES else 0) >= 0.98 * total:
            # a type whose texts are keywords (null, void) keeps its texts; a property name may be a keyword (a.default)
            # but not one that decides how a statement starts
            kind = ("ident", "starts" if ltype in KEY_NAMES else "reserved")
        elif c["number"] >= 0.98 * total:
            kind = ("number", None)
        else:
            kind = ("set", frozenset(texts))
        out[(ltype, parent, opening)] = kind
    return out


class ProductionGraph:
    """All productions of all node types as one graph: ``edges[n]`` item -> node, ``ends[n]`` class pairs a node
    may end with there. Most types get a prefix tree of their productions (only sequences seen); a *list* type
    (some node with ``LIST_MIN`` children of one type or more, all children separated alike: blocks, argument
    lists, arrays...) gets one
    state per (first two items, items since the last child), so that its children repeat in any order seen between
    neighbours: a block is any chain of statements where each adjacent pair (with the whole gap between them:
    newlines, written tokens, which decide the left-out ones) was seen. (A
    node with a fixed arity and no ``<var>`` keeps its prefix tree: it closes after exactly that many children.)"""

    LIST_MIN = 4

    def __init__(self, productions: dict, tab: compact.Tables, comments: frozenset):
        self.edges: list[dict] = []
        self.ends: list[set] = []
        self.root: dict[str, int] = {}
        arity = tab.arity
        self.list_types = {t for t, seqs in productions.items() if t != ROOT and any(
            _repeats(seq) >= self.LIST_MIN for seq in seqs)
            and len({g for seq in seqs for g in _separators(t, seq, tab, comments)}) <= 1}
        for ntype, seqs in productions.items():
            r = self.root[ntype] = self._new()
            states = {((), None): r}
            for seq in seqs:
                n = r
                items = [tuple(item) for item in seq[:-1]]
                # an arity type's nodes without <var> close after exactly k children: those stay a prefix tree
                loop = ntype in self.list_types and (ntype not in arity or items[:1] == [("v",)])
                last_child = 0
                for i, key in enumerate(items):
                    if key[0] in ("N", "n"):
                        last_child = i
                    nxt = self.edges[n].get(key)
                    if nxt is None:
                        if loop:
                            skey = (tuple(items[: min(i + 1, 2)]), tuple(items[last_child: i + 1]))
                            nxt = states.get(skey)
                            if nxt is None:
                                nxt = states[skey] = self._new()
                        else:
                            nxt = self._new()
                        self.edges[n][key] = nxt
                    n = nxt
                self.ends[n].add(tuple(seq[-1][1:]))

    def _new(self) -> int:
        self.edges.append({})
        self.ends.append(set())
        return len(self.edges) - 1


def _repeats(seq: list) -> int:
    """How often the most frequent child type occurs in one production."""
    counts = Counter(item[1] for item in seq if item[0] in ("N", "n"))
    return max(counts.values(), default=0)


def _separators(ntype: str, seq: list, tab: compact.Tables, comments: frozenset) -> set:
    """The source text between each two adjacent children of one production (gaps next to a comment aside). A type
    whose children are all separated alike (``,`` in argument lists, nothing between statements) is a list; one
    with several separators (``for (a; b; c)``, operators) keeps its prefix tree."""
    out, prev, gap, written = set(), None, [], False
    for item in seq[:-1]:
        k = item[0]
        if k in ("N", "n"):
            if prev is not None and prev not in comments and item[1] not in comments:
                out.add(tuple(gap) if written else tab.run_texts.get((ntype, prev, item[1]), ()))
            prev, gap, written = item[1], [], False
        elif k == "t":
            gap.append(unquote(item[1][3:-1]))
            written = True
        elif k == "e":
            written = True
    return out
