"""Repairing corrupted graphs with a trained denoiser's logits.

Repair procedures (for either model):

* ``one_shot``: one forward pass. Masked nodes and holes take the best label; a node that kept a label takes the
  model's if the model prefers another with probability > ``relabel_threshold``. A hole's inserted children
  (``RepairTree.expand``) get the most frequent label of their slot in the training graphs (no second pass).
* ``iterative``: absorbing-state discrete diffusion. Suspect nodes (masked, holes, and nodes the first pass would
  relabel) become ``<mask>``; then for K steps the model is run again and the most confident unresolved nodes are
  fixed, several per step, never a parent and its child in the same step; a fixed hole is expanded and its new
  holes join the unresolved ones.

With ``grammar`` every label comes from ``Grammar.allowed`` (decided top-down, so a node's context is settled);
without it, from all labels. With ``z3`` a one-shot candidate that ``logic.violations`` rejects is resampled (the
repaired nodes drawn from the model's distribution) up to ``z3_tries`` times.
"""

from __future__ import annotations

import math
import random
from collections.abc import Container
from dataclasses import dataclass

import torch
from torch import nn

from ml.graph_repair.asg import HOLE, MASK, NONE, UNK_IDENT, UNK_LITERAL, Asg
from ml.graph_repair.backend import GraphBackend, backend_for
from ml.graph_repair.edits import RepairTree
from ml.graph_repair.grammar import SPECIALS, Grammar, Vocabulary
from ml.graph_repair.training import predict


