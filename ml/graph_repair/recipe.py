"""The graph_repair recipe: graphs and corruptions as rows, training either denoiser, repairing and evaluating.

The asset bodies and ``bench/graph_repair.py`` call these functions.

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

import json
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ml.graph_repair.asg import (
    HOLE,
    MASK,
    NONE,
    UNK_IDENT,
    UNK_LITERAL,
    Asg,
    InvalidTree,
    from_code,
    is_valid,
    to_code,
)
from ml.graph_repair.corrupt import NOISE_LEVELS, corrupt
from ml.graph_repair.edits import RepairTree
from ml.graph_repair.grammar import SPECIALS, Grammar, Vocabulary, is_name
from ml.graph_repair.logic import violations
from ml.graph_repair.models import GraphUNet, TreeTransformer, graph_batch, sequence_batch, transformer_matching
from ml.splits import DEFAULT_DEV_FRACTION, DEFAULT_TEST_FRACTION, code_key, split_of

MODELS = ("graph_unet", "transformer")


# -- rows -----------------------------------------------------------------------------------------------------
def graph_key(g: Asg, renamed_code: str = "") -> str:
    """The group key of a graph: ``code_key`` of the alpha-renamed code the graph says (docstring left out, as the
    graph leaves it out), so renamed copies of a function, and any two functions with the same graph, share it."""
    try:
        return code_key(to_code(g))
    except InvalidTree:  # not expected of a parsed function; the renamed text still keeps renamed copies together
        return code_key(renamed_code or repr(g.key()))


def graph_row(unit_id: str, name: str, language: str, g: Asg, split: str = "train",
              group_key: str | None = None) -> dict:
    return {"id": unit_id, "language": language, "name": name,
            "group_key": graph_key(g) if group_key is None else group_key, "split": split, "n_nodes": len(g),
            "labels": g.labels, "parents": g.parents, "fields": g.fields,
            "dataflow_src": [d for d, _ in g.dataflow], "dataflow_dst": [u for _, u in g.dataflow]}


def graph_of(row: dict, prefix: str = "") -> Asg:
    return Asg(list(row[f"{prefix}labels"]), list(row[f"{prefix}parents"]), list(row[f"{prefix}fields"]),
               list(zip(row[f"{prefix}dataflow_src"], row[f"{prefix}dataflow_dst"], strict=True)))


def graph_rows(units: Iterable[dict], language: str, rename: Callable[[str], object], min_nodes: int,
               max_nodes: int, max_functions: int, dev_fraction: float = DEFAULT_DEV_FRACTION,
               test_fraction: float = DEFAULT_TEST_FRACTION) -> tuple[list[dict], Counter, Counter]:
    """Graph rows of code units (alpha-renamed by ``rename``), skips by reason, and edge counts by type.

    Each row's ``split`` is ``split_of`` its ``group_key`` (``graph_key``): decided here, once, so that renamed
    copies and identical graphs are all train, all dev or all test."""
    rows, skipped, edges = [], Counter(), Counter()
    for unit in units:
        try:
            renamed = rename(unit["code"]).code
            graph = from_code(renamed)
        except (SyntaxError, ValueError, RecursionError):
            skipped["unparsable_or_no_body"] += 1
            continue
        if not min_nodes <= len(graph) <= max_nodes:
            skipped["size_out_of_range"] += 1
            continue
        key = graph_key(graph, renamed)
        rows.append(graph_row(unit["id"], unit["name"], language, graph,
                              split_of(key, dev=dev_fraction, test=test_fraction), key))
        edges.update({k: len(v) for k, v in graph.edges().items()})
        if max_functions and len(rows) >= max_functions:
            break
    return rows, skipped, edges


def repair_rows(graph_rows: Sequence[dict], corruptions_per_graph: int, seed: int) -> list[dict]:
    """Train graphs: ``corruptions_per_graph`` rows each at noise levels drawn in turn; dev and test graphs: one row
    per noise level. Rows inherit the graph's split and group key. Seeded by the graph id, so a row does not change
    when others are added."""
    out = []
    for row in graph_rows:
        clean = graph_of(row)
        rng = random.Random(f"{seed}:{row['id']}")
        levels = list(NOISE_LEVELS) if row["split"] != "train" else [
            list(NOISE_LEVELS)[(k + rng.randrange(3)) % 3] for k in range(corruptions_per_graph)]
        for k, level in enumerate(levels):
            c = corrupt(clean, NOISE_LEVELS[level], rng)
            out.append({
                "id": f"{row['id']}:{level}:{k}", "unit_id": row["id"], "group_key": row["group_key"],
                "split": row["split"], "noise": level, "ops": c.ops, "n_corrupted": sum(c.corrupted),
                **{k2: v for k2, v in graph_row(row["id"], row["name"], row["language"], c.graph, row["split"],
                                                row["group_key"]).items()
                   if k2 in ("labels", "parents", "fields", "dataflow_src", "dataflow_dst", "n_nodes")},
                "targets": c.targets, "corrupted": c.corrupted,
                **{f"clean_{k2}": row[k2] for k2 in ("labels", "parents", "fields", "dataflow_src", "dataflow_dst")},
            })
    return out


# -- vocabulary and slot priors --------------------------------------------------------------------------------
def slot_priors(graphs: Iterable[Asg], vocab: Vocabulary) -> dict[tuple[str, str], list[int]]:
    """For each (parent type, field): label ids by frequency in the clean training graphs."""
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for g in graphs:
        for i, p in enumerate(g.parents):
            if p >= 0:
                counts[(g.labels[p], g.fields[i])][vocab.id(g.labels[i])] += 1
    return {k: [i for i, _ in c.most_common(20)] for k, c in counts.items()}


# -- training -------------------------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    steps: int = 400
    batch_size: int = 16
    lr: float = 5e-4
    warmup: float = 0.05
    clean_weight: float = 0.1  # loss weight of nodes the corruption did not touch (they are mostly copied)
    seed: int = 0
    threads: int = 0


def forward(model: nn.Module, graphs: list[Asg], vocab: Vocabulary) -> torch.Tensor:
    """Logits [total nodes, vocab] for the graphs, concatenated in order (on the model's device)."""
    if isinstance(model, SlotFrequency):
        return model(graphs)
    device = next(model.parameters()).device
    if isinstance(model, GraphUNet):
        return model(graph_batch(graphs, vocab).to(device))
    return model(sequence_batch(graphs, vocab).to(device))


def predict(model: nn.Module, graphs: list[Asg], vocab: Vocabulary, batch_size: int = 64) -> list[torch.Tensor]:
    """Per graph, its logits [nodes, vocab] on the CPU, in batches."""
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(graphs), batch_size):
            chunk = graphs[start:start + batch_size]
            out += forward(model, chunk, vocab).float().cpu().split([len(g) for g in chunk])
    return out


