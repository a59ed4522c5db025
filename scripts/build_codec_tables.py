"""Rebuild the compact-mode tables of the tree-sitter codec from a language's default corpus.

    PYTHONPATH=. python scripts/build_codec_tables.py javascript java

Only the files ``table_file`` selects (half of the corpus, by path hash) are read, so that the other
half stays held out (``bench/codec.py`` does not split yet: it measures the whole corpus). A rebuilt table changes the
compact format (``format_version``): artifacts made with the old one get new versions when rebuilt.
"""

from __future__ import annotations

import json
import sys

from ml.codec.treesitter_codec import parse_unit_with_source
from ml.codec.treesitter_compact import TABLES_DIR, build_tables, table_file
from ml.corpus.filters import FileFilter
from ml.corpus.ingest import extract_units, read_files
from ml.languages import get_language


def main(languages: list[str]) -> None:
    TABLES_DIR.mkdir(exist_ok=True)
    for language in languages:
        files = read_files(language, get_language(language).default_source(), None, FileFilter())
        rows = [f for f in files.rows if f.text is not None and table_file(f.path)]
        units, _ = extract_units(language, rows)
        nodes = [parse_unit_with_source(u.code, language) for u in units]
        tables = build_tables(nodes)
        path = TABLES_DIR / f"{language}.json"
        path.write_text(json.dumps(tables, indent=0, sort_keys=True) + "\n")
        sizes = {k: len(v) for k, v in tables.items()}
        print(f"{language}: {len(rows)} files, {len(units)} units -> {path} {sizes}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["javascript", "java"])
