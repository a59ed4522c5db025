"""Level 1 constraints: which labels a node may take, from Python's ASDL and the rules CPython's parser and
compiler add.

``Vocabulary`` maps labels to ids (every ASDL node type, then the frequent identifiers and literals of the
training graphs). ``Grammar.allowed(tree, i)`` is the mask for node ``i`` of a tree whose other labels are known or
``<mask>``/``<hole>``:

* ASDL: the label is a member of the category of the parent's field (``BinOp.op`` -> an operator, ``Name.id`` ->
  an identifier); when the parent is unknown, of any field of that name. A node that kept its children must be a
  type with exactly those fields available and every required one present; a hole (children gone) may be any
  member, its children are inserted after (``ml.graph_repair.edits``).
* Compiler rules: assignment and deletion targets (through Tuple/List/Starred), Starred only where it may stand,
  ``break``/``continue`` inside a loop, ``return``/``yield`` in a function (not a class body or comprehension),
  ``await`` and async statements in an async function (no async generators), slices only as a subscript, walrus
  targets that are names and no walrus in a comprehension, f-string parts, the int fields' legal values,
  identifiers that are names where a name must be, ``from . import`` with a module or a level, no ``nonlocal`` in
  the outermost function, no ``None`` list element where the list cannot hold one; a hole never becomes a type
  with a list that may not be empty (an ``if`` needs a body).

Masks are cached per context (parent, field, children's fields and the enclosing scope facts). The decoder
(``ml.graph_repair.decoding.Decoder``) adds the one rule that needs the siblings: no two parameters alike.
"""

from __future__ import annotations

import keyword
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ml.graph_repair.asg import HOLE, MASK, NONE, TARGET_FIELDS, UNK_IDENT, UNK_LITERAL, Asg, table

PAD, END = "<pad>", "<end>"
SPECIALS = (PAD, MASK, HOLE, END, NONE, UNK_IDENT, UNK_LITERAL)
_STORE_FIELDS = TARGET_FIELDS
_SIMPLE_TARGET = {("AugAssign", "target"), ("AnnAssign", "target")}
_STOREABLE = frozenset(("Name", "Attribute", "Subscript", "Tuple", "List", "Starred"))
_CTX_PASSING = frozenset(("Tuple", "List", "Starred"))
_LOOPS = frozenset(("For", "While", "AsyncFor"))
_FUNCTIONS = frozenset(("FunctionDef", "AsyncFunctionDef", "Lambda"))
_COMPREHENSIONS = frozenset(("ListComp", "SetComp", "DictComp", "GeneratorExp"))
_NEEDS_FUNCTION = frozenset(("Return", "Yield", "YieldFrom"))
_NEEDS_ASYNC = frozenset(("Await", "AsyncFor", "AsyncWith"))
_NONE_LISTS = {("Dict", "keys"), ("arguments", "kw_defaults")}
_DOTTED_IDENT_FIELDS = {("alias", "name"), ("ImportFrom", "module")}
# List fields that may not be empty (CPython rejects the empty form): a hole's expansion cannot give them
# elements, so a hole never becomes one of these types.
_NONEMPTY_LISTS = {("If", "body"), ("While", "body"), ("For", "body"), ("AsyncFor", "body"), ("With", "items"),
                   ("With", "body"), ("AsyncWith", "items"), ("AsyncWith", "body"), ("Try", "body"),
                   ("TryStar", "body"), ("FunctionDef", "body"), ("AsyncFunctionDef", "body"), ("ClassDef", "body"),
                   ("ExceptHandler", "body"), ("Delete", "targets"), ("Assign", "targets"), ("Global", "names"),
                   ("Nonlocal", "names"), ("Import", "names"), ("ImportFrom", "names"), ("BoolOp", "values"),
                   ("Compare", "ops"), ("Compare", "comparators"), ("ListComp", "generators"),
                   ("SetComp", "generators"), ("DictComp", "generators"), ("GeneratorExp", "generators"),
                   ("Match", "cases"), ("match_case", "body")}
