"""Rebuild the production tables of the tree-sitter grammar automaton (``ml.constrained.treesitter_grammar``) from a
language's default corpus.

    PYTHONPATH=. python scripts/build_grammar_tables.py javascript java [--units 3000]

Like the codec tables, only the files ``table_file`` selects are read (the other half stays held out). Rebuild after
``scripts/build_codec_tables.py``: a table is tied to the compact format it was read in (``format_version``).
"""

from __future__ import annotations

import argparse
import json

from ml.codec.treesitter_compact import table_file
from ml.constrained.treesitter_productions import TABLES_DIR, build
from ml.corpus.filters import FileFilter
from ml.corpus.ingest import extract_units, read_files
from ml.languages import get_language


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("languages", nargs="*", default=["javascript", "java"])
    ap.add_argument("--units", type=int, default=3000, help="at most this many units per language (table size)")
    args = ap.parse_args()
    TABLES_DIR.mkdir(exist_ok=True)
    for language in args.languages:
        files = read_files(language, get_language(language).default_source(), None, FileFilter())
        rows = [f for f in files.rows if f.text is not None and table_file(f.path)]
        units, _ = extract_units(language, rows)
        units = sorted(units, key=lambda u: u.id)[: args.units]  # a hash order: a spread of files, reproducible
        table = build(language, [u.code for u in units])
        path = TABLES_DIR / f"{language}.json"
        path.write_text(json.dumps(table, separators=(",", ":"), sort_keys=True) + "\n")
        n = sum(len(v) for v in table["productions"].values())
        print(f"{language}: {len(rows)} files, {table['units']} units -> {path} ({n} productions, "
              f"{path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
