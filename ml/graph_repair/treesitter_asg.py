"""Abstract syntax graphs of JavaScript and Java functions (tree-sitter), and the way back to source.

The graph has the shape of the Python one (``ml.graph_repair.asg.Asg``: nodes in pre-order, parents, fields,
dataflow), read off the unit's tree-sitter tree (``ml.codec.treesitter_codec.parse_unit``):

* one node per *named* tree-sitter node, its type as label (``binary_expression``, ``if_statement``);
* a named leaf whose text is not its type (an ``identifier``, a ``number``, a ``string_fragment``) gets one leaf
  child in field ``text``: ``id:TEXT`` under a type ending in ``identifier`` (the unit is alpha-renamed first, so
  bound names read ``id:var_0``), ``lit:TEXT`` otherwise (literals longer than 24 characters: ``lit:<long T>``);
  ``this``, ``true``, ``null`` are their type and need none;
* one leaf per *anonymous* token, ``tok:TEXT`` (``tok:+``, ``tok:return``, ``tok:(``). Operators and keywords a
  field holds (``operator``, ``kind``) carry that field and are what corruption touches; the others (punctuation,
  the keyword a statement type implies) are *scaffolding*: kept so that the source can be rebuilt without a
  printer per node type (tree-sitter ships none), never corrupted (``is_scaffold``);
* a child without a field has the field ``children`` (the key node-types.json uses); the root has ``""``;
* comments are left out (like a Python docstring).

Dataflow is an approximation (no scope analysis): from each renamed name's first occurrence (``id:var_i``) to
its later occurrences. ``to_code`` writes the leaves in order, separated as the tree-sitter codec does (nothing
inside strings and other contiguous nodes, a newline after a JavaScript statement or class field so that automatic
semicolon insertion sees it, a space elsewhere); ``is_valid``: that source parses as one function with no ERROR or
MISSING node (``parse_unit_wrapped``), into the same tree (types, tokens and fields; names and literals aside).
"""

from __future__ import annotations

import re
from functools import cache

from ml.codec.base import DecodeError
from ml.codec.treesitter_codec import COMMENTS, CONTIGUOUS, get_language, parse_unit_wrapped
from ml.graph_repair.asg import HOLE, MASK, UNK_IDENT, UNK_LITERAL, Asg, InvalidTree

__all__ = ["CHILDREN", "TEXT", "dataflow_of", "field_names", "from_code", "is_scaffold", "is_valid", "node_labels",
           "to_code"]

CHILDREN = "children"  # the field of a child that has none
TEXT = "text"  # the field of a named leaf's text
TOKEN = "tok:"
_MAX_LITERAL_CHARS = 24
_RENAMED = re.compile(r"id:var_\d+\Z")
# JavaScript nodes a newline must follow (automatic semicolon insertion ends them there): statements, declarations,
# class fields (`#a\n#b = 1`)
_LINE_ENDS = ("statement", "declaration", "field_definition")
# stand-ins for a long or unknown literal, by the type that holds it: text that parses as that type again
_LONG = {"number": "1" * 25, "decimal_integer_literal": "1" * 25, "hex_integer_literal": "0x" + "1" * 24,
         "octal_integer_literal": "0" + "1" * 24, "binary_integer_literal": "0b" + "1" * 24,
         "decimal_floating_point_literal": "1.5" + "0" * 23}
_UNK = {"number": "0", "decimal_integer_literal": "0", "hex_integer_literal": "0x0", "octal_integer_literal": "00",
        "binary_integer_literal": "0b0", "decimal_floating_point_literal": "0.5"}


def _payload_label(ntype: str, text: str) -> str:
    if ntype.endswith("identifier"):
        return f"id:{text}"
    return f"lit:{text}" if len(text) <= _MAX_LITERAL_CHARS else f"lit:<long {ntype}>"


def _strip_ws(data: bytes) -> bytes:
    return b"".join(data.split())


def from_code(code: str, language: str) -> Asg:
    """The graph of the unit in ``code`` (one function, method or arrow); ValueError (``DecodeError``) when it does
    not parse cleanly as one, or holds text no token covers (a Java text block's line continuation)."""
    node, src, _ = parse_unit_wrapped(code, language)
    comments = COMMENTS[language]
    g = Asg([], [], [])
    texts: list[bytes] = []
    skipped: list[tuple[int, int]] = []

    def add(label: str, parent: int, fld: str) -> int:
        g.labels.append(label)
        g.parents.append(parent)
        g.fields.append(fld)
        return len(g.labels) - 1

    stack = [(node, -1, "")]
    while stack:
        n, parent, fld = stack.pop()
        if n.is_named and n.type in comments:
            skipped.append((n.start_byte, n.end_byte))
            continue
        text = src[n.start_byte:n.end_byte]
        if not n.is_named:
            if n.child_count:
                raise DecodeError(f"anonymous node {n.type!r} with children")
            add(TOKEN + text.decode("utf-8", "surrogatepass"), parent, fld)
            texts.append(text)
            continue
        me = add(n.type, parent, fld)
        if n.child_count == 0:
            texts.append(text)
            if text.decode("utf-8", "surrogatepass") != n.type:
                add(_payload_label(n.type, text.decode("utf-8", "surrogatepass")), me, TEXT)
            continue
        kids = [(c, me, n.field_name_for_child(i) or CHILDREN) for i, c in enumerate(n.children)]
        stack.extend(reversed(kids))
    covered = bytearray(src[node.start_byte:node.end_byte])
    for a, b in sorted(skipped, reverse=True):
        del covered[a - node.start_byte:b - node.start_byte]
    if _strip_ws(bytes(covered)) != _strip_ws(b"".join(texts)):
        raise DecodeError("the unit holds text that no token covers (hidden tokens)")
    g.dataflow = dataflow_of(g.labels, g.parents, g.fields)
    return g


