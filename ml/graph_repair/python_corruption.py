"""What corruption may do to a Python graph (``ml.graph_repair.corrupt`` draws the operations): the labels a node
may be substituted by, and which nodes are conditions."""

from __future__ import annotations

from ml.graph_repair.asg import Asg, required_fields, table
from ml.graph_repair.grammar import is_name

__all__ = ["python_condition", "python_substitutes"]

_COMMON_LITERALS = ("lit:0", "lit:1", "lit:None", "lit:True", "lit:False", "lit:''", "lit:-1", "lit:2")
_TEST_PARENTS = frozenset(("If", "While", "IfExp", "Assert"))


def _kind(label: str) -> str:
    return "ident" if label.startswith("id:") else "literal" if label.startswith("lit:") else "type"


def _signature(name: str) -> dict[str, tuple[str, str]]:
    return {f: (t, q) for f, t, q in table()[name][1] if t != "expr_context"}


def _fits(name: str, like: str, child_fields: set[str]) -> bool:
    """``name`` can stand where ``like`` stands with the same children: each child's field has the same type."""
    mine, theirs = _signature(name), _signature(like)
    return all(mine.get(f) == theirs[f] for f in child_fields) and set(required_fields(name)) <= child_fields


def python_substitutes(g: Asg, kids: list[list[int]], i: int) -> list[str]:
    label = g.labels[i]
    kind = _kind(label)
    if kind == "ident":  # another name of the function; a dotted import name only where one may stand
        dotted_ok = g.labels[g.parents[i]] in ("alias", "ImportFrom")
        return sorted({x for x in g.labels if x.startswith("id:") and x != label and (dotted_ok or is_name(x))})
    if kind == "literal":
        return sorted(({x for x in g.labels if x.startswith("lit:")} | set(_COMMON_LITERALS)) - {label})
    if label not in table():
        return []
    category = table()[label][0]
    child_fields = {g.fields[c] for c in kids[i]}
    return [t for t, (cat, _) in table().items() if cat == category and t != label and _fits(t, label, child_fields)]


def python_condition(g: Asg, i: int) -> bool:
    return g.fields[i] == "test" and g.labels[g.parents[i]] in _TEST_PARENTS
