"""Abstract syntax graphs of Python functions, and the way back to source.

A graph is the function's AST in pre-order: one node per AST node (its type: ``BinOp``, ``Add``, ``arguments``),
one leaf per identifier (``id:var_0``) and per literal (``lit:1``, ``lit:'x'``). Expression contexts are not nodes
(the parser infers them again). Edges are typed:

* ``child``: parent -> child, with the parent's field carried on the child (``fields[i]``);
* ``sibling``: consecutive children of one parent, in field then list order (execution order for statements
  and the evaluation order of most expressions);
* ``dataflow``: each binding of a name (an assignment target, a parameter, a def or import name) to the later
  loads of that name. The function is alpha-renamed first, so a ``var_i`` is one resolved binding scope-wise
  (``ml.renaming.python_rename``): the edges follow that scope analysis, in source order (no kill analysis).

The model-facing edge list adds the reverse of each edge as its own type, so messages flow both ways.
``to_code`` rebuilds source from a graph; ``is_valid`` says whether that source compiles.
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass, field
from functools import cache

from ml.codec.python_ast import asdl_table

__all__ = [
    "EDGE_TYPES",
    "TARGET_FIELDS",
    "Asg",
    "InvalidTree",
    "dataflow_of",
    "from_code",
    "is_valid",
    "literal_label",
    "required_fields",
    "to_code",
]

MASK = "<mask>"  # absorbing state: a node whose label is unknown, its children kept
HOLE = "<hole>"  # a deleted subtree's place: label unknown, children gone
NONE = "<none>"  # a None element of a list (``Dict.keys`` for ``**x``, ``arguments.kw_defaults``)
UNK_IDENT = "id:<unk>"
UNK_LITERAL = "lit:<unk>"
EDGE_TYPES = ("child", "parent", "next_sibling", "prev_sibling", "dataflow", "dataflow_back")
_MAX_LITERAL_CHARS = 24
# Int fields at their usual value are left out (the rebuild fills the default), as the compact codec does.
_INT_DEFAULTS = {("AnnAssign", "simple"): 1, ("comprehension", "is_async"): 0,
                 ("FormattedValue", "conversion"): -1, ("ImportFrom", "level"): 0}
# Fields whose expressions are assignment or deletion targets (the parser's Store / Del contexts).
TARGET_FIELDS = frozenset({("Assign", "targets"), ("AugAssign", "target"), ("AnnAssign", "target"),
                           ("For", "target"), ("AsyncFor", "target"), ("comprehension", "target"),
                           ("withitem", "optional_vars"), ("NamedExpr", "target"), ("Delete", "targets")})
_BINDING_PARENTS = {"arg": "arg", "FunctionDef": "name", "AsyncFunctionDef": "name", "ClassDef": "name",
                    "ExceptHandler": "name", "alias": "asname", "MatchAs": "name", "MatchStar": "name"}


_NAMED_LITERALS = {"Ellipsis": ..., "inf": float("inf"), "-inf": float("-inf"), "nan": float("nan"),
                   "infj": complex("infj"), "nanj": complex("nanj")}


class InvalidTree(ValueError):
    """A graph that is not a well-formed Python AST (a missing field, a leaf where a node belongs, ...)."""


@cache
def table() -> dict[str, tuple[str, tuple[tuple[str, str, str], ...]]]:
    return {name: spec for name, spec in asdl_table().items() if spec[0] != "expr_context"}


def required_fields(label: str) -> list[str]:
    """The fields a node of this type must have, in ASDL order (int fields have defaults; contexts are inferred)."""
    spec = table().get(label)
    if spec is None:
        return []
    return [f for f, t, q in spec[1] if q == "" and t not in ("int", "string", "expr_context")]


@dataclass
class Asg:
    """One function's graph, nodes in pre-order (a node's children follow it, in field then list order)."""

    labels: list[str]
    parents: list[int]  # -1 for the root
    fields: list[str]  # the parent's field this node fills ("" for the root)
    dataflow: list[tuple[int, int]] = field(default_factory=list)  # (binding leaf, load leaf)

    def __len__(self) -> int:
        return len(self.labels)

    def children(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in self.labels]
        for i, p in enumerate(self.parents):
            if p >= 0:
                kids[p].append(i)
        return kids

    def edges(self) -> dict[str, list[tuple[int, int]]]:
        """Edges by type, both directions."""
        out: dict[str, list[tuple[int, int]]] = {t: [] for t in EDGE_TYPES}
        for i, p in enumerate(self.parents):
            if p >= 0:
                out["child"].append((p, i))
                out["parent"].append((i, p))
        for kids in self.children():
            for a, b in zip(kids, kids[1:]):
                out["next_sibling"].append((a, b))
                out["prev_sibling"].append((b, a))
        for d, u in self.dataflow:
            out["dataflow"].append((d, u))
            out["dataflow_back"].append((u, d))
        return out

    def key(self) -> tuple:
        """Equal keys <=> equal trees (labels, fields and shape); dataflow is derived, not compared."""
        return tuple(self.labels), tuple(self.parents), tuple(self.fields)


def literal_label(value) -> str:
    text = repr(value)
    if len(text) > _MAX_LITERAL_CHARS:
        return f"lit:<long {type(value).__name__}>"
    return f"lit:{text}"


def _literal_value(label: str):
    text = label[4:]
    if text.startswith("<long "):
        # a stand-in long enough to get the same label back
        filler = "_" * _MAX_LITERAL_CHARS
        return {"str": filler, "bytes": filler.encode(), "int": 10**_MAX_LITERAL_CHARS}.get(text[6:-1], filler)
    if text == "<unk>":
        return "<unk>"  # a str: it stands where any literal may, f-string parts included
    if text in _NAMED_LITERALS:
        return _NAMED_LITERALS[text]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise InvalidTree(f"not a literal: {label!r}") from exc


def from_code(code: str) -> Asg:
    """The graph of the (first) function in ``code``, its docstring left out; SyntaxError when it does not parse,
    ValueError when there is no function or only a docstring."""
    tree = ast.parse(code)
    root = next((n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)), None)
    if root is None:
        raise ValueError("no function definition in the unit")
    body = root.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(
        body[0].value.value, str
    ):
        if len(body) == 1:
            raise ValueError("the function is only a docstring")
        root.body = body[1:]  # the docstring is prose, not structure
    g = Asg([], [], [])

    def leaf(label: str, parent: int, fld: str) -> int:
        g.labels.append(label)
        g.parents.append(parent)
        g.fields.append(fld)
        return len(g.labels) - 1

    def walk(node: ast.AST, parent: int, fld: str) -> None:
        name = type(node).__name__
        me = leaf(name, parent, fld)
        for fname, ftype, qual in table()[name][1]:
            value = getattr(node, fname, None)
            if ftype in ("expr_context", "string") or (value is None and ftype != "constant"):
                continue
            if ftype == "int":
                if _INT_DEFAULTS.get((name, fname)) != value:
                    leaf(literal_label(value), me, fname)
            elif ftype == "identifier":
                for ident in value if qual == "*" else [value]:
                    leaf(f"id:{ident}", me, fname)
            elif ftype == "constant":
                leaf(literal_label(value), me, fname)
            elif qual == "*":
                for item in value:
                    if item is None:
                        leaf(NONE, me, fname)
                    else:
                        walk(item, me, fname)
            else:
                walk(value, me, fname)

    walk(root, -1, "")
    g.dataflow = dataflow_of(g.labels, g.parents, g.fields)
    return g


def dataflow_of(labels: list[str], parents: list[int], fields: list[str]) -> list[tuple[int, int]]:
    """Binding -> later load edges between identifier leaves, read off the tree itself (so a corrupted tree gets
    the edges its own names give, and a ``<mask>``ed name none). A ``Name`` binds where the parser would give it a
    Store/Del context: an assignment, loop, ``with``, walrus or ``del`` target, through Tuple/List/Starred."""
    bindings: dict[str, list[int]] = {}
    loads: list[tuple[str, int]] = []
    for i, label in enumerate(labels):
        if not label.startswith("id:") or parents[i] < 0:
            continue
        p = parents[i]
        if fields[i] == "id" and labels[p] in ("Name", MASK):
            node, up = p, parents[p]
            binds = False
            while up >= 0:
                if (labels[up], fields[node]) in TARGET_FIELDS:
                    binds = True
                    break
                if labels[up] not in ("Tuple", "List", "Starred"):
                    break
                node, up = up, parents[up]
            (bindings.setdefault(label, []).append(i) if binds else loads.append((label, i)))
        elif _BINDING_PARENTS.get(labels[p]) == fields[i]:
            bindings.setdefault(label, []).append(i)
    return sorted((d, u) for label, u in loads for d in bindings.get(label, ()) if d < u)


def _build(g: Asg, kids: list[list[int]], i: int) -> ast.AST | None:
    label = g.labels[i]
    if label == NONE:
        return None
    spec = table().get(label)
    if spec is None:
        raise InvalidTree(f"node {i}: {label!r} is not a node type")
    by_field: dict[str, list[int]] = {}
    for c in kids[i]:
        by_field.setdefault(g.fields[c], []).append(c)
    known = {f for f, _, _ in spec[1]}
    if extra := set(by_field) - known:
        raise InvalidTree(f"node {i} ({label}) has no field {sorted(extra)}")
    values = {}
    for fname, ftype, qual in spec[1]:
        got = by_field.get(fname, [])
        if ftype == "expr_context":
            values[fname] = ast.Load()
            continue
        if qual != "*" and len(got) > 1:
            raise InvalidTree(f"node {i} ({label}): {len(got)} children for single field {fname}")
        items = [_value(g, kids, c, ftype) for c in got]
        if qual == "*":
            values[fname] = items
        elif items:
            values[fname] = items[0]
        elif qual == "?" or ftype == "string":
            values[fname] = None
        elif ftype == "int":
            values[fname] = _INT_DEFAULTS.get((label, fname), 0)
        else:
            raise InvalidTree(f"node {i} ({label}) lacks its required field {fname}")
    return getattr(ast, label)(**values)


def _value(g: Asg, kids: list[list[int]], i: int, ftype: str):
    label = g.labels[i]
    if ftype == "identifier":
        if not label.startswith("id:") or kids[i]:
            raise InvalidTree(f"node {i}: an identifier belongs here, not {label!r}")
        return "unk_name" if label == UNK_IDENT else label[3:]
    if ftype in ("constant", "int"):
        if not label.startswith("lit:") or kids[i]:
            raise InvalidTree(f"node {i}: a literal belongs here, not {label!r}")
        value = _literal_value(label)
        if ftype == "int" and type(value) is not int:
            raise InvalidTree(f"node {i}: an int belongs here, not {label!r}")
        return value
    if label.startswith(("id:", "lit:")):
        raise InvalidTree(f"node {i}: a {ftype} node belongs here, not {label!r}")
    node = _build(g, kids, i)
    if node is not None and table()[label][0] != ftype:
        raise InvalidTree(f"node {i}: {label} is a {table()[label][0]}, the field wants a {ftype}")
    return node


def to_code(g: Asg) -> str:
    """Source text of the graph's function; InvalidTree when the graph is not a well-formed AST."""
    if not g.labels or g.parents[0] != -1:
        raise InvalidTree("no root")
    kids = g.children()
    root = _build(g, kids, 0)
    if not isinstance(root, ast.FunctionDef | ast.AsyncFunctionDef):
        raise InvalidTree(f"the root is {g.labels[0]}, not a function definition")
    module = ast.fix_missing_locations(ast.Module(body=[root], type_ignores=[]))
    try:
        return ast.unparse(module)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:  # KeyError: a non-operator in an op
        raise InvalidTree(f"unparse failed: {exc}") from exc


def is_valid(g: Asg) -> bool:
    """The graph rebuilds to source that compiles (CPython's own checks: targets, loops, scopes, ...)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # `x is 1` compiles with a SyntaxWarning: valid, and not ours to print
            compile(to_code(g), "<repair>", "exec", dont_inherit=True)
    except (InvalidTree, SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return False
    return True
