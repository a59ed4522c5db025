"""Column contracts of the Parquet datasets (and so of the catalog's per-row tables)."""

from __future__ import annotations

import pyarrow as pa

SOURCE_FILES = pa.schema(
    [
        ("language", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("size_bytes", pa.int64()),
        ("skip_reason", pa.string()),
        ("text", pa.large_string()),
    ]
)

CODE_UNITS = pa.schema(
    [
        ("id", pa.string()),
        ("language", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("name", pa.string()),
        ("code", pa.large_string()),
        ("docstring", pa.string()),
        ("start_line", pa.int64()),
        ("end_line", pa.int64()),
    ]
)

AST_CORPUS = pa.schema(
    [
        ("id", pa.string()),
        ("language", pa.string()),
        ("name", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("docstring", pa.string()),
        ("renamed_code", pa.large_string()),
        ("rename_map", pa.string()),
        ("mode", pa.string()),
        ("ast_text", pa.large_string()),
        ("n_tokens", pa.int64()),
    ]
)

NL_AST_PAIRS = pa.schema(
    [
        ("id", pa.string()),
        ("language", pa.string()),
        ("name", pa.string()),
        ("nl", pa.string()),
        ("target_code", pa.large_string()),
        ("mode", pa.string()),
        ("ast_text", pa.large_string()),
        ("n_tokens", pa.int64()),
    ]
)


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
