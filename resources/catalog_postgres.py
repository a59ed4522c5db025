"""The catalog on PostgreSQL, for many writers on many machines: the DuckDB catalog's tables and SQL, through psycopg.

Each write is one transaction. Writers of the same partition queue on a transaction-scoped advisory lock (two
backfills of one slice would otherwise both delete the old rows and both insert, since neither sees the other's
uncommitted rows); writers of different partitions run side by side. ``CREATE TABLE IF NOT EXISTS`` races in
PostgreSQL (two transactions may both find the table missing and one fails on the catalog's unique index), so the
first creation of a table is serialized on an advisory lock too. A rebuild takes the catalog-wide lock exclusively,
every writer shares it.

Per-row tables come from the artifact's Parquet file: Arrow scalars map to their PostgreSQL types, lists of scalars
to arrays (``TEXT[]``, ``INTEGER[]`` ...), and anything nested deeper (structs, maps, lists of lists) to ``JSONB``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql
from psycopg.adapt import Loader
from psycopg.types.json import Jsonb

from resources.catalog_dialect import to_postgres
from resources.catalog_errors import CatalogLockTimeout, CatalogUnavailable

# The catalog's tables, in PostgreSQL's types (DuckDB's are in resources/catalog.py; the columns are the same).
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS artifacts (
        asset_key TEXT, partition TEXT, data_version TEXT, path TEXT,
        upstream TEXT, created_at TIMESTAMP, run_id TEXT, rows BIGINT)""",
    """CREATE TABLE IF NOT EXISTS training_metrics (
        asset_key TEXT, partition TEXT, run_id TEXT, step BIGINT, metric TEXT, value DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS eval_metrics (
        asset_key TEXT, partition TEXT, run_id TEXT, metric TEXT, value DOUBLE PRECISION, created_at TIMESTAMP)""",
    "ALTER TABLE eval_metrics ADD COLUMN IF NOT EXISTS n BIGINT",
    "ALTER TABLE eval_metrics ADD COLUMN IF NOT EXISTS ci_low DOUBLE PRECISION",
    "ALTER TABLE eval_metrics ADD COLUMN IF NOT EXISTS ci_high DOUBLE PRECISION",
    "ALTER TABLE eval_metrics ADD COLUMN IF NOT EXISTS split TEXT",
    """CREATE TABLE IF NOT EXISTS skipped_inputs (
        asset_key TEXT, partition TEXT, run_id TEXT, reason TEXT, count BIGINT, created_at TIMESTAMP)""",
]
BASE_TABLES = ("artifacts", "training_metrics", "eval_metrics", "skipped_inputs")
# Marks the catalog's tables, so that a rebuild or an export never touches others in the same database (a Dagster
# instance's, say).
TABLE_COMMENT = "astforge catalog"
# Advisory locks live in one namespace (the first key) so that they cannot meet another application's.
LOCK_NAMESPACE = 0x61737466  # "astf"
_CATALOG_LOCK = 0
_COPY_BATCH_ROWS = 8192


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class _NumberLoader(Loader):
    """NUMERIC results (``sum(bigint)``, ``avg``) as int or float, the Python types DuckDB's answers have."""

    def load(self, data) -> int | float:
        value = Decimal(bytes(data).decode())
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)


def pg_type(arrow: pa.DataType) -> str:
    """The PostgreSQL column type of an Arrow type."""
    t = pa.types
    if t.is_dictionary(arrow):
        return pg_type(arrow.value_type)
    if t.is_list(arrow) or t.is_large_list(arrow) or t.is_fixed_size_list(arrow):
        inner = arrow.value_type
        nested = t.is_nested(inner) or t.is_dictionary(inner) and t.is_nested(inner.value_type)
        return "JSONB" if nested else f"{pg_type(inner)}[]"
    if t.is_nested(arrow):  # struct, map, union
        return "JSONB"
    if t.is_boolean(arrow):
        return "BOOLEAN"
    if t.is_int8(arrow) or t.is_int16(arrow) or t.is_uint8(arrow):
        return "SMALLINT"
    if t.is_int32(arrow) or t.is_uint16(arrow):
        return "INTEGER"
    if t.is_int64(arrow) or t.is_uint32(arrow):
        return "BIGINT"
    if t.is_uint64(arrow):
        return "NUMERIC(20)"
    if t.is_float16(arrow) or t.is_float32(arrow):
        return "REAL"
    if t.is_float64(arrow):
        return "DOUBLE PRECISION"
    if t.is_decimal(arrow):
        return f"NUMERIC({arrow.precision}, {arrow.scale})"
    if t.is_timestamp(arrow):
        return "TIMESTAMPTZ" if arrow.tz else "TIMESTAMP"
    if t.is_date(arrow):
        return "DATE"
    if t.is_time(arrow):
        return "TIME"
    if t.is_binary(arrow) or t.is_large_binary(arrow) or t.is_fixed_size_binary(arrow):
        return "BYTEA"
    if t.is_string(arrow) or t.is_large_string(arrow) or t.is_null(arrow) or str(arrow) == "string_view":
        return "TEXT"
    raise TypeError(f"no PostgreSQL type for the Arrow type {arrow} (a catalog table column)")


