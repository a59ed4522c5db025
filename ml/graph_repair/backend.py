"""The language-specific half of graph repair, one ``GraphBackend`` per slice: how a unit becomes a graph and back,
what is valid, which labels exist, the grammar mask, and what corruption may touch. Rows, corruption, models,
training, decoding, evaluation and the report are shared and ask ``backend_for(language)``.

* ``python``: ``ml.graph_repair.asg`` (the CPython AST), ``ml.graph_repair.grammar`` (ASDL plus compiler rules),
  the Z3 check of ``ml.graph_repair.logic``;
* ``javascript``, ``java``: ``ml.graph_repair.treesitter_asg`` and ``ml.graph_repair.treesitter_grammar``
  (slot tables read off a corpus); no Z3 check (its constraints are Python's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = ["GraphBackend", "backend_for"]


@dataclass(frozen=True)
class GraphBackend:
    language: str
    from_code: Callable[[str], Any]  # code -> Asg; ValueError / SyntaxError when the unit has no graph
    to_code: Callable[[Any], str]  # Asg -> source; InvalidTree when the graph is no tree of the language
    is_valid: Callable[[Any], bool]
    dataflow_of: Callable[[list[str], list[int], list[str]], list[tuple[int, int]]]
    required_fields: Callable[[str], list[str]]  # the fields a hole of this type is expanded to
    node_labels: tuple[str, ...]  # the vocabulary's fixed part after the specials
    field_names: tuple[str, ...]  # every field a node may fill (the models' field embedding)
    grammar: Callable[[Any], Any]  # vocab -> an object with allowed(tree, i, kids) -> bool mask
    substitutes: Callable[[Any, list[list[int]], int], list[str]]  # labels a node may be swapped for
    is_condition: Callable[[Any, int], bool]  # node i is a condition (mask_condition masks its subtree)
    is_scaffold: Callable[[Any, int], bool]  # node i is never corrupted
    unknown_name_ok: Callable[[Any, int, str], bool]  # may node i keep an identifier the vocabulary cannot say
    violations: Callable[[str], list[str]] | None = None  # the Z3 check of a program's source, where one exists


@cache
def _python() -> GraphBackend:
    from ml.graph_repair import asg, grammar, logic, python_corruption

    def unknown_name_ok(tree, node: int, label: str) -> bool:
        return tree.labels.get(tree.parent[node]) in ("alias", "ImportFrom") or grammar.is_name(label)

    return GraphBackend(
        "python", asg.from_code, asg.to_code, asg.is_valid, asg.dataflow_of, asg.required_fields,
        (*sorted(asg.table()), *grammar.INT_FIELD_LITERALS),
        tuple(sorted({f for _, fields in asg.table().values() for f, _, _ in fields})), grammar.Grammar,
        python_corruption.python_substitutes, python_corruption.python_condition, lambda g, i: False,
        unknown_name_ok, logic.violations)


@cache
def _treesitter(language: str) -> GraphBackend:
    from ml.graph_repair import treesitter_asg as ts
    from ml.graph_repair import treesitter_grammar as tg

    labels = tuple(sorted(set(ts.node_labels(language)) | {
        x for labels in tg.grammar_tables(language).slots.values() for x in labels
        if x not in (tg.ANY_NAME, tg.ANY_LITERAL)}))
    return GraphBackend(
        language, lambda code: ts.from_code(code, language), lambda g: ts.to_code(g, language),
        lambda g: ts.is_valid(g, language), ts.dataflow_of, lambda label: tg.required_fields(label, language),
        labels, ts.field_names(language), lambda vocab: tg.TreeSitterGrammar(vocab, language),
        lambda g, kids, i: tg.substitutes(g, kids, i, language),
        lambda g, i: g.fields[i] == "condition", ts.is_scaffold, lambda tree, node, label: True)


def backend_for(language: str) -> GraphBackend:
    """The graph backend of a slice; KeyError for a slice without one."""
    if language == "python":
        return _python()
    if language in ("javascript", "java"):
        return _treesitter(language)
    raise KeyError(f"no graph repair backend for the {language!r} slice")
