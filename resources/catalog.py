"""The DuckDB catalog: artifacts, metrics and per-row tables, queryable with SQL.

DuckDB lets one process write a database file at a time, and a writer also shuts readers in
other processes out. A backfill runs one process per slice, so every connection here is short,
taken under an exclusive file lock, and each partition's rows are replaced in one transaction
(delete, then insert): concurrent runs queue for a moment instead of failing, and a failure
anywhere in the transaction leaves the previous rows in place.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb

from resources.settings import astforge_home

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS artifacts (
        asset_key VARCHAR, partition VARCHAR, data_version VARCHAR, path VARCHAR,
        upstream VARCHAR, created_at TIMESTAMP, run_id VARCHAR, rows BIGINT)""",
    """CREATE TABLE IF NOT EXISTS training_metrics (
        asset_key VARCHAR, partition VARCHAR, run_id VARCHAR, step BIGINT, metric VARCHAR, value DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS eval_metrics (
        asset_key VARCHAR, partition VARCHAR, run_id VARCHAR, metric VARCHAR, value DOUBLE,
        created_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS skipped_inputs (
        asset_key VARCHAR, partition VARCHAR, run_id VARCHAR, reason VARCHAR, count BIGINT,
        created_at TIMESTAMP)""",
]

_IDENT_OK = set("abcdefghijklmnopqrstuvwxyz_0123456789")


def _ident(name: str) -> str:
    if not name or not set(name) <= _IDENT_OK:
        raise ValueError(f"not a catalog table name: {name!r}")
    return name


class CatalogLockTimeout(RuntimeError):
    pass


class DuckDBCatalog(dg.ConfigurableResource):
    path: str = ""  # empty: $ASTFORGE_HOME/catalog.duckdb
    lock_timeout_s: float = 300.0

    @property
    def db_path(self) -> Path:
        return Path(self.path).expanduser().resolve() if self.path else astforge_home() / "catalog.duckdb"

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        db = self.db_path
        db.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        with open(db.with_suffix(".lock"), "a+") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise CatalogLockTimeout(
                            f"waited {self.lock_timeout_s:.0f}s for the catalog lock on {db}"
                        ) from None
                    time.sleep(0.05)
            try:
                con = self._open(db, deadline)
                try:
                    for stmt in _SCHEMA:
                        con.execute(stmt)
                    yield con
                finally:
                    con.close()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _open(db: Path, deadline: float) -> duckdb.DuckDBPyConnection:
        # A process outside astforge (a duckdb shell, a notebook) may hold the file: wait for it.
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(db))
            except duckdb.IOException as exc:
                if time.monotonic() > deadline:
                    raise CatalogLockTimeout(f"catalog {db} is held by another process: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- writes -------------------------------------------------------------------------------

    def publish_partition(
        self,
        *,
        asset_key: str,
        partition: str,
        data_version: str,
        path: Path,
        run_id: str,
        rows: int,
        upstream: Mapping[str, str] | None = None,
        table: str | None = None,
        parquet: Path | None = None,
        exclude_columns: tuple[str, ...] = (),
        skipped: Mapping[str, int] | None = None,
        table_asset_key: str | None = None,
    ) -> None:
        """Register an artifact and, in the same transaction, replace the partition's rows and skip counts.
        ``table_asset_key``: the table is shared between assets; replace only the rows whose ``asset_key`` is it."""
        now = datetime.now(UTC).replace(tzinfo=None)
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                if table and parquet is not None:
                    self._replace_rows(con, _ident(table), partition, parquet, exclude_columns, table_asset_key)
                con.execute(
                    "DELETE FROM skipped_inputs WHERE asset_key = ? AND partition = ?", [asset_key, partition]
                )
                for reason, count in sorted((skipped or {}).items()):
                    con.execute(
                        "INSERT INTO skipped_inputs VALUES (?, ?, ?, ?, ?, ?)",
                        [asset_key, partition, run_id, reason, int(count), now],
                    )
                con.execute(
                    "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        asset_key,
                        partition,
                        data_version,
                        str(path),
                        json.dumps(dict(upstream or {}), sort_keys=True),
                        now,
                        run_id,
                        rows,
                    ],
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def _replace_rows(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        partition: str,
        parquet: Path,
        exclude: tuple[str, ...],
        asset_key: str | None = None,
    ) -> None:
        star = f"* EXCLUDE ({', '.join(_ident(c) for c in exclude)})" if exclude else "*"
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {table} AS "
            f"SELECT ''::VARCHAR AS partition, {star} FROM read_parquet(?) LIMIT 0",
            [str(parquet)],
        )
        if asset_key is None:
            con.execute(f"DELETE FROM {table} WHERE partition = ?", [partition])
        else:
            con.execute(f"DELETE FROM {table} WHERE partition = ? AND asset_key = ?", [partition, asset_key])
        self._insert_rows(con, table, partition, parquet, star)

    def _insert_rows(
        self, con: duckdb.DuckDBPyConnection, table: str, partition: str, parquet: Path, star: str
    ) -> None:
        con.execute(
            f"INSERT INTO {table} BY NAME SELECT ?::VARCHAR AS partition, {star} FROM read_parquet(?)",
            [partition, str(parquet)],
        )

    def write_metrics(
        self, *, asset_key: str, partition: str, run_id: str, metrics: Mapping[str, float]
    ) -> None:
        now = datetime.now(UTC).replace(tzinfo=None)
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            con.execute("DELETE FROM eval_metrics WHERE asset_key = ? AND partition = ? AND run_id = ?",
                        [asset_key, partition, run_id])
            con.executemany(
                "INSERT INTO eval_metrics VALUES (?, ?, ?, ?, ?, ?)",
                [[asset_key, partition, run_id, k, float(v), now] for k, v in sorted(metrics.items())],
            )
            con.execute("COMMIT")

    def write_training_curve(
        self, *, asset_key: str, partition: str, run_id: str, points: list[tuple[int, str, float]]
    ) -> None:
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            con.execute("DELETE FROM training_metrics WHERE asset_key = ? AND partition = ? AND run_id = ?",
                        [asset_key, partition, run_id])
            con.executemany(
                "INSERT INTO training_metrics VALUES (?, ?, ?, ?, ?, ?)",
                [[asset_key, partition, run_id, int(s), m, float(v)] for s, m, v in points],
            )
            con.execute("COMMIT")

    # -- reads --------------------------------------------------------------------------------

    def latest_artifact(self, asset_key: str, partition: str) -> dict | None:
        rows = self.query(
            "SELECT * FROM artifacts WHERE asset_key = ? AND partition = ? ORDER BY created_at DESC LIMIT 1",
            [asset_key, partition],
        )
        return rows[0] if rows else None

    def require_artifact(self, asset_key: str, partition: str) -> dict:
        found = self.latest_artifact(asset_key, partition)
        if found is None or not Path(found["path"]).exists():
            raise dg.Failure(
                f"no materialization of {asset_key} for slice {partition!r} in the catalog {self.db_path}; "
                f"materialize {asset_key} first"
            )
        return found

    def query(self, sql: str, params: list | None = None) -> list[dict]:
        with self.connect() as con:
            cur = con.execute(sql, params or [])
            cols = [d[0] for d in cur.description] if cur.description else []
            return [dict(zip(cols, row)) for row in cur.fetchall()]