@dataclass
class Decoder:
    vocab: Vocabulary
    priors: dict[tuple[str, str], list[int]]
    grammar: Grammar | None = None
    # the default when nothing is tuned; evaluate_models picks it per model on dev (tune_relabel_threshold)
    relabel_threshold: float = 0.7

    def __post_init__(self) -> None:
        self.dead_ends = 0  # decisions for which the grammar allowed nothing (the free mask was used)
        self.prior_settled = 0  # iterative nodes still unresolved when the rounds ran out
        self.backend = backend_for(self.vocab.language)
        self._free = torch.ones(len(self.vocab), dtype=torch.bool)
        for s in SPECIALS:  # what a node can be: anything but padding, <mask>, <hole>, <end>
            if s not in (NONE, UNK_IDENT, UNK_LITERAL):
                self._free[self.vocab.index[s]] = False

    def allowed(self, tree: RepairTree, node: int, unsettled: Container[int] = ()) -> torch.Tensor:
        """The grammar's mask, and the rule that needs the siblings: no two parameters of a def, no two keyword
        arguments of a call, named alike. Only decided siblings count (not in ``unsettled``: a later one may still
        change, so a swapped pair is undone in two steps, and one that keeps its name is then forced to change)."""
        if self.grammar is None:
            return self._free
        mask = self.grammar.allowed(tree, node, tree.kids).clone()
        parent = tree.parent[node]
        if tree.fields[node] == "arg" and tree.labels.get(parent) in ("arg", "keyword"):
            for sibling in tree.kids.get(tree.parent[parent], []):
                if tree.labels[sibling] != tree.labels[parent]:
                    continue
                for leaf in tree.kids[sibling]:
                    label = tree.labels[leaf]
                    if leaf != node and leaf not in unsettled and tree.fields[leaf] == "arg" and label.startswith(
                            "id:"):
                        mask[self.vocab.id(label)] = False
        return mask if bool(mask.any()) else self._free  # a dead end: ``choose`` counts it

    def keeps(self, tree: RepairTree, node: int, label: str, unsettled: Container[int]) -> bool:
        """May the node keep its input label? (A name the vocabulary cannot say is checked as the name it is.)"""
        if self.grammar is None:
            return True
        if not self.allowed(tree, node, unsettled)[self.vocab.id(label)]:
            return False
        if self.vocab.normalize(label) != label and label.startswith("id:"):
            return self.backend.unknown_name_ok(tree, node, label)
        return True

    def choose(self, tree: RepairTree, node: int, logits: torch.Tensor, rng: random.Random | None,
               unsettled: Container[int] = ()) -> int:
        mask = self.allowed(tree, node, unsettled)
        if self.grammar is not None and mask is self._free:
            self.dead_ends += 1  # the grammar allowed nothing (a missing rule): decided unmasked, validity shows it
        scores = logits.masked_fill(~mask, float("-inf"))
        if rng is None:
            return int(scores.argmax())
        probs = torch.softmax(scores, -1)
        return int(torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(rng.randrange(1 << 30))))

    def fill_holes(self, tree: RepairTree, holes: list[int], unsettled: Container[int] = ()) -> None:
        """Give inserted holes their slot's most frequent allowed label (expanding further), no model pass.

        A choice that repeats one on its own chain of holes (same parent type, field and label) would repeat forever
        (a JavaScript ``member_expression`` whose ``object`` is most often a ``member_expression``): that hole takes
        the slot's most frequent label with nothing to expand instead."""
        queue, filled = [(h, frozenset()) for h in holes], 0
        while queue:
            if (filled := filled + 1) > 1000:
                raise RuntimeError("hole expansion does not end (a recursive prior)")
            h, chain = queue.pop(0)
            slot = (tree.labels[tree.parent[h]], tree.fields[h])
            label = self.prior_label(tree, h, unsettled)
            if (*slot, label) in chain:
                label = self.prior_label(tree, h, unsettled, leaf=True)
            tree.relabel(h, label)
            queue += [(n, chain | {(*slot, label)}) for n in tree.expand(h)]

    def prior_label(self, tree: RepairTree, node: int, unsettled: Container[int] = (), leaf: bool = False) -> str:
        """The node's slot's most frequent label in the training graphs that the mask allows (``leaf``: of those, one
        with no required fields, when there is one)."""
        mask = self.allowed(tree, node, unsettled)
        options = self.priors.get((tree.labels[tree.parent[node]], tree.fields[node]), [])
        if leaf:
            required = self.backend.required_fields
            allowed = [i for i in options if mask[i]] + [int(i) for i in mask.nonzero().flatten()]
            pick = next((i for i in allowed if not required(self.vocab.labels[i])), None)
            if pick is not None:
                return self.vocab.labels[pick]
        return self.vocab.labels[next((i for i in options if mask[i]), int(mask.nonzero()[0]))]

    def one_shot(self, g: Asg, logits: torch.Tensor, rng: random.Random | None = None) -> tuple[RepairTree, set]:
        tree = RepairTree.from_asg(g, self.vocab.language)
        probs = torch.softmax(logits, -1)
        changed = set()
        for i in range(len(g)):  # pre-order: a node's parent is settled first
            label, later = g.labels[i], range(i + 1, len(g))  # the input's nodes not decided yet
            if label in (MASK, HOLE):
                pick = self.choose(tree, i, logits[i], rng, later)
            else:
                best = self.choose(tree, i, logits[i], None, later)
                keep = self.keeps(tree, i, label, later) and (
                    best == self.vocab.id(label) or probs[i, best] <= self.relabel_threshold)
                if keep:
                    continue
                pick = self.choose(tree, i, logits[i], rng, later) if rng is not None else best
            tree.relabel(i, self.vocab.labels[pick])
            changed.add(i)
            if label == HOLE:
                self.fill_holes(tree, tree.expand(i), later)
        return tree, changed


def repair_one_shot(model: nn.Module, graphs: list[Asg], decoder: Decoder, z3_tries: int = 0,
                    seed: int = 0) -> tuple[list[RepairTree], dict]:
    """One forward pass per graph; with ``z3_tries`` a rejected candidate is resampled (only where the language has a
    Z3 check: ``GraphBackend.violations``). Returns trees and stats."""
    backend = decoder.backend
    z3_tries = z3_tries if backend.violations is not None else 0
    logits = predict(model, graphs, decoder.vocab)
    trees, checked, rejected, resampled_ok = [], 0, 0, 0
    rng = random.Random(seed)
    for g, lg in zip(graphs, logits, strict=True):
        tree, changed = decoder.one_shot(g, lg)
        if z3_tries and changed:
            checked += 1
            if _rejected(tree, backend):
                rejected += 1
                for _ in range(z3_tries):
                    candidate, _ = decoder.one_shot(g, lg, rng)
                    if backend.is_valid(candidate.to_asg()[0]) and not _rejected(candidate, backend):
                        tree, resampled_ok = candidate, resampled_ok + 1
                        break
        trees.append(tree)
    return trees, {"z3_checked": checked, "z3_rejected": rejected, "z3_resampled_ok": resampled_ok}