def train_denoiser(model: nn.Module, examples: Sequence[dict], vocab: Vocabulary, settings: TrainSettings,
                   log: Callable[[str], None] = print) -> dict:
    """``settings.steps`` AdamW steps of batches drawn (seeded) from ``examples``; returns the loss curve and time."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    warm = max(1, int(settings.warmup * settings.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(
        math.pi * min(1.0, max(0, s - warm) / max(1, settings.steps - warm))))))
    graphs = [graph_of(e) for e in examples]
    curve, start, order = [], time.perf_counter(), []
    model.train()
    for step in range(settings.steps):
        if len(order) < settings.batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        idx, order = order[: settings.batch_size], order[settings.batch_size:]
        logits = forward(model, [graphs[i] for i in idx], vocab)
        targets = torch.tensor([vocab.id(t) for i in idx for t in examples[i]["targets"]], device=logits.device)
        weights = torch.tensor([1.0 if c else settings.clean_weight for i in idx for c in examples[i]["corrupted"]],
                               device=logits.device)
        loss = (nn.functional.cross_entropy(logits, targets, reduction="none") * weights).sum() / weights.sum()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        curve.append(loss.item())
        if step % max(1, settings.steps // 10) == 0 or step == settings.steps - 1:
            log(f"step {step + 1}/{settings.steps}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    return {"loss_curve": curve, "train_s": time.perf_counter() - start, "final_loss": sum(curve[-10:]) / len(
        curve[-10:])}


# -- repair ---------------------------------------------------------------------------------------------------
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
            return tree.labels.get(tree.parent[node]) in ("alias", "ImportFrom") or is_name(label)
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
        """Give inserted holes their slot's most frequent allowed label (expanding further), no model pass."""
        queue, filled = list(holes), 0
        while queue:
            if (filled := filled + 1) > 1000:
                raise RuntimeError("hole expansion does not end (a recursive prior)")
            h = queue.pop(0)
            tree.relabel(h, self.prior_label(tree, h, unsettled))
            queue += tree.expand(h)

    def prior_label(self, tree: RepairTree, node: int, unsettled: Container[int] = ()) -> str:
        """The node's slot's most frequent label in the training graphs that the mask allows."""
        mask = self.allowed(tree, node, unsettled)
        options = self.priors.get((tree.labels[tree.parent[node]], tree.fields[node]), [])
        return self.vocab.labels[next((i for i in options if mask[i]), int(mask.nonzero()[0]))]

    def one_shot(self, g: Asg, logits: torch.Tensor, rng: random.Random | None = None) -> tuple[RepairTree, set]:
        tree = RepairTree.from_asg(g)
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
    """One forward pass per graph; with ``z3_tries`` a rejected candidate is resampled. Returns trees and stats."""
    logits = predict(model, graphs, decoder.vocab)
    trees, checked, rejected, resampled_ok = [], 0, 0, 0
    rng = random.Random(seed)
    for g, lg in zip(graphs, logits, strict=True):
        tree, changed = decoder.one_shot(g, lg)
        if z3_tries and changed:
            checked += 1
            if _rejected(tree):
                rejected += 1
                for _ in range(z3_tries):
                    candidate, _ = decoder.one_shot(g, lg, rng)
                    if is_valid(candidate.to_asg()[0]) and not _rejected(candidate):
                        tree, resampled_ok = candidate, resampled_ok + 1
                        break
        trees.append(tree)
    return trees, {"z3_checked": checked, "z3_rejected": rejected, "z3_resampled_ok": resampled_ok}


