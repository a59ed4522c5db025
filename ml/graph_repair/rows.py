"""The graph_repair data: graphs of code units as rows (with their split), graded corruptions of them as rows,
and the slot priors (per parent type and field, the labels the clean training graphs put there)."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence

from ml.graph_repair.asg import Asg, InvalidTree
from ml.graph_repair.backend import backend_for
from ml.graph_repair.corrupt import NOISE_LEVELS, corrupt
from ml.graph_repair.grammar import Vocabulary
from ml.splits import DEFAULT_DEV_FRACTION, DEFAULT_TEST_FRACTION, code_key, split_of


def graph_key(g: Asg, renamed_code: str = "", language: str = "python") -> str:
    """The group key of a graph: ``code_key`` of the alpha-renamed code the graph says (docstring left out, as the
    graph leaves it out), so renamed copies of a function, and any two functions with the same graph, share it."""
    try:
        return code_key(backend_for(language).to_code(g))
    except InvalidTree:  # not expected of a parsed function; the renamed text still keeps renamed copies together
        return code_key(renamed_code or repr(g.key()))


def graph_row(unit_id: str, name: str, language: str, g: Asg, split: str = "train",
              group_key: str | None = None) -> dict:
    return {"id": unit_id, "language": language, "name": name,
            "group_key": graph_key(g, language=language) if group_key is None else group_key, "split": split,
            "n_nodes": len(g),
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
    from_code = backend_for(language).from_code
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
        key = graph_key(graph, renamed, language)
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
            c = corrupt(clean, NOISE_LEVELS[level], rng, language=row["language"])
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



def slot_priors(graphs: Iterable[Asg], vocab: Vocabulary) -> dict[tuple[str, str], list[int]]:
    """For each (parent type, field): label ids by frequency in the clean training graphs."""
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for g in graphs:
        for i, p in enumerate(g.parents):
            if p >= 0:
                counts[(g.labels[p], g.fields[i])][vocab.id(g.labels[i])] += 1
    return {k: [i for i, _ in c.most_common(20)] for k, c in counts.items()}