_INT_VALUES = {("FormattedValue", "conversion"): (-1, 97, 114, 115), ("ImportFrom", "level"): None,
               ("AnnAssign", "simple"): (0, 1), ("comprehension", "is_async"): (0, 1)}


# every value an int field may take must be sayable, however rare: f-string conversions, import levels, flags
_INT_FIELD_LITERALS = ("lit:-1", "lit:0", "lit:1", "lit:2", "lit:3", "lit:97", "lit:114", "lit:115")
INT_FIELD_LITERALS = _INT_FIELD_LITERALS


def is_name(label: str) -> bool:
    """An ``id:`` label that Python accepts as a name (not dotted, not a keyword)."""
    text = label[3:]
    return text.isidentifier() and not keyword.iskeyword(text)


class Vocabulary:
    """Specials, every node type of the language (for Python the ASDL types and the int fields' values), then
    identifiers and literals seen at least ``min_count`` times. ``language`` says which graph
    backend its labels belong to."""

    def __init__(self, labels: Sequence[str], language: str = "python") -> None:
        self.language = language
        self.labels = list(labels)
        self.index = {label: i for i, label in enumerate(self.labels)}
        if len(self.index) != len(self.labels):
            raise ValueError("duplicate labels in the vocabulary")

    @classmethod
    def build(cls, graphs: Iterable[Sequence[str]], max_size: int = 4000, min_count: int = 2,
              language: str = "python", node_labels: Sequence[str] | None = None) -> Vocabulary:
        """``node_labels``: the language's (``GraphBackend.node_labels``); None: Python's."""
        counts = Counter(label for labels in graphs for label in labels if label.startswith(("id:", "lit:")))
        fixed = [*SPECIALS, *(node_labels if node_labels is not None else (*sorted(table()), *_INT_FIELD_LITERALS))]
        room = max(0, max_size - len(fixed))
        frequent = [label for label, n in counts.most_common(room) if n >= min_count and label not in fixed]
        return cls(fixed + sorted(frequent), language)

    def __len__(self) -> int:
        return len(self.labels)

    def id(self, label: str) -> int:
        if label in self.index:
            return self.index[label]
        return self.index[UNK_IDENT if label.startswith("id:") else UNK_LITERAL]

    def normalize(self, label: str) -> str:
        """The label as the vocabulary can say it (rare identifiers and literals become their ``<unk>``)."""
        return self.labels[self.id(label)]


@dataclass(frozen=True)
class _Context:
    parent: str | None  # None: unknown (masked) parent
    field: str
    # (field, what fills it: "identifier" | "constant" | a node category | "node" (some category) | "none" |
    # "?" unknown) of each child;
    # None: a hole, its children are to be inserted
    child_fields: frozenset[tuple[str, str]] | None
    store: bool
    simple_target: bool
    in_loop: bool
    function: str | None  # nearest enclosing def/lambda/class label, None when unknown
    in_comprehension: bool
    outermost: bool  # the nearest function is the graph's root
    under_fstring: bool