def _rejected(tree: RepairTree, backend: GraphBackend) -> bool:
    g, _ = tree.to_asg()
    try:
        code = backend.to_code(g)
    except ValueError:
        return False  # not a program: validity, not logic, judges it
    return bool(backend.violations(code))


def _has_pending_ancestor(tree: RepairTree, node: int, pending: set[int]) -> bool:
    up = tree.parent[node]
    while up >= 0:
        if up in pending:
            return True
        up = tree.parent[up]
    return False


def repair_iterative(model: nn.Module, graphs: list[Asg], decoder: Decoder, steps: int = 4) -> list[RepairTree]:
    first = predict(model, graphs, decoder.vocab)
    trees, pending = [], []
    for g, lg in zip(graphs, first, strict=True):
        tree = RepairTree.from_asg(g, decoder.vocab.language)
        _, changed = decoder.one_shot(g, lg)
        suspects = {i for i in range(len(g)) if g.labels[i] in (MASK, HOLE)} | changed
        for i in suspects:
            if g.labels[i] != HOLE:
                tree.relabel(i, MASK)
        trees.append(tree)
        pending.append(set(suspects))
    for k in range(steps + 8):  # the rounds after `steps` only settle nodes a late relabel made wrong
        last = k >= steps
        active = [b for b, p in enumerate(pending) if p]
        if not active:
            break
        views = [trees[b].to_asg() for b in active]
        logits = predict(model, [v for v, _ in views], decoder.vocab)
        for b, (_, order), lg in zip(active, views, logits, strict=True):
            tree, at = trees[b], {n: i for i, n in enumerate(order)}
            todo = sorted(pending[b], key=lambda n: at[n])
            conf = {n: float(torch.softmax(lg[at[n]].masked_fill(~decoder.allowed(tree, n, pending[b]),
                                                                 float("-inf")), -1)
                             .max()) for n in todo}
            quota = len(todo) if last else math.ceil(len(todo) / (steps - k))
            chosen: list[int] = []
            for n in todo if last else sorted(todo, key=lambda n: -conf[n]):
                if len(chosen) == quota:
                    break
                if not last and _has_pending_ancestor(tree, n, pending[b]):
                    continue  # top-down: a node is fixed once its ancestors are, so its context is settled
                chosen.append(n)  # so never a parent and its child in one step (the last rounds go in pre-order)
            for n in sorted(chosen, key=lambda n: at[n]):
                was_hole = tree.labels[n] == HOLE
                tree.relabel(n, decoder.vocab.labels[decoder.choose(tree, n, lg[at[n]], None, pending[b])])
                pending[b].discard(n)
                if was_hole:
                    new = tree.expand(n)
                    if last:
                        decoder.fill_holes(tree, new)
                    else:
                        pending[b].update(new)
                else:  # a kept node below may no longer fit (a target that must be storable): it is redone
                    for d in tree.subtree(n)[1:]:
                        if d not in pending[b] and not decoder.keeps(tree, d, tree.labels[d], pending[b]):
                            tree.relabel(d, MASK)
                            pending[b].add(d)
    for tree, left in zip(trees, pending, strict=True):  # rounds ran out: the slot's prior settles the rest
        position = {n: i for i, n in enumerate(tree.order())}
        for n in sorted(left, key=position.__getitem__):
            decoder.prior_settled += 1
            if tree.labels[n] == HOLE:
                decoder.fill_holes(tree, [n])
            else:
                tree.relabel(n, decoder.prior_label(tree, n))
    return trees

