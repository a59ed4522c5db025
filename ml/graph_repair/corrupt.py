"""Corruptions of a clean graph, graded by noise level, with the clean target kept.

Five operations (each touches nodes no earlier one touched):

* ``substitute``: a node gets another label of its kind that fits its children (``Add`` -> ``Sub``, one local for
  another, ``If`` -> ``While``, one literal for another);
* ``mask``: a node's label becomes ``<mask>`` (the absorbing state);
* ``mask_condition``: every node of an ``if``/``while``/``assert``/conditional-expression test becomes ``<mask>``;
* ``swap_siblings``: two adjacent siblings of the same shape exchange labels (``f(a, b)`` -> ``f(b, a)``);
* ``delete_subtree``: a small subtree that has only required fields is cut to a ``<hole>`` (its root's label and
  children gone), or its root is kept and each child subtree cut to a hole.

The noise level is the fraction of nodes touched; operations are drawn until it is reached. Dataflow edges are
computed again from the corrupted tree's own names (``asg.dataflow_of``): a substituted name gets the edges it
now implies, a masked one none, so the edges never carry a clean label nor mark where the corruption is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ml.graph_repair.asg import HOLE, MASK, Asg
from ml.graph_repair.backend import GraphBackend, backend_for

__all__ = ["NOISE_LEVELS", "OPERATIONS", "Corrupted", "corrupt"]

NOISE_LEVELS = {"low": 0.05, "mid": 0.15, "high": 0.30}
OPERATIONS = ("substitute", "mask", "mask_condition", "swap_siblings", "delete_subtree")
_MAX_DELETED = 8


@dataclass
class Corrupted:
    graph: Asg  # the corrupted tree (``<mask>``/``<hole>`` labels, cut subtrees gone)
    targets: list[str]  # the clean label of each node of ``graph`` (for a hole: the cut subtree's root)
    corrupted: list[bool]  # which nodes the operations touched
    ops: list[str] = field(default_factory=list)


def _shape(g: Asg, kids: list[list[int]], i: int) -> tuple:
    return (g.fields[i], tuple(_shape(g, kids, c) for c in kids[i]))


def _subtree(kids: list[list[int]], i: int) -> list[int]:
    out, stack = [], [i]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(kids[n])
    return out


def _closed(g: Asg, kids: list[list[int]], i: int, backend: GraphBackend) -> bool:
    """Only required fields below ``i``: expanding a hole by the grammar gives the same shape back."""
    for n in _subtree(kids, i):
        if g.labels[n].startswith(("id:", "lit:")):
            continue
        if [g.fields[c] for c in kids[n]] != backend.required_fields(g.labels[n]):
            return False
    return True


def corrupt(g: Asg, noise: float, rng: random.Random, operations=OPERATIONS, language: str = "python") -> Corrupted:
    """``g`` corrupted to ``noise``; ``language`` picks the graph backend (its substitutes, conditions and the
    scaffolding no operation touches: for tree-sitter graphs the punctuation, ``treesitter_asg.is_scaffold``)."""
    backend = backend_for(language)
    n = len(g)
    kids = g.children()
    labels = list(g.labels)
    touched = [False] * n
    removed = [False] * n
    scaffold = [backend.is_scaffold(g, i) for i in range(n)]
    solid_kids = [[c for c in k if not scaffold[c]] for k in kids]
    ops: list[str] = []
    free = lambda nodes: all(not touched[x] and not removed[x] for x in nodes)  # noqa: E731
    attempts = 0
    while sum(touched) + sum(removed) < max(1, round(noise * n)) and attempts < 50:
        attempts += 1
        op = rng.choice(operations)
        if op in ("substitute", "mask"):
            sites = [i for i in range(1, n) if free([i]) and not scaffold[i]]
            if not sites:
                continue
            i = rng.choice(sites)
            if op == "mask":
                labels[i] = MASK
            else:
                options = backend.substitutes(g, kids, i)
                if not options:
                    continue
                labels[i] = rng.choice(options)
            touched[i] = True
        elif op == "mask_condition":
            sites = [i for i in range(1, n) if backend.is_condition(g, i) and free(_subtree(kids, i))]
            if not sites:
                continue
            for x in _subtree(kids, rng.choice(sites)):
                if not scaffold[x]:
                    labels[x], touched[x] = MASK, True
        elif op == "swap_siblings":
            # adjacent but for punctuation: `f(a, b)` has a comma between its arguments
            pairs = [(a, b) for k in solid_kids for a, b in zip(k, k[1:])
                     if _shape(g, kids, a) == _shape(g, kids, b) and free(_subtree(kids, a) + _subtree(kids, b))
                     and [g.labels[x] for x in _subtree(kids, a)] != [g.labels[x] for x in _subtree(kids, b)]
                     and not any(scaffold[x] and g.labels[x] != g.labels[y]  # punctuation never moves
                                 for x, y in zip(sorted(_subtree(kids, a)), sorted(_subtree(kids, b)), strict=True))]
            if not pairs:
                continue
            a, b = rng.choice(pairs)
            for x, y in zip(sorted(_subtree(kids, a)), sorted(_subtree(kids, b)), strict=True):
                if g.labels[x] != g.labels[y]:
                    labels[x], labels[y] = g.labels[y], g.labels[x]
                    touched[x] = touched[y] = True
        else:  # delete_subtree
            sites = [i for i in range(1, n) if kids[i] and _closed(g, kids, i, backend)
                     and len(_subtree(kids, i)) <= _MAX_DELETED and free(_subtree(kids, i))]
            if not sites:
                continue
            r = rng.choice(sites)
            for cut in [r] if rng.random() < 0.5 else kids[r]:
                for x in _subtree(kids, cut):
                    if x != cut:
                        removed[x] = True
                labels[cut], touched[cut] = HOLE, True
        ops.append(op)
    keep = [i for i in range(n) if not removed[i]]
    at = {i: j for j, i in enumerate(keep)}
    graph = Asg([labels[i] for i in keep], [at.get(g.parents[i], -1) for i in keep], [g.fields[i] for i in keep])
    graph.dataflow = backend.dataflow_of(graph.labels, graph.parents, graph.fields)
    return Corrupted(graph, [g.labels[i] for i in keep], [touched[i] for i in keep], ops)