def dataflow_of(labels: list[str], parents: list[int], fields: list[str]) -> list[tuple[int, int]]:
    """First occurrence -> each later occurrence of the same renamed name (``id:var_i``), in pre-order: the renamer
    gives each bound name of the unit its own placeholder, so this is def-use by name, not by scope (a documented
    approximation: a shadowing inner binding shares its outer name's edges)."""
    first: dict[str, int] = {}
    edges = []
    for i, label in enumerate(labels):
        if _RENAMED.match(label):
            if label in first:
                edges.append((first[label], i))
            else:
                first[label] = i
    return edges


def _leaf_text(g: Asg, kids: list[list[int]], i: int) -> str:
    label = g.labels[i]
    if label in (MASK, HOLE):
        raise InvalidTree(f"node {i} is still {label}")
    if label.startswith(TOKEN):
        return label[len(TOKEN):]
    p = g.parents[i]
    ptype = g.labels[p] if p >= 0 else ""
    if label == UNK_IDENT:
        return "unk_name"
    if label.startswith("id:"):
        return label[3:]
    if label == UNK_LITERAL:
        return _UNK.get(ptype, "_")
    if label.startswith("lit:<long "):
        return _LONG.get(ptype, "_" * (_MAX_LITERAL_CHARS + 1))
    if label.startswith("lit:"):
        return label[4:]
    return label  # a named leaf whose text is its type (this, true, null)


def to_code(g: Asg, language: str) -> str:
    """Source text of the graph's unit; InvalidTree when a node is still unknown or a payload is not a leaf."""
    if not g.labels or g.parents[0] != -1:
        raise InvalidTree("no root")
    kids = g.children()
    contiguous = CONTIGUOUS[language]
    newlines = language == "javascript"
    leaves: list[tuple[str, tuple[int, ...]]] = []  # text and the ancestors (root first)
    ends_statement: list[bool] = []
    stack: list[tuple[int, tuple[int, ...]]] = [(0, ())]
    while stack:
        i, above = stack.pop()
        label = g.labels[i]
        if label.startswith(("id:", "lit:", TOKEN)) and kids[i] or label in (MASK, HOLE):
            raise InvalidTree(f"node {i} ({label}) is a leaf label with children, or unknown")
        if not kids[i]:
            leaves.append((_leaf_text(g, kids, i), above))
            ends_statement.append(False)
            continue
        stack.extend((c, (*above, i)) for c in reversed(kids[i]))
    # a node's last leaf: the one whose ancestors include it, latest in order
    last: dict[int, int] = {}
    for k, (_, above) in enumerate(leaves):
        for a in above:
            last[a] = k
    for node, k in last.items():
        if newlines and g.labels[node].endswith(_LINE_ENDS):
            ends_statement[k] = True
    parts: list[str] = []
    for k, (text, above) in enumerate(leaves):
        if k:
            prev = leaves[k - 1][1]
            common = 0
            while common < min(len(prev), len(above)) and prev[common] == above[common]:
                common += 1
            if common and g.labels[above[common - 1]] in contiguous:
                pass
            else:
                parts.append("\n" if ends_statement[k - 1] else " ")
        parts.append(text)
    return "".join(parts)


def is_valid(g: Asg, language: str) -> bool:
    """The graph rebuilds to source that tree-sitter parses as one function without ERROR or MISSING nodes
    (``parse_unit_wrapped`` refuses ``has_error``), into this very tree: the same types, tokens and fields, names and
    literals aside. (The source is the leaves' text alone, so without the second half an inner node of the wrong
    type, ``while_statement`` over an ``if``'s children, would pass.)"""
    try:
        back = from_code(to_code(g, language), language)
    except (InvalidTree, DecodeError, ValueError, RecursionError):
        return False
    return _structure(back) == _structure(g)


def _structure(g: Asg) -> tuple:
    return tuple(x[:3] if x.startswith(("id:", "lit:")) else x for x in g.labels), tuple(g.parents), tuple(g.fields)


def is_scaffold(g: Asg, i: int) -> bool:
    """An anonymous token no field holds (punctuation, the keyword a node type implies): never corrupted."""
    return g.labels[i].startswith(TOKEN) and g.fields[i] == CHILDREN


@cache
def node_labels(language: str) -> tuple[str, ...]:
    """Every visible named node type and every anonymous token (``tok:``) of the grammar, sorted."""
    lang = get_language(language)
    out = set()
    for k in range(lang.node_kind_count):
        if not lang.node_kind_is_visible(k):
            continue
        name = lang.node_kind_for_id(k)
        out.add(name if lang.node_kind_is_named(k) else TOKEN + name)
    return tuple(sorted(out))


@cache
def field_names(language: str) -> tuple[str, ...]:
    """The grammar's field names, then ``children`` and ``text`` (the graph's own)."""
    lang = get_language(language)
    names = sorted({lang.field_name_for_id(k) for k in range(1, lang.field_count + 1)})
    if CHILDREN in names or TEXT in names:
        raise RuntimeError(f"{language}: a grammar field is named like the graph's own {CHILDREN!r}/{TEXT!r}")
    return (*names, CHILDREN, TEXT)
