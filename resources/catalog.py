"""The DuckDB catalog: artifacts, metrics and per-row tables, queryable with SQL.

DuckDB lets one process write a database file at a time, and a writer also shuts readers in
other processes out. A backfill runs one process per slice, so every connection here is short,
taken under an exclusive file lock, and each partition's rows are replaced in one transaction
(delete, then insert): concurrent runs queue for a moment instead of failing, and a failure
anywhere in the transaction leaves the previous rows in place.

The catalog is an index: every artifact folder carries a manifest (resources/artifacts.py), so a
damaged catalog is rebuilt from the artifact store (resources/catalog_rebuild.py).

Many writers on many machines: the same tables on PostgreSQL (resources/catalog_postgres.py), chosen by the
resource's ``url`` (or ``ASTFORGE_CATALOG_URL``): ``duckdb:///path/catalog.duckdb`` or
``postgresql://user:password@host:port/database``. The public methods below are the same for both; each backend
gives a session (one transaction) that runs the catalog's SQL and replaces a partition's rows.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import PrivateAttr

from ml.stats import Estimate
from resources.artifacts import TRAINING_METRICS, ensure_local, write_json_atomic
from resources.catalog_errors import CatalogDamaged, CatalogLockTimeout, CatalogUnavailable
from resources.catalog_postgres import PostgresCatalog
from resources.settings import astforge_home

__all__ = ["CATALOG_URL_ENV", "Catalog", "CatalogDamaged", "CatalogLockTimeout", "CatalogUnavailable",
           "DuckDBCatalog"]

# Where backfill subprocesses and `dagster dev` learn the catalog's URL when the resource does not set one.
CATALOG_URL_ENV = "ASTFORGE_CATALOG_URL"
_POSTGRES_SCHEMES = ("postgresql", "postgres")

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS artifacts (
        asset_key VARCHAR, partition VARCHAR, data_version VARCHAR, path VARCHAR,
        upstream VARCHAR, created_at TIMESTAMP, run_id VARCHAR, rows BIGINT)""",
    """CREATE TABLE IF NOT EXISTS training_metrics (
        asset_key VARCHAR, partition VARCHAR, run_id VARCHAR, step BIGINT, metric VARCHAR, value DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS eval_metrics (
        asset_key VARCHAR, partition VARCHAR, run_id VARCHAR, metric VARCHAR, value DOUBLE,
        created_at TIMESTAMP)""",
    # Each figure's evidence (ml/stats.py): n, the 95% interval and the split; columns added to older catalogs too.
    "ALTER TABLE eval_metrics ADD COLUMN IF NOT EXISTS n BIGINT",
    "ALTER TABLE eval_metrics ADD COLUMN IF NOT EXISTS ci_low DOUBLE",
    "ALTER TABLE eval_metrics ADD COLUMN IF NOT EXISTS ci_high DOUBLE",
    "ALTER TABLE eval_metrics ADD COLUMN IF NOT EXISTS split VARCHAR",
    """CREATE TABLE IF NOT EXISTS skipped_inputs (
        asset_key VARCHAR, partition VARCHAR, run_id VARCHAR, reason VARCHAR, count BIGINT,
        created_at TIMESTAMP)""",
]

EVAL_METRIC_COLUMNS = "asset_key, partition, run_id, metric, value, n, ci_low, ci_high, split, created_at"


def _metric_row(name: str, value: Estimate) -> list:
    """[value, n, ci_low, ci_high, split] of one metric; a bare number has no evidence, so no row."""
    if not isinstance(value, Estimate):
        raise TypeError(f"eval_metrics: {name} = {value!r} is a bare number; a metric is an ml.stats.Estimate (n, "
                        "95% interval, split). A knob chosen on dev belongs in the report and metadata, not here.")
    return [_finite(value.value), int(value.n), _finite(value.ci_low), _finite(value.ci_high), value.split]


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