def _rejected(tree: RepairTree) -> bool:
    g, _ = tree.to_asg()
    try:
        code = to_code(g)
    except ValueError:
        return False  # not a program: validity, not logic, judges it
    return bool(violations(code))


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
        tree = RepairTree.from_asg(g)
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


# -- evaluation -----------------------------------------------------------------------------------------------
class SlotFrequency(nn.Module):
    """The baseline without learning: a kept label stays, an unknown one takes its slot's most frequent label in
    the training graphs (``slot_priors``). No parameters; the decoders treat it like a model."""

    def __init__(self, vocab: Vocabulary, priors: dict[tuple[str, str], list[int]]) -> None:
        super().__init__()
        self.vocab, self.priors = vocab, priors

    def forward(self, graphs: list[Asg]) -> torch.Tensor:
        logits = torch.zeros(sum(len(g) for g in graphs), len(self.vocab))
        row = 0
        for g in graphs:
            for i, label in enumerate(g.labels):
                p = g.parents[i]
                ranked = self.priors.get((g.labels[p] if p >= 0 else "", g.fields[i]), [])
                for rank, j in enumerate(ranked):
                    logits[row, j] = 5.0 - 0.1 * rank
                if label not in (MASK, HOLE):
                    logits[row, self.vocab.id(label)] = 10.0
                row += 1
        return logits


def save_denoiser(folder: Path, kind: str, model: nn.Module, vocab: Vocabulary, priors: dict, stats: dict) -> None:
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model.json").write_text(json.dumps({"kind": kind, "config": model.config, **stats}, indent=1))
    (folder / "vocab.json").write_text(json.dumps(vocab.labels))
    (folder / "priors.json").write_text(json.dumps([[p, f, ids] for (p, f), ids in sorted(priors.items())]))


def load_denoiser(folder: Path) -> tuple[nn.Module, Vocabulary, dict, dict]:
    """(model, vocabulary, slot priors, model.json) of a saved denoiser; ValueError when the folder is not one."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "model.json").read_text())
        vocab = Vocabulary(json.loads((folder / "vocab.json").read_text()))
        priors = {(p, f): ids for p, f, ids in json.loads((folder / "priors.json").read_text())}
        model = GraphUNet(**meta["config"]) if meta["kind"] == "graph_unet" else TreeTransformer(**meta["config"])
        model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    except (OSError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder} is not a saved graph repair model: {exc}") from exc
    return model.eval(), vocab, priors, meta


def build_model(kind: str, vocab_size: int, hidden: int, depth: int, target_params: int | None = None) -> nn.Module:
    if kind == "graph_unet":
        return GraphUNet(vocab_size, hidden=hidden, depth=depth, ff=4 * hidden)
    if target_params is None:
        raise ValueError("the transformer baseline is sized to the graph model: give target_params")
    return transformer_matching(target_params, vocab_size, hidden)

