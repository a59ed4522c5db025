"""Build the graph repair slot tables of the tree-sitter slices from their default corpora, and measure the graphs.

    PYTHONPATH=. python scripts/build_graph_grammar.py [--max-files N] javascript java

The tables (``ml/graph_repair/treesitter_grammar/<language>.json``, see ``ml.graph_repair.treesitter_grammar``)
are read off the functions of the files ``table_file`` selects (half of the corpus by path hash, as the codec's
tables are); the held-out half then measures them. Printed per language, one JSON object each: functions, how many
yield graphs, the round-trip rate (source -> graph -> source -> graph gives the same graph and the same
tree-sitter S-expression of the comment-free tree) and the share of held-out nodes whose label the mask allows.
"""

from __future__ import annotations

import argparse
import json

from ml.codec.treesitter_codec import parse_unit_wrapped
from ml.codec.treesitter_compact import table_file
from ml.corpus.filters import FileFilter
from ml.corpus.ingest import extract_units, read_files
from ml.graph_repair.backend import backend_for
from ml.graph_repair.grammar import Vocabulary
from ml.graph_repair.treesitter_asg import from_code, to_code
from ml.graph_repair.treesitter_grammar import TABLES_DIR, TreeSitterGrammar, build_tables, grammar_tables
from ml.languages import get_language


def _graphs(language: str, units) -> tuple[list, dict]:
    renamer = get_language(language).renamer
    graphs, counts = [], {"functions": 0, "graphs": 0, "round_trip": 0}
    for unit in units:
        counts["functions"] += 1
        try:
            code = renamer(unit.code).code
            g = from_code(code, language)
        except (ValueError, RecursionError):
            continue
        counts["graphs"] += 1
        try:
            back = to_code(g, language)
            same = from_code(back, language).key() == g.key()
            node = parse_unit_wrapped(code, language)[0]
            if not any(c.type in ("comment", "line_comment", "block_comment", "html_comment")
                       for c in _named(node)):
                same = same and str(node) == str(parse_unit_wrapped(back, language)[0])
        except (ValueError, RecursionError):
            same = False
        counts["round_trip"] += same
        graphs.append(g)
    return graphs, counts


def _named(node):
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(n.named_children)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("languages", nargs="*", default=["javascript", "java"])
    ap.add_argument("--max-files", type=int, default=0, help="files read per language (0: all)")
    args = ap.parse_args()
    TABLES_DIR.mkdir(exist_ok=True)
    for language in args.languages:
        files = read_files(language, get_language(language).default_source(), args.max_files or None, FileFilter())
        rows = [f for f in files.rows if f.text is not None]
        units, _ = extract_units(language, rows, workers=1)
        build = [u for u in units if table_file(u.path)]
        held = [u for u in units if not table_file(u.path)]
        graphs, counts = _graphs(language, build)
        (TABLES_DIR / f"{language}.json").write_text(json.dumps(build_tables(graphs), indent=0) + "\n")
        grammar_tables.cache_clear()
        held_graphs, held_counts = _graphs(language, held)
        vocab = Vocabulary.build([g.labels for g in graphs + held_graphs], max_size=10**9, min_count=1,
                                 language=language, node_labels=backend_for(language).node_labels)
        grammar = TreeSitterGrammar(vocab, language)
        nodes = allowed = 0
        for g in held_graphs:
            kids = g.children()
            for i, label in enumerate(g.labels):
                nodes += 1
                allowed += bool(grammar.allowed(g, i, kids)[vocab.index[label]])
        print(json.dumps({"language": language, "files": len(rows), "table": counts, "held_out": held_counts,
                          "held_out_nodes": nodes, "held_out_nodes_allowed": allowed,
                          "held_out_allowed_rate": round(allowed / max(1, nodes), 5)}))


if __name__ == "__main__":
    main()