class Grammar:
    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        n = len(vocab)
        self._types: dict[str, torch.Tensor] = {}
        for name, (category, _) in table().items():
            self._types.setdefault(category, torch.zeros(n, dtype=torch.bool))[vocab.index[name]] = True
        labels = vocab.labels
        self._idents = torch.tensor([label.startswith("id:") for label in labels])
        self._names = torch.tensor([label.startswith("id:") and (is_name(label) or label == UNK_IDENT)
                                    for label in labels])
        self._literals = torch.tensor([label.startswith("lit:") for label in labels])
        strings = ("lit:'", 'lit:"', "lit:<long str>")
        self._str_literals = torch.tensor([label.startswith(strings) or label == UNK_LITERAL for label in labels])
        self._int_literal = {lab: i for i, lab in enumerate(labels) if lab.startswith("lit:") and _int(lab) is not None}
        self._field_types: dict[str, set[tuple[str, str]]] = {}
        for name, (_, fields) in table().items():
            for fname, ftype, _q in fields:
                self._field_types.setdefault(fname, set()).add((name, ftype))
        self._cache: dict[_Context, torch.Tensor] = {}
        self._required = {name: {f for f, t, q in fields if q == "" and t not in ("int", "string", "expr_context")}
                          for name, (_, fields) in table().items()}
        self._fields = {name: {f for f, t, _ in fields if t != "expr_context"} for name, (_, fields) in table().items()}
        self._field_type = {name: {f: t for f, t, _ in fields} for name, (_, fields) in table().items()}
        self._nonempty = {name: {f for f in self._fields[name] if (name, f) in _NONEMPTY_LISTS} for name in table()}

    # -- the per-node context ------------------------------------------------------------------------------
    def context(self, g: Asg, i: int, kids: list[list[int]] | None = None) -> _Context:
        kids = kids if kids is not None else g.children()
        p = g.parents[i]
        parent = None if p < 0 or g.labels[p] in (MASK, HOLE) else g.labels[p]
        fld = g.fields[i]
        is_hole = g.labels[i] == HOLE
        child_fields = None if is_hole else frozenset((g.fields[c], _filler(g.labels[c], bool(kids[c])))
                                                      for c in kids[i])
        store = simple = False
        node, up = i, p
        while up >= 0:  # a target, or an element of a Tuple/List/Starred that is one
            key = (g.labels[up], g.fields[node])
            if key in _STORE_FIELDS:
                store, simple = True, key in _SIMPLE_TARGET and node == i
                break
            if g.labels[up] not in _CTX_PASSING:
                break
            node, up = up, g.parents[up]
        in_loop = in_comp = False
        function = None
        node, up = i, p
        while up >= 0:
            label = g.labels[up]
            if label in (MASK, HOLE):  # an unknown ancestor: the scope facts stay the cautious ones
                break
            if label in _LOOPS and g.fields[node] == "body":
                in_loop = True
            if label in _COMPREHENSIONS:
                in_comp = True
            if (label in _FUNCTIONS or label == "ClassDef") and g.fields[node] == "body":
                function = label  # defaults, decorators, bases and annotations belong to the enclosing scope
                break
            node, up = up, g.parents[up]
        outermost = up == 0
        under_fstring = parent == "JoinedStr" or (parent == "Constant" and p >= 0 and g.parents[p] >= 0
                                                  and g.labels[g.parents[p]] == "JoinedStr")
        return _Context(parent, fld, child_fields, store, simple, in_loop, function, in_comp, outermost, under_fstring)

    # -- the mask ------------------------------------------------------------------------------------------
    def allowed(self, g: Asg, i: int, kids: list[list[int]] | None = None) -> torch.Tensor:
        ctx = self.context(g, i, kids)
        mask = self._cache.get(ctx)
        if mask is None:
            mask = self._cache[ctx] = self._mask(ctx)
        return mask

    def _slot_types(self, ctx: _Context) -> set[tuple[str, str]]:
        if ctx.field == "":
            return {("", "stmt")}
        if ctx.parent is not None:
            spec = {f: t for f, t, _ in table()[ctx.parent][1]}
            return {(ctx.parent, spec[ctx.field])} if ctx.field in spec else set()
        return self._field_types.get(ctx.field, set())

    def _mask(self, ctx: _Context) -> torch.Tensor:
        n = len(self.vocab)
        mask = torch.zeros(n, dtype=torch.bool)
        for parent, ftype in self._slot_types(ctx):
            if ftype == "identifier":
                mask |= self._idents if (parent, ctx.field) in _DOTTED_IDENT_FIELDS else self._names
            elif ftype == "constant":
                mask |= self._str_literals if ctx.under_fstring else self._literals
            elif ftype == "int":
                legal = _INT_VALUES.get((parent, ctx.field), (0, 1))
                for label, i in self._int_literal.items():
                    if legal is None or _int(label) in legal:
                        mask[i] = True
            elif ftype in self._types:
                mask |= self._types[ftype]
            if (parent, ctx.field) in _NONE_LISTS or (parent is None and ctx.field in ("keys", "kw_defaults")):
                mask[self.vocab.index[NONE]] = True
        if ctx.field == "":
            mask = torch.zeros(n, dtype=torch.bool)
            for name in ("FunctionDef", "AsyncFunctionDef"):
                mask[self.vocab.index[name]] = True
        for name, i in ((name, self.vocab.index[name]) for name in table()):
            if mask[i] and not self._type_fits(name, ctx):
                mask[i] = False
        if ctx.child_fields:  # kept children: only a type can have them
            mask &= ~(self._idents | self._literals)
            mask[self.vocab.index[NONE]] = False
        return mask

    def _type_fits(self, name: str, ctx: _Context) -> bool:
        if ctx.child_fields is None:
            if any((name, f) in _NONEMPTY_LISTS for f in self._fields[name]):
                return False
        else:
            names = {f for f, _ in ctx.child_fields}
            if not (names <= self._fields[name] and self._required[name] | self._nonempty[name] <= names):
                return False
            types = self._field_type[name]
            for f, filler in ctx.child_fields:
                want = types[f]
                if not (filler in ("?", want) or (filler == "constant" and want == "int")
                        or (filler == "node" and want not in ("identifier", "constant", "int", "string"))
                        or (filler == "none" and (name, f) in _NONE_LISTS)):
                    return False
        if ctx.store and name not in (_STOREABLE - {"Tuple", "List", "Starred"} if ctx.simple_target else _STOREABLE):
            return False
        if name == "Slice" and ctx.field != "slice":
            return False
        starred_ok = ctx.field in ("elts", "args", "bases") and not (ctx.store and ctx.field != "elts")
        if name == "Starred" and not starred_ok:
            return False
        if ctx.parent == "NamedExpr" and ctx.field == "target" and name != "Name":
            return False
        if name == "ImportFrom" and not {f for f, _ in ctx.child_fields or ()} & {"module", "level"}:
            return False  # `from  import x`
        if name in ("Yield", "YieldFrom") and ctx.function == "AsyncFunctionDef":
            return False  # an async generator may not `return x`, and `yield from` is refused outright
        if name == "NamedExpr" and ctx.in_comprehension:  # iterables and iteration variables may not be rebound
            return False
        if name == "TryStar":  # its handlers must all name a type: not checked here, so never predicted
            return False
        if ctx.under_fstring and ctx.parent == "JoinedStr" and name not in ("Constant", "FormattedValue"):
            return False
        if name in ("Break", "Continue") and not ctx.in_loop:
            return False
        if name in _NEEDS_FUNCTION and (ctx.function not in _FUNCTIONS - {"Lambda"} if name == "Return"
                                        else ctx.function not in _FUNCTIONS or ctx.in_comprehension):
            return False
        if name in _NEEDS_ASYNC and (ctx.function != "AsyncFunctionDef" or ctx.in_comprehension):
            return False
        return not (name == "Nonlocal" and ctx.outermost)


def _filler(label: str, has_children: bool) -> str:
    if label == MASK and has_children:
        return "node"  # unknown, but a node: it has children, so no identifier or literal
    if label.startswith("id:"):
        return "identifier"
    if label.startswith("lit:"):
        return "constant"
    if label == NONE:
        return "none"
    spec = table().get(label)
    return spec[0] if spec else "?"


def _int(label: str) -> int | None:
    text = label[4:]
    return int(text) if text.lstrip("-").isdigit() else None