class PostgresSession:
    """One transaction on the catalog; the same calls as the DuckDB catalog's session."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn

    def execute(self, query: str, params: Sequence = ()) -> None:
        self.conn.execute(to_postgres(query), list(params))

    def executemany(self, query: str, rows: Sequence[Sequence]) -> None:
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(to_postgres(query), [list(r) for r in rows])

    def fetch(self, query: str, params: Sequence | None = None) -> list[dict]:
        cur = self.conn.execute(to_postgres(query), list(params or []))
        if cur.description is None:
            return []
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def lock(self, *keys: str, shared: bool = False) -> None:
        """Transaction-scoped advisory locks, taken in the order given."""
        fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        for key in keys:
            if key == "catalog":
                self.conn.execute(f"SELECT {fn}(%s, %s)", [LOCK_NAMESPACE, _CATALOG_LOCK])
            else:
                self.conn.execute(f"SELECT {fn}(%s, hashtext(%s))", [LOCK_NAMESPACE, key])

    def table_exists(self, table: str) -> bool:
        # resolved through the search path, as CREATE TABLE and every query resolve it
        return self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f'"{table}"']).fetchone()[0]

    def tables(self) -> list[str]:
        """The catalog's tables (marked as such) in the schema it writes to (the first of the search path)."""
        return [r[0] for r in self.conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r' "
            "AND obj_description(c.oid, 'pg_class') = %s ORDER BY c.relname",
            [TABLE_COMMENT]).fetchall()]

    def _mark(self, table: str) -> None:
        self.conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(table),
                                                                      sql.Literal(TABLE_COMMENT)))

    def create_base_tables(self) -> None:
        for stmt in SCHEMA:
            self.conn.execute(stmt)
        for table in BASE_TABLES:
            self._mark(table)

    def count(self, table: str) -> int:
        return self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]

    def ensure_schema(self) -> None:
        if all(self.table_exists(t) for t in BASE_TABLES):
            return
        self.lock("create:catalog")
        self.create_base_tables()

    def replace_rows(self, table: str, partition: str, parquet: Path, exclude: tuple[str, ...],
                     asset_key: str | None = None) -> None:
        """The partition's rows of ``table`` (only ``asset_key``'s, when given) become the Parquet file's."""
        source = pq.ParquetFile(parquet)
        fields = [f for f in source.schema_arrow if f.name not in exclude]
        self.lock(f"rows:{table}:{partition}:{asset_key or ''}")
        if not self.table_exists(table):
            self.lock(f"create:{table}")
            columns = [sql.SQL("partition TEXT")] + [
                sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(pg_type(f.type))) for f in fields]
            self.conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                sql.Identifier(table), sql.SQL(", ").join(columns)))
            self._mark(table)
        else:  # columns the rows gained since the table was made: added, older rows read NULL there
            have = {r[0] for r in self.conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s", [table]).fetchall()}
            for f in fields:
                if f.name not in have:
                    self.conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                        sql.Identifier(table), sql.Identifier(f.name), sql.SQL(pg_type(f.type))))
        if asset_key is None:
            self.conn.execute(sql.SQL("DELETE FROM {} WHERE partition = %s").format(sql.Identifier(table)),
                              [partition])
        else:
            self.conn.execute(sql.SQL("DELETE FROM {} WHERE partition = %s AND asset_key = %s").format(
                sql.Identifier(table)), [partition, asset_key])
        self.copy_rows(table, partition, source, fields)

    def copy_rows(self, table: str, partition: str, source: pq.ParquetFile, fields: list[pa.Field]) -> None:
        names = [f.name for f in fields]
        as_json = [pg_type(f.type) == "JSONB" for f in fields]
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, ["partition", *names])))
        with self.conn.cursor() as cur, cur.copy(statement) as copy:
            for batch in source.iter_batches(batch_size=_COPY_BATCH_ROWS, columns=names):
                columns = [batch.column(n).to_pylist() for n in names]
                for j, json_column in enumerate(as_json):
                    if json_column:
                        columns[j] = [None if v is None else Jsonb(v) for v in columns[j]]
                for row in zip(*columns):
                    copy.write_row((partition, *row))


class PostgresCatalog:
    """Connections to a catalog on PostgreSQL: one per operation, as the DuckDB catalog opens its file."""

    def __init__(self, url: str, lock_timeout_s: float, logger: logging.Logger | None = None):
        self.url = url
        self.lock_timeout_s = lock_timeout_s
        self.logger = logger or logging.getLogger("astforge.catalog")

    @property
    def location(self) -> str:
        return redacted(self.url)

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        try:
            conn = psycopg.connect(self.url, connect_timeout=30, application_name="astforge-catalog")
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CatalogUnavailable(
                f"cannot connect to the catalog database {self.location} ({first}). Check that the server runs "
                f"and the URL (the resource's `url` setting or ASTFORGE_CATALOG_URL) is right."
            ) from exc
        conn.adapters.register_loader("numeric", _NumberLoader)
        with conn:
            # an advisory lock held past this means a stuck writer: give up, as the DuckDB catalog's file lock does
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(self.lock_timeout_s * 1000)}ms")))
            conn.commit()
            try:
                yield conn
            except psycopg.errors.LockNotAvailable as exc:
                raise CatalogLockTimeout(
                    f"waited {self.lock_timeout_s:.0f}s for a lock on the catalog {self.location}: another writer "
                    f"(or a rebuild) holds it; see pg_locks / pg_stat_activity (application_name astforge-catalog)"
                ) from exc

    @contextmanager
    def transaction(self, *, schema: bool = True) -> Iterator[PostgresSession]:
        with self.connect() as conn, conn.transaction():
            session = PostgresSession(conn)
            if schema:
                session.ensure_schema()
            yield session

    @contextmanager
    def write(self) -> Iterator[PostgresSession]:
        """A writing transaction: shares the catalog-wide lock, which a rebuild takes alone."""
        with self.transaction(schema=False) as session:
            session.lock("catalog", shared=True)
            session.ensure_schema()
            yield session

    def query(self, query: str, params: Sequence | None = None) -> list[dict]:
        with self.transaction() as session:
            return session.fetch(query, params)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The catalog-wide lock, held exclusively (writers wait) until the block ends."""
        with self.transaction() as session:
            session.lock("catalog")
            yield
