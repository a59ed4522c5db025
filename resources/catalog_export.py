"""Copy a PostgreSQL catalog into a DuckDB file, to query it with DuckDB:
``python -m resources.catalog_export --to catalog.duckdb [--catalog postgresql://...]``.

DuckDB's own ``postgres`` extension would read the tables in place, but it is downloaded on first use and this
machine (like many build hosts) reaches no extension repository; the export needs nothing beyond what astforge
installs. It reads every table in one snapshot (a repeatable-read transaction: writers carry on meanwhile) and
writes the file under a temporary name, renamed into place when complete. Arrays come back as DuckDB lists (the
types the DuckDB catalog has), JSONB as DuckDB's JSON, NUMERIC as DOUBLE.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
from psycopg import sql

from resources.catalog import DuckDBCatalog, _ident
from resources.catalog_postgres import PostgresSession

_BATCH_ROWS = 10_000
# PostgreSQL type (pg_type.typname) -> (DuckDB type, Arrow type)
_SCALARS: dict[str, tuple[str, pa.DataType]] = {
    "bool": ("BOOLEAN", pa.bool_()),
    "int2": ("SMALLINT", pa.int16()),
    "int4": ("INTEGER", pa.int32()),
    "int8": ("BIGINT", pa.int64()),
    "float4": ("FLOAT", pa.float32()),
    "float8": ("DOUBLE", pa.float64()),
    "numeric": ("DOUBLE", pa.float64()),
    "text": ("VARCHAR", pa.large_string()),
    "varchar": ("VARCHAR", pa.large_string()),
    "bpchar": ("VARCHAR", pa.large_string()),
    "timestamp": ("TIMESTAMP", pa.timestamp("us")),
    "timestamptz": ("TIMESTAMPTZ", pa.timestamp("us", tz="UTC")),
    "date": ("DATE", pa.date32()),
    "time": ("TIME", pa.time64("us")),
    "bytea": ("BLOB", pa.large_binary()),
    "json": ("JSON", pa.large_string()),
    "jsonb": ("JSON", pa.large_string()),
}


def _column(name: str, typname: str) -> tuple[str, pa.DataType, sql.Composable]:
    """DuckDB type, Arrow type and the SELECT expression of a PostgreSQL column."""
    ident = sql.Identifier(name)
    if typname.startswith("_") and typname[1:] in _SCALARS:  # an array
        duck, arrow = _SCALARS[typname[1:]]
        cast = "::float8[]" if typname == "_numeric" else "::text[]" if typname in ("_json", "_jsonb") else ""
        return f"{duck}[]", pa.large_list(arrow), sql.SQL("{}" + cast).format(ident)
    if typname not in _SCALARS:
        # an unusual type (uuid, interval ...): its text form
        return "VARCHAR", pa.large_string(), sql.SQL("{}::text").format(ident)
    duck, arrow = _SCALARS[typname]
    cast = "::float8" if typname == "numeric" else "::text" if typname in ("json", "jsonb") else ""
    return duck, arrow, sql.SQL("{}" + cast).format(ident)


def export_to_duckdb(catalog: DuckDBCatalog, target: Path) -> dict[str, int]:
    """Every table of the PostgreSQL catalog into a new DuckDB file at ``target`` (replaced); rows per table."""
    if catalog.backend != "postgresql":
        raise ValueError(f"the catalog is already a DuckDB file ({catalog.location}): query it directly")
    target = Path(target).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".exporting")
    for stale in (partial, partial.with_name(partial.name + ".wal")):
        stale.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    duck = duckdb.connect(str(partial))
    try:
        with catalog._postgres().connect() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            for table in PostgresSession(conn).tables():
                counts[table] = _copy_table(conn, duck, _ident(table))
            conn.rollback()
        duck.execute("CHECKPOINT")
    finally:
        duck.close()
    os.replace(partial, target)
    return counts


def _copy_table(conn, duck: duckdb.DuckDBPyConnection, table: str) -> int:
    found = conn.execute(
        "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        [f'"{table}"']).fetchall()
    columns = [(name, *_column(name, typname)) for name, typname in found]
    duck.execute(f'CREATE TABLE "{table}" ({", ".join(f"{_quoted(n)} {d}" for n, d, _, _ in columns)})')
    schema = pa.schema([(n, a) for n, _, a, _ in columns])
    select = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(e for *_, e in columns), sql.Identifier(table))
    total = 0
    with conn.cursor(name=f"export_{table}") as cur:
        cur.execute(select)
        while rows := cur.fetchmany(_BATCH_ROWS):
            batch = pa.Table.from_arrays([pa.array([r[i] for r in rows], type=a) for i, a in enumerate(schema.types)],
                                         schema=schema)
            duck.register("export_batch", batch)
            duck.execute(f'INSERT INTO "{table}" SELECT * FROM export_batch')
            duck.unregister("export_batch")
            total += len(rows)
    return total


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resources.catalog_export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--to", required=True, help="the DuckDB file to write (replaced when it exists)")
    parser.add_argument("--catalog", default="", help="the PostgreSQL catalog's URL (default: $ASTFORGE_CATALOG_URL)")
    args = parser.parse_args(argv)
    catalog = DuckDBCatalog(url=args.catalog) if args.catalog else DuckDBCatalog()
    try:
        counts = export_to_duckdb(catalog, Path(args.to))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"exported {catalog.location} to {Path(args.to).resolve()}")
    for table, n in sorted(counts.items()):
        print(f"  {table:<20} {n:>9} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