_IDENT_OK = set("abcdefghijklmnopqrstuvwxyz_0123456789")
REBUILD_COMMAND = "make catalog-rebuild"
_WAIT_LOG_AFTER_S = 2.0  # a backfill's writers queue for milliseconds: only a longer wait is worth a line
_WAIT_LOG_EVERY_S = 30.0
# DuckDB's words for a file it cannot read back (as opposed to one another process holds).
_DAMAGE_MARKERS = ("not a valid duckdb database file", "could not read enough bytes", "corrupt", "checksum",
                   "replaying wal", "serialization error", "was created with")


def _ident(name: str) -> str:
    if not name or not set(name) <= _IDENT_OK:
        raise ValueError(f"not a catalog table name: {name!r}")
    return name


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _lock_conflict(exc: Exception) -> bool:
    text = str(exc).lower()
    return "could not set lock" in text or "conflicting lock" in text


def _damaged(exc: Exception) -> bool:
    text = str(exc).lower()
    # Only the error kinds DuckDB raises for unreadable storage: a query error that mentions a column named
    # "checksum" is not a damaged file.
    storage = (duckdb.IOException, duckdb.InternalException, duckdb.SerializationException)
    return isinstance(exc, storage) and not _lock_conflict(exc) and any(m in text for m in _DAMAGE_MARKERS)


def rebuild_hint(db: Path) -> str:
    default = astforge_home() / "catalog.duckdb"
    cli = ".venv/bin/python -m resources.catalog_rebuild" + ("" if db == default else f" --catalog {db}")
    return f"`{REBUILD_COMMAND}` (or `{cli}`)"


def damaged_error(db: Path, exc: Exception) -> CatalogDamaged:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CatalogDamaged(
        f"The catalog {db} is damaged or unreadable ({first}). It is only an index: the artifacts are intact "
        f"(each artifact folder holds its _manifest.json). Rebuild the catalog from them with {rebuild_hint(db)}, "
        f"then run again."
    )


class _DuckDBSession:
    """One transaction on the DuckDB file; the same calls as resources/catalog_postgres.PostgresSession."""

    def __init__(self, catalog: DuckDBCatalog, con: duckdb.DuckDBPyConnection):
        self.catalog, self.con = catalog, con

    def execute(self, sql: str, params: Sequence = ()) -> None:
        self.con.execute(sql, list(params))

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        if rows:
            self.con.executemany(sql, [list(r) for r in rows])

    def fetch(self, sql: str, params: Sequence | None = None) -> list[dict]:
        cur = self.con.execute(sql, list(params or []))
        cols = [d[0] for d in cur.description] if cur.description else []
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def replace_rows(self, table: str, partition: str, parquet: Path, exclude: tuple[str, ...],
                     asset_key: str | None = None) -> None:
        self.catalog._replace_rows(self.con, table, partition, parquet, exclude, asset_key)


