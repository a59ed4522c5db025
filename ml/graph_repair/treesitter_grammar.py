"""Label masks for tree-sitter graphs (``ml.graph_repair.treesitter_asg``), from a slot table per grammar.

The installed grammars ship no ``node-types.json`` (neither wheel nor sdist of tree-sitter-javascript 0.25 /
tree-sitter-java 0.23), so the table is read off parsed functions, as the codec's compact tables are
(``scripts/build_graph_grammar.py`` over half of the default corpus, by ``table_file``; the other half stays
held out) and committed in ``treesitter_grammar/<language>.json``:

* ``slots``: for a (parent type, field), the labels seen there (``id:*`` / ``lit:*`` for any name / literal);
* ``fields``: the fields each type has been seen with; ``required``: the fields every instance of a type has,
  once each, in order (what a hole of that type is expanded to, ``ml.graph_repair.edits``).

So that the table generalizes past the corpus, a slot seen with three or more members of a category gets all of
them. JavaScript's grammar names its categories (supertypes: ``expression``, ``statement``, ``pattern``...); Java
0.23 tells the runtime none, so its expressions are what the operands of a binary expression have been, and its
statements what a block has held.

``TreeSitterGrammar.allowed(tree, i)`` is the mask: the slot's labels when the parent is known (the union over
every parent with that field when it is not); a node that kept children only a type seen with those fields, each
holding labels its slot has held; a hole a type its expansion can build; a root only a function type. A repaired
tree is still judged by re-parsing.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from ml.codec.treesitter_codec import UNIT_TYPES, get_language
from ml.graph_repair.asg import HOLE, MASK, Asg
from ml.graph_repair.treesitter_asg import CHILDREN, TEXT, TOKEN, is_scaffold

__all__ = ["TABLES_DIR", "TreeSitterGrammar", "build_tables", "grammar_tables", "required_fields", "substitutes"]

TABLES_DIR = Path(__file__).with_name("treesitter_grammar")
ANY_NAME, ANY_LITERAL = "id:*", "lit:*"
_SUPERTYPE_MIN = 3  # members of a category seen in a slot before the slot takes them all
# slots whose labels stand for a category where the grammar names none (Java 0.23)
_CATEGORY_SLOTS = {"java": ((("binary_expression", "left"), ("binary_expression", "right")),
                            (("block", "children"),))}


def _slot_label(label: str) -> str:
    return ANY_NAME if label.startswith("id:") else ANY_LITERAL if label.startswith("lit:") else label


def build_tables(graphs: Iterable[Asg]) -> dict:
    """The slot table of clean graphs (see the module doc)."""
    slots: dict[str, set[str]] = defaultdict(set)
    fields: dict[str, set[str]] = defaultdict(set)
    orders: dict[str, Counter] = defaultdict(Counter)
    for g in graphs:
        kids = g.children()
        for i, label in enumerate(g.labels):
            if label.startswith(("id:", "lit:", TOKEN)):
                continue
            p = g.parents[i]
            slots[f"{g.labels[p] if p >= 0 else ''} {g.fields[i]}"].add(label)
            seen = [g.fields[c] for c in kids[i]]
            fields[label].update(seen)
            orders[label][tuple(seen)] += 1
            for c in kids[i]:
                if g.labels[c].startswith(("id:", "lit:", TOKEN)):
                    slots[f"{label} {g.fields[c]}"].add(_slot_label(g.labels[c]))
    required = {}
    for label, counter in orders.items():
        always = set.intersection(*({f for f in seen if seen.count(f) == 1 and f != CHILDREN} for seen in counter))
        common = counter.most_common(1)[0][0]
        required[label] = [f for f in common if f in always]
    return {"slots": {k: sorted(v) for k, v in sorted(slots.items())},
            "fields": {k: sorted(v) for k, v in sorted(fields.items())},
            "required": dict(sorted(required.items()))}


@dataclass(frozen=True)
class Tables:
    slots: dict[tuple[str, str], frozenset[str]]
    fields: dict[str, frozenset[str]]
    required: dict[str, tuple[str, ...]]
    by_field: dict[str, frozenset[str]]  # field -> labels of every slot with that field


def _supertype_members(language: str) -> list[frozenset[str]]:
    lang = get_language(language)
    supertypes = set(lang.supertypes)  # (node_kind_is_supertype says True of every kind in py-tree-sitter 0.26)

    def flat(kind: int) -> set[str]:
        out = set()
        for sub in lang.subtypes(kind):
            out |= flat(sub) if sub in supertypes else {lang.node_kind_for_id(sub)}
        return out

    return [frozenset(flat(s)) for s in supertypes]


@cache
def grammar_tables(language: str) -> Tables:
    data = json.loads((TABLES_DIR / f"{language}.json").read_text())
    supers = _supertype_members(language) + [
        frozenset().union(*(data["slots"].get(f"{p} {f}", ()) for p, f in anchors)) - {ANY_NAME, ANY_LITERAL}
        for anchors in _CATEGORY_SLOTS.get(language, ())]
    slots = {}
    for key, labels in data["slots"].items():
        parent, fld = key.split(" ")
        grown = set(labels)
        for members in supers:
            if len(members & grown) >= _SUPERTYPE_MIN:
                grown |= members
        slots[(parent, fld)] = frozenset(grown)
    by_field: dict[str, set[str]] = defaultdict(set)
    for (_, fld), labels in slots.items():
        by_field[fld] |= labels
    return Tables(slots, {k: frozenset(v) for k, v in data["fields"].items()},
                  {k: tuple(v) for k, v in data["required"].items()}, {k: frozenset(v) for k, v in by_field.items()})


def required_fields(label: str, language: str) -> list[str]:
    return list(grammar_tables(language).required.get(label, ()))


def _fits(tab: Tables, name: str, children: frozenset[tuple[str, str]]) -> bool:
    """``name`` can hold these (field, label) children: its slots have held each, and each always-present field is
    there."""
    fields = {f for f, _ in children}
    return all(child in tab.slots.get((name, f), ()) for f, child in children) and set(
        tab.required.get(name, ())) <= fields


def substitutes(g: Asg, kids: list[list[int]], i: int, language: str) -> list[str]:
    """Other labels node ``i`` could take with its children kept: another name of the function, another literal
    of its type in the function, an operator its slot has held, a type its slot has held that holds these children."""
    label, p = g.labels[i], g.parents[i]
    if is_scaffold(g, i):
        return []
    if label.startswith("id:"):
        return sorted({x for x in g.labels if x.startswith("id:") and x != label})
    if label.startswith("lit:"):
        ptype = g.labels[p]
        return sorted({g.labels[j] for j in range(len(g)) if g.labels[j].startswith("lit:") and g.labels[j] != label
                       and g.parents[j] >= 0 and g.labels[g.parents[j]] == ptype})
    tab = grammar_tables(language)
    options = tab.slots.get((g.labels[p] if p >= 0 else "", g.fields[i]), frozenset())
    children = frozenset((g.fields[c], _slot_label(g.labels[c])) for c in kids[i])
    if label.startswith(TOKEN):
        return sorted(x for x in options if x.startswith(TOKEN) and x != label)
    return sorted(x for x in options if x != label and not x.startswith((TOKEN, "id:", "lit:"))
                  and x in tab.fields and _fits(tab, x, children))


@dataclass(frozen=True)
class _Context:
    parent: str | None  # None: unknown parent (or the root)
    field: str
    # (field, label; None when unknown) of each kept child; None: a hole (its children are to be inserted)
    children: frozenset[tuple[str, str | None]] | None


class TreeSitterGrammar:
    """The mask for node ``i`` of a tree whose other labels are known or ``<mask>``/``<hole>``."""

    def __init__(self, vocab, language: str) -> None:
        self.vocab, self.language = vocab, language
        self.tables = grammar_tables(language)
        labels = vocab.labels
        n = len(labels)
        self._names = torch.tensor([x.startswith("id:") for x in labels])
        self._literals = torch.tensor([x.startswith("lit:") for x in labels])
        self._roots = torch.zeros(n, dtype=torch.bool)
        for name in UNIT_TYPES[language]:
            if name in vocab.index:
                self._roots[vocab.index[name]] = True
        self._cache: dict[_Context, torch.Tensor] = {}

    def context(self, g, i: int, kids) -> _Context:
        p = g.parents[i]
        parent = None if p < 0 or g.labels[p] in (MASK, HOLE) else g.labels[p]
        children = None if g.labels[i] == HOLE else frozenset(
            (g.fields[c], None if g.labels[c] in (MASK, HOLE) else _slot_label(g.labels[c])) for c in kids[i])
        return _Context(parent, g.fields[i], children)

    def allowed(self, g, i: int, kids=None) -> torch.Tensor:
        ctx = self.context(g, i, kids if kids is not None else g.children())
        mask = self._cache.get(ctx)
        if mask is None:
            mask = self._cache[ctx] = self._mask(ctx)
        return mask

    def _mask(self, ctx: _Context) -> torch.Tensor:
        n = len(self.vocab)
        if ctx.field == "":
            return self._roots.clone()
        labels = (self.tables.slots.get((ctx.parent, ctx.field), frozenset()) if ctx.parent is not None
                  else self.tables.by_field.get(ctx.field, frozenset()))
        mask = torch.zeros(n, dtype=torch.bool)
        kept = ctx.children
        for label in labels:
            if label in (ANY_NAME, ANY_LITERAL):
                if not kept:  # a name or literal is a leaf
                    mask |= self._names if label == ANY_NAME else self._literals
            elif label not in self.vocab.index:
                continue
            elif label.startswith(TOKEN):
                mask[self.vocab.index[label]] = not kept
            elif kept is None:  # a hole: a type its expansion can build (fields, when it has any, are required)
                fields = self.tables.fields.get(label, frozenset()) - {TEXT}
                mask[self.vocab.index[label]] = not fields or bool(self.tables.required.get(label))
            else:  # kept children (or none): only a type seen with those fields, each holding what it has held.
                # Not "and every required field": a corpus's "always" is no rule (every npm class expression is
                # named; `class extends k {}` is not)
                mask[self.vocab.index[label]] = self._holds(label, kept)
        return mask

    def _holds(self, name: str, children: frozenset[tuple[str, str | None]]) -> bool:
        fields = self.tables.fields.get(name, frozenset())
        return all(f in fields and (child is None or child in self.tables.slots.get((name, f), ()))
                   for f, child in children)
