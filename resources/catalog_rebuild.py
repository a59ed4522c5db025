"""Rebuild the DuckDB catalog from the artifact store: ``make catalog-rebuild``, or
``python -m resources.catalog_rebuild [--catalog PATH] [--artifacts PATH]``.

The catalog is an index of the artifact folders; each folder's ``_manifest.json`` tells its registration (asset,
partition, data version, upstream, run, time, rows, and the table its ``rows.parquet`` feeds). From them:

- ``artifacts``: one row per version folder, as of its latest registration (earlier registrations of the very same
  content are not kept by the folder and so not restored);
- per-row tables (``code_units``, ``ast_corpus``, ``eval_results`` ...): each partition's rows from the parquet of
  its latest registration, exactly what publishing left there;
- ``skipped_inputs``: the skip counts of each asset and partition's latest registration;
- ``eval_metrics``: from each folder's flat ``metrics.json`` (the evaluation assets write the same numbers to both);
- ``training_metrics``: from each folder's ``_training_metrics.json`` (written with the curve since manifests exist).

The old file is kept beside the new one (``catalog.duckdb.before-rebuild-<time>``), never deleted. A catalog on
PostgreSQL (``--catalog postgresql://...`` or ASTFORGE_CATALOG_URL) is rebuilt in one transaction, its old tables
moved to the schema ``before_rebuild_<time>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from ml.stats import EVIDENCE_FILE
from resources.artifacts import TRAINING_METRICS, ArtifactStore
from resources.catalog import _SCHEMA, EVAL_METRIC_COLUMNS, DuckDBCatalog, _DuckDBSession, _ident
from resources.catalog_postgres import PostgresSession


@dataclass
class RebuildReport:
    catalog: Path | str  # the DuckDB file, or the PostgreSQL URL without its password
    artifacts_root: Path
    kept_old: list[Path | str] = field(default_factory=list)  # files, or a PostgreSQL schema
    tables: dict[str, int] = field(default_factory=dict)  # table -> rows in the new catalog
    without_manifest: list[Path] = field(default_factory=list)
    missing_parquet: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"rebuilt {self.catalog} from {self.artifacts_root}"]
        lines += [f"  {t:<20} {n:>9} rows" for t, n in sorted(self.tables.items())]
        if self.kept_old:
            lines.append("  the old file(s) kept as: " + ", ".join(str(p) for p in self.kept_old))
        if self.without_manifest:
            lines.append(f"  {len(self.without_manifest)} folder(s) without a manifest (made before manifests "
                         f"existed) are not indexed; re-materialize their assets to index them, e.g. "
                         f"{self.without_manifest[0]}")
        if self.missing_parquet:
            lines.append(f"  {len(self.missing_parquet)} manifest(s) name a rows file that is gone: their rows are "
                         f"not restored, e.g. {self.missing_parquet[0]}")
        return "\n".join(lines)


def _created(m: dict) -> datetime:
    return datetime.fromisoformat(m["created_at"])


def _flat_metrics(folder: Path) -> dict[str, float]:
    try:
        found = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in found.values()
    ):
        return {}  # nested (e.g. dsl_report's): not eval_metrics rows
    return {str(k): float(v) for k, v in found.items()}


def _evidence(folder: Path) -> dict[str, dict]:
    try:
        found = json.loads((folder / EVIDENCE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _training_points(folder: Path, run_id: str) -> list[tuple[int, str, float]]:
    try:
        found = json.loads((folder / TRAINING_METRICS).read_text())
    except (OSError, ValueError):
        return []
    if found.get("run_id") != run_id:
        return []  # a curve of an older registration of this folder: the catalog had it under that run
    return [(int(s), str(m), float(v)) for s, m, v in found.get("points", [])]


def _fill(session: _DuckDBSession | PostgresSession, entries: list[tuple[Path, dict]], report: RebuildReport) -> None:
    entries = sorted(entries, key=lambda e: (_created(e[1]), str(e[0])))
    latest: dict[tuple, tuple[Path, dict]] = {}  # later registrations replace earlier ones, as publishing does
    latest_rows: dict[tuple, tuple[Path, dict]] = {}
    for folder, m in entries:
        session.execute(
            "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [m["asset_key"], m["partition"], m["data_version"], str(folder),
             json.dumps(m.get("upstream") or {}, sort_keys=True), _created(m), m["run_id"], int(m["rows"])],
        )
        latest[(m["asset_key"], m["partition"])] = (folder, m)
        if m.get("table"):
            latest_rows[(m["table"], m["partition"], m.get("table_asset_key"))] = (folder, m)
        evidence = _evidence(folder)
        for metric, value in sorted(_flat_metrics(folder).items()):
            if evidence and metric not in evidence:
                continue  # a knob or count beside the estimates: never an eval_metrics row (older folders: all are)
            known = evidence.get(metric) or {}
            session.execute(f"INSERT INTO eval_metrics ({EVAL_METRIC_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [m["asset_key"], m["partition"], m["run_id"], metric, value, known.get("n"),
                             known.get("ci_low"), known.get("ci_high"), known.get("split"), _created(m)])
        points = _training_points(folder, m["run_id"])
        if points:
            session.executemany("INSERT INTO training_metrics VALUES (?, ?, ?, ?, ?, ?)",
                                [[m["asset_key"], m["partition"], m["run_id"], s, k, v] for s, k, v in points])
    for (asset, partition), (_, m) in sorted(latest.items()):
        for reason, count in sorted((m.get("skipped") or {}).items()):
            session.execute("INSERT INTO skipped_inputs VALUES (?, ?, ?, ?, ?, ?)",
                            [asset, partition, m["run_id"], reason, int(count), _created(m)])
    # Publishing created each table from its first parquet and inserted later ones by name: the same order here.
    for (table, partition, table_asset_key), (folder, m) in sorted(
        latest_rows.items(), key=lambda kv: (_created(kv[1][1]), kv[0][0], kv[0][1])
    ):
        parquet = folder / m["parquet"]
        if not parquet.is_file():
            report.missing_parquet.append(parquet)
            continue
        session.replace_rows(_ident(table), partition, parquet, tuple(m.get("exclude_columns") or ()),
                             table_asset_key)


def _read_manifests(store: ArtifactStore, report: RebuildReport) -> list[tuple[Path, dict]]:
    entries = []
    for folder, manifest in store.manifests():
        if manifest is None:
            report.without_manifest.append(folder)
        else:
            entries.append((folder, manifest))
    return entries


def _rebuild_postgres(catalog: DuckDBCatalog, store: ArtifactStore) -> RebuildReport:
    """One transaction under the catalog-wide lock: writers wait, readers see the old tables until it commits."""
    report = RebuildReport(catalog.location, store.root_path)
    with catalog._postgres().transaction(schema=False) as session:
        session.lock("catalog")
        entries = _read_manifests(store, report)
        old = session.tables()
        if old:
            kept = f"before_rebuild_{datetime.now(UTC).strftime('%Y%m%dt%H%M%S')}"
            session.execute(f"CREATE SCHEMA {_ident(kept)}")
            for table in old:
                session.execute(f'ALTER TABLE "{_ident(table)}" SET SCHEMA {kept}')
            report.kept_old.append(f"schema {kept}")
        session.create_base_tables()
        _fill(session, entries, report)
        report.tables = {t: session.count(t) for t in session.tables()}
    return report


def rebuild_catalog(catalog: DuckDBCatalog, store: ArtifactStore) -> RebuildReport:
    """Write a new catalog file from the manifests and put it in place of the old one, under the catalog lock
    (runs that publish meanwhile wait, then write to the new file)."""
    if catalog.backend == "postgresql":
        return _rebuild_postgres(catalog, store)
    db = catalog.db_path
    report = RebuildReport(db, store.root_path)
    with catalog.locked():
        # read under the lock: a run that publishes meanwhile registers in the old file, which is moved aside
        entries = _read_manifests(store, report)
        fresh = db.with_name(db.name + ".rebuilding")
        for stale in (fresh, fresh.with_name(fresh.name + ".wal")):
            stale.unlink(missing_ok=True)
        con = duckdb.connect(str(fresh))
        try:
            con.execute("BEGIN TRANSACTION")
            for stmt in _SCHEMA:
                con.execute(stmt)
            _fill(_DuckDBSession(catalog, con), entries, report)
            con.execute("COMMIT")
            tables = [r[0] for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()]
            report.tables = {t: con.execute(f"SELECT count(*) FROM {_ident(t)}").fetchone()[0] for t in tables}
            con.execute("CHECKPOINT")
        finally:
            con.close()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        for old in (db, db.with_name(db.name + ".wal")):
            if old.exists():
                kept = old.with_name(f"{old.name}.before-rebuild-{stamp}")
                os.replace(old, kept)
                report.kept_old.append(kept)
        os.replace(fresh, db)
    return report


def table_counts(catalog: DuckDBCatalog) -> dict[str, int]:
    """Rows per table of a readable catalog (what a rebuild is compared with)."""
    if catalog.backend == "postgresql":
        with catalog._postgres().transaction() as session:
            return {t: session.count(t) for t in session.tables()}
    with catalog.connect() as con:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()]
        return {t: con.execute(f"SELECT count(*) FROM {_ident(t)}").fetchone()[0] for t in tables}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resources.catalog_rebuild", description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", default="", help="catalog file or URL (duckdb:///path, postgresql://...; "
                        "default: $ASTFORGE_CATALOG_URL, else $ASTFORGE_HOME/catalog.duckdb)")
    parser.add_argument("--artifacts", default="", help="artifact store root (default: $ASTFORGE_HOME/artifacts)")
    args = parser.parse_args(argv)
    target = args.catalog
    catalog = DuckDBCatalog(url=target) if "://" in target else DuckDBCatalog(path=target)
    report = rebuild_catalog(catalog, ArtifactStore(root=args.artifacts))
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())