class DuckDBCatalog(dg.ConfigurableResource):
    """The catalog resource. Despite the name (kept: assets and users refer to it), it holds the catalog in a
    DuckDB file or in a PostgreSQL database, by ``url``."""

    # duckdb:///abs/path/catalog.duckdb | postgresql://user:password@host:port/database. Empty: `path` when set,
    # else $ASTFORGE_CATALOG_URL, else $ASTFORGE_HOME/catalog.duckdb.
    url: str = ""
    path: str = ""  # the DuckDB file (the setting before `url`; `url` wins)
    lock_timeout_s: float = 300.0
    _run_id: str | None = PrivateAttr(default=None)
    _log: object = PrivateAttr(default=None)

    @property
    def resolved_url(self) -> str:
        if self.url:
            return self.url
        if self.path:
            return f"duckdb://{Path(self.path).expanduser().resolve()}"
        return os.environ.get(CATALOG_URL_ENV, "").strip() or f"duckdb://{astforge_home() / 'catalog.duckdb'}"

    @property
    def backend(self) -> str:
        """``duckdb`` or ``postgresql``."""
        scheme, sep, _ = self.resolved_url.partition("://")
        if sep and scheme == "duckdb":
            return "duckdb"
        if sep and scheme in _POSTGRES_SCHEMES:
            return "postgresql"
        raise ValueError(f"catalog url {self.resolved_url!r}: expected duckdb:///path/to/catalog.duckdb or "
                         f"postgresql://user:password@host:port/database (the resource's `url` or {CATALOG_URL_ENV})")

    @property
    def db_path(self) -> Path:
        """The DuckDB file (a PostgreSQL catalog has none: see ``location``)."""
        if self.backend != "duckdb":
            raise ValueError(f"the catalog is on PostgreSQL ({self.location}), not in a DuckDB file; export it to "
                             f"one with `python -m resources.catalog_export --to catalog.duckdb`")
        return Path(self.resolved_url.removeprefix("duckdb://")).expanduser().resolve()

    @property
    def location(self) -> str:
        """Where the catalog is, for messages: the DuckDB file, or the PostgreSQL URL without its password."""
        return str(self.db_path) if self.backend == "duckdb" else self._postgres().location

    def _postgres(self) -> PostgresCatalog:
        return PostgresCatalog(self.resolved_url, self.lock_timeout_s, self._logger())

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Open the catalog once before the step's work: a damaged file fails the step now, not after hours of it."""
        self._run_id = context.run_id
        self._log = context.log
        if self.backend == "postgresql":
            with self._postgres().transaction():
                pass
            return
        with self.connect():
            pass

    def _logger(self):
        return self._log or logging.getLogger("astforge.catalog")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The catalog's exclusive file lock (``catalog.lock``), which every connection and the rebuild take.
        The holder writes who it is into the lock file, so a waiter can say whom it waits for.
        On PostgreSQL: the catalog-wide advisory lock, which every writer shares."""
        if self.backend == "postgresql":
            with self._postgres().locked():
                yield
            return
        db = self.db_path
        db.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        deadline = started + self.lock_timeout_s
        next_log = started + _WAIT_LOG_AFTER_S
        with open(db.with_suffix(".lock"), "a+") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    now = time.monotonic()
                    if now > deadline:
                        raise CatalogLockTimeout(
                            f"waited {self.lock_timeout_s:.0f}s for the catalog lock on {db}, held by "
                            f"{self._holder(lock)}"
                        ) from None
                    if now >= next_log:
                        self._logger().info(
                            f"waiting {now - started:.0f}s for the catalog lock on {db}, held by "
                            f"{self._holder(lock)} (gives up after {self.lock_timeout_s:.0f}s)"
                        )
                        next_log = now + _WAIT_LOG_EVERY_S
                    time.sleep(0.05)
            waited = time.monotonic() - started
            if waited >= _WAIT_LOG_AFTER_S:
                self._logger().info(f"got the catalog lock on {db} after {waited:.0f}s")
            try:
                lock.seek(0)
                lock.truncate()
                lock.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run_id": self._run_id,
                                       "since": _now().isoformat(timespec="seconds")}))
                lock.flush()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _holder(lock) -> str:
        try:
            lock.seek(0)
            who = json.loads(lock.read() or "{}")
        except (OSError, ValueError):
            who = {}
        if not who:
            return "another process"
        run = f", run {who['run_id']}" if who.get("run_id") else ""
        return f"pid {who.get('pid')} on {who.get('host')}{run} since {who.get('since')}Z"

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the catalog under its lock: DuckDB's, or on PostgreSQL a psycopg connection."""
        if self.backend == "postgresql":
            with self._postgres().connect() as conn:
                yield conn
            return
        db = self.db_path
        with self.locked():
            con = self._open(db, time.monotonic() + self.lock_timeout_s)
            try:
                try:
                    self._check_length(con, db)
                    for stmt in _SCHEMA:
                        con.execute(stmt)
                except duckdb.Error as exc:
                    raise damaged_error(db, exc) from exc
                try:
                    yield con
                except duckdb.Error as exc:
                    # A file that opens can still fail on a block read further in.
                    if _damaged(exc):
                        raise damaged_error(db, exc) from exc
                    raise
            finally:
                con.close()

    @staticmethod
    def _check_length(con: duckdb.DuckDBPyConnection, db: Path) -> None:
        """A file cut short (a full disk, a copy that stopped) may still open when its metadata sits in the part
        left, and fail only when a step reads a lost block: compare its length with the blocks DuckDB counts."""
        _, _, block_size, _, used_blocks, *_ = con.execute("PRAGMA database_size").fetchone()
        have = db.stat().st_size if db.exists() else 0
        # Each block in use has its own place in the file (free ones at the end are cut off at a checkpoint), and
        # the file headers come on top: a lower bound, never a false alarm.
        if have and have < int(block_size) * int(used_blocks):
            raise damaged_error(db, duckdb.IOException(
                f"the file has {have} bytes, less than its {used_blocks} blocks in use of {block_size} bytes"))

    def _open(self, db: Path, deadline: float) -> duckdb.DuckDBPyConnection:
        # A process outside astforge (a duckdb shell, a notebook) may hold the file: wait for it.
        # Any other failure to open is a damaged or unreadable file: say so at once, never wait on it.
        delay, logged = 0.05, False
        while True:
            try:
                return duckdb.connect(str(db))
            except duckdb.Error as exc:
                if not _lock_conflict(exc):
                    if "permission denied" in str(exc).lower():
                        raise CatalogDamaged(f"cannot open the catalog {db}: {exc}") from exc
                    raise damaged_error(db, exc) from exc
                if time.monotonic() > deadline:
                    raise CatalogLockTimeout(f"catalog {db} is held by another process: {exc}") from exc
                if not logged:
                    self._logger().info(f"the catalog {db} is open in a process outside astforge; waiting for it "
                                        f"(DuckDB: {str(exc).splitlines()[0]})")
                    logged = True
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
        created_at: datetime | None = None,
    ) -> None:
        """Register an artifact and, in the same transaction, replace the partition's rows and skip counts.
        ``table_asset_key``: the table is shared between assets; replace only the rows whose ``asset_key`` is it.
        ``created_at``: the time the artifact's manifest records (default: now)."""
        now = created_at or _now()
        with self._transaction() as tx:
            if table and parquet is not None:
                tx.replace_rows(_ident(table), partition, parquet, exclude_columns, table_asset_key)
            tx.execute("DELETE FROM skipped_inputs WHERE asset_key = ? AND partition = ?", [asset_key, partition])
            tx.executemany(
                "INSERT INTO skipped_inputs VALUES (?, ?, ?, ?, ?, ?)",
                [[asset_key, partition, run_id, reason, int(count), now]
                 for reason, count in sorted((skipped or {}).items())],
            )
            tx.execute(
                "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [asset_key, partition, data_version, str(path), json.dumps(dict(upstream or {}), sort_keys=True),
                 now, run_id, rows],
            )

    @contextmanager
    def _transaction(self) -> Iterator[_DuckDBSession]:
        """A writing session: everything in it commits together or not at all."""
        if self.backend == "postgresql":
            with self._postgres().write() as session:
                yield session
            return
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield _DuckDBSession(self, con)
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
        self._add_new_columns(con, table, parquet, star)
        if asset_key is None:
            con.execute(f"DELETE FROM {table} WHERE partition = ?", [partition])
        else:
            con.execute(f"DELETE FROM {table} WHERE partition = ? AND asset_key = ?", [partition, asset_key])
        self._insert_rows(con, table, partition, parquet, star)

    @staticmethod
    def _add_new_columns(con: duckdb.DuckDBPyConnection, table: str, parquet: Path, star: str) -> None:
        """Columns the rows gained since the table was made (e.g. ``split``, ``group_key``) are added to it, so a
        catalog made by an older version takes new rows; older rows read NULL there."""
        have = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
        for name, kind, *_ in con.execute(f"DESCRIBE SELECT {star} FROM read_parquet(?)", [str(parquet)]).fetchall():
            if name not in have:
                con.execute(f'ALTER TABLE {table} ADD COLUMN "{_ident(name)}" {kind}')

    def _insert_rows(
        self, con: duckdb.DuckDBPyConnection, table: str, partition: str, parquet: Path, star: str
    ) -> None:
        con.execute(
            f"INSERT INTO {table} BY NAME SELECT ?::VARCHAR AS partition, {star} FROM read_parquet(?)",
            [partition, str(parquet)],
        )

    def write_metrics(
        self, *, asset_key: str, partition: str, run_id: str, metrics: Mapping[str, Estimate]
    ) -> None:
        """One row per metric, each an :class:`ml.stats.Estimate` with its ``n``, ``ci_low``, ``ci_high`` and ``split``
        (a bare number is refused: a figure without its evidence)."""
        now = _now()
        with self._transaction() as tx:
            tx.execute("DELETE FROM eval_metrics WHERE asset_key = ? AND partition = ? AND run_id = ?",
                       [asset_key, partition, run_id])
            tx.executemany(
                f"INSERT INTO eval_metrics ({EVAL_METRIC_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [[asset_key, partition, run_id, k, *_metric_row(k, v), now] for k, v in sorted(metrics.items())],
            )

    def write_training_curve(
        self, *, asset_key: str, partition: str, run_id: str, points: list[tuple[int, str, float]]
    ) -> None:
        """The curve of the run's training; also kept as ``_training_metrics.json`` in the folder this run
        registered (when it did), so that a rebuilt catalog has it too."""
        rows = [[int(s), m, float(v)] for s, m, v in points]
        with self._transaction() as tx:
            tx.execute("DELETE FROM training_metrics WHERE asset_key = ? AND partition = ? AND run_id = ?",
                       [asset_key, partition, run_id])
            tx.executemany(
                "INSERT INTO training_metrics VALUES (?, ?, ?, ?, ?, ?)",
                [[asset_key, partition, run_id, *r] for r in rows],
            )
            found = tx.fetch(
                "SELECT path FROM artifacts WHERE asset_key = ? AND partition = ? AND run_id = ? "
                "ORDER BY created_at DESC LIMIT 1", [asset_key, partition, run_id])
        if found and Path(found[0]["path"]).is_dir():
            write_json_atomic(Path(found[0]["path"]) / TRAINING_METRICS, {"run_id": run_id, "points": rows})

    # -- reads --------------------------------------------------------------------------------

    def latest_artifact(self, asset_key: str, partition: str) -> dict | None:
        rows = self.query(
            "SELECT * FROM artifacts WHERE asset_key = ? AND partition = ? ORDER BY created_at DESC LIMIT 1",
            [asset_key, partition],
        )
        return rows[0] if rows else None

    def require_artifact(self, asset_key: str, partition: str) -> dict:
        found = self.latest_artifact(asset_key, partition)
        # A version this machine lacks comes from the object store when there is one (resources/artifacts.py).
        if found is None or not ensure_local(Path(found["path"])):
            have = [r["partition"] for r in self.query(
                "SELECT DISTINCT partition FROM artifacts WHERE asset_key = ? ORDER BY partition", [asset_key])]
            where = f"it has the slices {', '.join(have)}" if have else "it has none yet"
            raise dg.Failure(
                f"no materialization of {asset_key} for slice {partition!r} in the catalog {self.location} "
                f"({where}); materialize {asset_key} first"
            )
        return found

    def latest_training_curve(self, asset_key: str, partition: str) -> list[tuple[int, str, float]]:
        """``(step, metric, value)`` of the training run that made the latest artifact of ``asset_key`` for
        ``partition``, by step (empty when there is no artifact or that run logged no curve)."""
        rows = self.query(
            "SELECT step, metric, value FROM training_metrics WHERE asset_key = ? AND partition = ? AND run_id = ("
            "SELECT run_id FROM artifacts WHERE asset_key = ? AND partition = ? ORDER BY created_at DESC LIMIT 1) "
            "ORDER BY step, metric", [asset_key, partition, asset_key, partition])
        return [(int(r["step"]), r["metric"], float(r["value"])) for r in rows]

    def query(self, sql: str, params: list | None = None) -> list[dict]:
        """Rows as dicts. ``?`` placeholders; DuckDB's SQL (on PostgreSQL: see resources/catalog_dialect.py)."""
        if self.backend == "postgresql":
            return self._postgres().query(sql, params)
        with self.connect() as con:
            cur = con.execute(sql, params or [])
            cols = [d[0] for d in cur.description] if cur.description else []
            return [dict(zip(cols, row)) for row in cur.fetchall()]


# The resource by what it is now; DuckDBCatalog stays the name assets and existing configs use.
Catalog = DuckDBCatalog
