"""Level 3: repairs are tree edits, so every intermediate state is a tree.

``RepairTree`` is a mutable tree of labelled nodes (ids are stable; the pre-order ``Asg`` is produced on demand).
Three edits exist: ``relabel`` (give a node a label), ``insert`` (a new leaf child at a position under a node,
filling a field) and ``delete`` (a node and its subtree). ``expand`` inserts a ``<hole>`` child for every
required field of a node that has just been given a type where a subtree was deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ml.graph_repair.asg import HOLE, Asg, required_fields
from ml.graph_repair.backend import backend_for

__all__ = ["RepairTree", "required_fields"]


@dataclass
class RepairTree:
    labels: dict[int, str]
    fields: dict[int, str]
    parent: dict[int, int]
    kids: dict[int, list[int]]
    root: int = 0
    _next: int = 0
    language: str = "python"  # whose graph backend expands holes and draws dataflow

    @classmethod
    def from_asg(cls, g: Asg, language: str = "python") -> RepairTree:
        kids = g.children()
        return cls(dict(enumerate(g.labels)), dict(enumerate(g.fields)), dict(enumerate(g.parents)),
                   dict(enumerate(kids)), 0, len(g), language)

    @property
    def parents(self) -> dict[int, int]:
        """``parent`` under the name ``Asg`` uses, so the grammar reads either."""
        return self.parent

    # -- edits ---------------------------------------------------------------------------------------------
    def relabel(self, node: int, label: str) -> None:
        if node not in self.labels:
            raise KeyError(f"no node {node}")
        self.labels[node] = label

    def insert(self, parent: int, position: int, fld: str, label: str = HOLE) -> int:
        if parent not in self.labels:
            raise KeyError(f"no node {parent}")
        node = self._next
        self._next += 1
        self.labels[node], self.fields[node], self.parent[node], self.kids[node] = label, fld, parent, []
        siblings = self.kids[parent]
        siblings.insert(max(0, min(position, len(siblings))), node)
        return node

    def delete(self, node: int) -> None:
        if node == self.root:
            raise ValueError("the root cannot be deleted")
        gone = set(self.subtree(node))
        self.kids[self.parent[node]].remove(node)
        for n in gone:
            for table_ in (self.labels, self.fields, self.parent, self.kids):
                del table_[n]

    def expand(self, node: int) -> list[int]:
        """Insert a hole for each required field of the node's (new) type; returns the holes."""
        required = backend_for(self.language).required_fields(self.labels[node])
        return [self.insert(node, len(self.kids[node]), f) for f in required]

    # -- views ---------------------------------------------------------------------------------------------
    def subtree(self, node: int) -> list[int]:
        out, stack = [], [node]
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(reversed(self.kids[n]))
        return out

    def order(self) -> list[int]:
        """Node ids in pre-order (the ``Asg`` index of each)."""
        return self.subtree(self.root)

    def to_asg(self) -> tuple[Asg, list[int]]:
        """The tree as an ``Asg`` and the node id at each of its positions."""
        order = self.order()
        at = {n: i for i, n in enumerate(order)}
        g = Asg([self.labels[n] for n in order], [at.get(self.parent[n], -1) for n in order],
                [self.fields[n] for n in order])
        g.dataflow = backend_for(self.language).dataflow_of(g.labels, g.parents, g.fields)  # the names as they stand
        return g, order

    def is_tree(self) -> bool:
        """One root, every other node reachable from it exactly once, parent and child links agree."""
        seen = self.order()
        if len(seen) != len(set(seen)) or set(seen) != set(self.labels) or self.parent[self.root] != -1:
            return False
        return all(self.parent[c] == n for n in seen for c in self.kids[n])
