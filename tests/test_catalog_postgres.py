"""The catalog on PostgreSQL: the same calls and answers as on DuckDB, safe writers, rebuild, export to DuckDB."""

import threading
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.stats import mean
from resources import ArtifactStore, DuckDBCatalog
from resources.catalog import CatalogUnavailable
from resources.catalog_dialect import to_postgres
from resources.catalog_export import export_to_duckdb
from resources.catalog_export import main as export_main
from resources.catalog_rebuild import rebuild_catalog, table_counts

SCHEMA = pa.schema([
    ("id", pa.string()), ("code", pa.large_string()), ("n_tokens", pa.int64()), ("score", pa.float64()),
    ("valid", pa.bool_()), ("labels", pa.list_(pa.string())), ("parents", pa.list_(pa.int32())),
    ("meta", pa.struct([("kind", pa.string()), ("depth", pa.int32())])), ("secret", pa.string()),
])


def _parquet(folder: Path, name: str, n: int, tag: str) -> Path:
    rows = [{"id": f"{tag}-{i}", "code": f"def f{i}():\n    return '{tag}' % 100", "n_tokens": 10 * i,
             "score": i / 4, "valid": i % 2 == 0, "labels": ["Module", "FunctionDef"][: i % 3],
             "parents": [-1, 0, 0][: i % 4], "meta": {"kind": tag, "depth": i}, "secret": "s"} for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path


def _publish(catalog: DuckDBCatalog, folder: Path, partition: str, n: int, tag: str, **extra) -> None:
    parquet = _parquet(folder / f"{partition}-{tag}", "rows.parquet", n, tag)
    catalog.publish_partition(asset_key="code_units", partition=partition, data_version=tag, path=parquet.parent,
                              run_id=f"run-{tag}", rows=n, upstream={"source_files": "v1"}, table="code_units",
                              parquet=parquet, exclude_columns=("secret",), **extra)


@pytest.fixture
def pg_catalog(pg_database) -> DuckDBCatalog:
    return DuckDBCatalog(url=pg_database, lock_timeout_s=60)


def test_the_url_chooses_the_backend_and_the_environment_supplies_it(tmp_path, monkeypatch, astforge_home):
    assert DuckDBCatalog().db_path == astforge_home / "catalog.duckdb"
    assert DuckDBCatalog(url=f"duckdb://{tmp_path}/c.duckdb").db_path == tmp_path / "c.duckdb"
    monkeypatch.setenv("ASTFORGE_CATALOG_URL", "postgresql://u:hunter2@db.example:5433/astforge")
    catalog = DuckDBCatalog()
    assert catalog.backend == "postgresql"
    assert catalog.location == "postgresql://u:***@db.example:5433/astforge"
    assert DuckDBCatalog(path=str(tmp_path / "x.duckdb")).backend == "duckdb"  # an explicit setting wins
    with pytest.raises(ValueError, match="expected duckdb:///path"):
        _ = DuckDBCatalog(url="mysql://x/y").backend


def test_an_unreachable_server_fails_with_the_url_but_not_the_password(pg_server):
    catalog = DuckDBCatalog(url=f"postgresql://astforge:hunter2@127.0.0.1:{pg_server.port}/no_such_database")
    with pytest.raises(CatalogUnavailable) as caught:
        catalog.query("SELECT 1")
    assert "no_such_database" in str(caught.value) and "hunter2" not in str(caught.value)


def test_publish_replaces_exactly_the_partitions_rows_in_one_transaction(pg_catalog, tmp_path):
    _publish(pg_catalog, tmp_path, "python", 5, "a", skipped={"binary": 2, "minified": 1})
    _publish(pg_catalog, tmp_path, "java", 3, "b")
    _publish(pg_catalog, tmp_path, "python", 4, "c", skipped={"binary": 1})
    counts = {r["partition"]: r["n"] for r in pg_catalog.query(
        "SELECT partition, count(*) AS n FROM code_units GROUP BY partition")}
    assert counts == {"python": 4, "java": 3}
    assert {r["id"] for r in pg_catalog.query("SELECT id FROM code_units WHERE partition = ?", ["python"])} == {
        "c-0", "c-1", "c-2", "c-3"}
    # lists of scalars are arrays, a struct is JSONB: both come back as the Python values DuckDB gives
    [row] = pg_catalog.query("SELECT * FROM code_units WHERE id = 'c-2'")
    assert row["labels"] == ["Module", "FunctionDef"] and row["parents"] == [-1, 0]
    assert row["meta"] == {"kind": "c", "depth": 2}
    assert row["valid"] is True and row["score"] == 0.5 and "% 100" in row["code"] and "secret" not in row
    assert pg_catalog.query("SELECT reason, count FROM skipped_inputs WHERE partition = 'python'") == [
        {"reason": "binary", "count": 1}]
    latest = pg_catalog.require_artifact("code_units", "python")
    assert latest["data_version"] == "c" and latest["rows"] == 4 and latest["upstream"] == '{"source_files": "v1"}'

    # A failure inside the transaction (a value the column's type refuses) leaves the previous rows and entry.
    # (A column the table lacks is no failure: it is added, as rows gain columns between versions.)
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"id": ["x"], "valid": ["maybe"]}), bad / "rows.parquet")
    with pytest.raises(Exception, match="boolean"):
        pg_catalog.publish_partition(asset_key="code_units", partition="python", data_version="bad", path=bad,
                                     run_id="run-bad", rows=1, table="code_units", parquet=bad / "rows.parquet")
    assert pg_catalog.latest_artifact("code_units", "python")["data_version"] == "c"
    assert pg_catalog.query("SELECT count(*) AS n FROM code_units WHERE partition = 'python'") == [{"n": 4}]


def test_a_shared_table_replaces_only_its_assets_rows(pg_catalog, tmp_path):
    for asset, n in (("dsl_sft_eval", 3), ("dsl_dpo_eval", 2), ("dsl_sft_eval", 1)):
        folder = tmp_path / f"{asset}-{n}"
        folder.mkdir()
        pq.write_table(pa.table({"asset_key": [asset] * n, "mode": ["free"] * n}), folder / "rows.parquet")
        pg_catalog.publish_partition(asset_key=asset, partition="all", data_version=str(n), path=folder, run_id="r",
                                     rows=n, table="eval_results", parquet=folder / "rows.parquet",
                                     table_asset_key=asset)
    rows = pg_catalog.query('SELECT asset_key, count(*) AS n FROM eval_results GROUP BY ALL ORDER BY asset_key')
    assert rows == [{"asset_key": "dsl_dpo_eval", "n": 2}, {"asset_key": "dsl_sft_eval", "n": 1}]


def test_metrics_training_curves_and_missing_artifacts(pg_catalog, tmp_path):
    for i, run in enumerate(("old-run", "new-run")):
        folder = tmp_path / run
        folder.mkdir()
        pg_catalog.publish_partition(asset_key="trained", partition="all", data_version=run, path=folder, run_id=run,
                                     rows=0, created_at=datetime(2026, 1, 1 + i))
        pg_catalog.write_training_curve(asset_key="trained", partition="all", run_id=run,
                                        points=[(2, "loss", 1.0 + i), (1, "loss", 2.0 + i)])
        pg_catalog.write_metrics(asset_key="trained_eval", partition="all", run_id=run,
                                 metrics={"acc": mean([0.5 + i / 4] * 3)})
    pg_catalog.write_metrics(asset_key="trained_eval", partition="all", run_id="new-run",
                             metrics={"acc": mean([0.9] * 3)})
    assert pg_catalog.latest_training_curve("trained", "all") == [(1, "loss", 3.0), (2, "loss", 2.0)]
    assert (tmp_path / "new-run" / "_training_metrics.json").is_file()
    assert sorted(r["value"] for r in pg_catalog.query("SELECT value FROM eval_metrics")) == [0.5, 0.9]

    with pytest.raises(dg.Failure, match=r"no materialization of trained for slice 'java'.*it has the slices all"):
        pg_catalog.require_artifact("trained", "java")
    with pytest.raises(dg.Failure, match="it has none yet"):
        pg_catalog.require_artifact("never_made", "all")
    assert pg_catalog.latest_artifact("never_made", "all") is None


# The project's DuckDB-flavoured queries (demo.py's summary, the README's): the same answers from both backends.
DEMO_QUERIES = [
    """SELECT asset_key, partition, arg_max(rows, created_at) AS rows
       FROM artifacts GROUP BY ALL ORDER BY asset_key, partition""",
    """SELECT metric, partition, arg_max(value, created_at) AS value FROM eval_metrics
       WHERE asset_key = 'trained_eval' GROUP BY ALL ORDER BY metric""",
    "SELECT asset_key || ' ' || reason AS what, partition, sum(count) AS n FROM skipped_inputs "
    "GROUP BY ALL HAVING sum(count) > 0 ORDER BY what",
    "SELECT partition, reason, sum(count) AS n FROM skipped_inputs GROUP BY ALL ORDER BY 1, 3 DESC",
    "SELECT partition, count(*) AS units, round(avg(n_tokens)) AS mean_tokens FROM code_units "
    "GROUP BY partition ORDER BY partition",
    "SELECT id, labels, parents FROM code_units WHERE partition = ? AND code LIKE '%return%' ORDER BY id",
]


def test_the_projects_duckdb_queries_give_the_same_answers_on_postgres(pg_catalog, tmp_path, astforge_home):
    duck = DuckDBCatalog()
    for catalog in (duck, pg_catalog):
        _publish(catalog, tmp_path / catalog.backend, "python", 6, "a", skipped={"binary": 2, "minified": 0},
                 created_at=datetime(2026, 1, 1))
        _publish(catalog, tmp_path / catalog.backend, "python", 5, "b", skipped={"binary": 3},
                 created_at=datetime(2026, 1, 2))
        _publish(catalog, tmp_path / catalog.backend, "java", 2, "c", created_at=datetime(2026, 1, 3))
        catalog.write_metrics(asset_key="trained_eval", partition="python", run_id="r1",
                              metrics={"acc": mean([0.25] * 3)})
        catalog.write_metrics(asset_key="trained_eval", partition="python", run_id="r2",
                              metrics={"acc": mean([0.75] * 3)})
    for sql in DEMO_QUERIES:
        params = ["python"] if "?" in sql else None
        assert pg_catalog.query(sql, params) == duck.query(sql, params), to_postgres(sql)
    assert duck.query(DEMO_QUERIES[0])[1] == {"asset_key": "code_units", "partition": "python", "rows": 5}


def test_concurrent_writers_of_a_new_table_neither_fail_nor_duplicate(pg_catalog, tmp_path):
    """Four writers race to create the table; two of them write each partition."""
    errors: list[BaseException] = []

    def publish(partition: str, tag: str) -> None:
        try:
            _publish(pg_catalog, tmp_path, partition, 50, tag)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    jobs = [("python", "p1"), ("java", "j1"), ("python", "p2"), ("java", "j2")]
    threads = [threading.Thread(target=publish, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = pg_catalog.query("SELECT partition, count(*) AS n, count(DISTINCT id) AS d, "
                           "count(DISTINCT split_part(id, '-', 1)) AS writers FROM code_units GROUP BY ALL "
                           "ORDER BY partition")
    assert got == [{"partition": "java", "n": 50, "d": 50, "writers": 1},
                   {"partition": "python", "n": 50, "d": 50, "writers": 1}]


def test_rebuild_restores_a_postgres_catalog_and_keeps_the_old_tables(pg_database, tmp_path, astforge_home):
    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["python"]))
    def source_files(context: dg.AssetExecutionContext, artifacts: ArtifactStore, catalog: DuckDBCatalog) -> None:
        from assets.publish import publish_folder

        def build(tmp: Path) -> None:
            pq.write_table(pa.table({"id": ["a", "b"], "parents": [[-1], [-1, 0]]}), tmp / "rows.parquet")

        publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=2, table="source_files",
                       skipped={"binary": 1})

    catalog = DuckDBCatalog(url=pg_database)
    resources = {"catalog": catalog, "artifacts": ArtifactStore()}
    assert dg.materialize([source_files], resources=resources, partition_key="python").success
    before = table_counts(catalog)
    assert before == {"artifacts": 1, "eval_metrics": 0, "skipped_inputs": 1, "source_files": 2,
                      "training_metrics": 0}
    catalog.query("DELETE FROM source_files")  # damage it
    report = rebuild_catalog(catalog, ArtifactStore())
    assert table_counts(catalog) == before and report.tables == before
    assert [k.startswith("schema before_rebuild_") for k in report.kept_old] == [True]
    assert catalog.query("SELECT id, parents FROM source_files ORDER BY id") == [
        {"id": "a", "parents": [-1]}, {"id": "b", "parents": [-1, 0]}]


def test_export_to_duckdb_keeps_tables_types_and_rows(pg_catalog, tmp_path, capsys):
    _publish(pg_catalog, tmp_path, "python", 5, "a", skipped={"binary": 2})
    pg_catalog.write_training_curve(asset_key="code_units", partition="python", run_id="run-a",
                                    points=[(1, "loss", 2.0)])
    target = tmp_path / "out" / "catalog.duckdb"
    assert export_main(["--to", str(target), "--catalog", pg_catalog.url]) == 0
    assert "code_units" in capsys.readouterr().out
    con = duckdb.connect(str(target), read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert tables == {"artifacts", "training_metrics", "eval_metrics", "skipped_inputs", "code_units"}
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'code_units'").fetchall())
        assert types["labels"] == "VARCHAR[]" and types["parents"] == "INTEGER[]" and types["meta"] == "JSON"
        assert types["n_tokens"] == "BIGINT"
        # DuckDB's own SQL over the exported lists and JSON
        rows = con.execute("SELECT id, len(parents) AS n, meta->>'kind' AS kind FROM code_units "
                           "WHERE list_contains(labels, 'Module') ORDER BY id").fetchall()
        assert rows == [("a-1", 1, "a"), ("a-2", 2, "a"), ("a-4", 0, "a")]
        assert con.execute("SELECT step, metric, value FROM training_metrics").fetchall() == [(1, "loss", 2.0)]
    finally:
        con.close()
    duck_catalog = DuckDBCatalog(path=str(target))
    assert duck_catalog.latest_artifact("code_units", "python") == pg_catalog.latest_artifact("code_units", "python")
    with pytest.raises(ValueError, match="already a DuckDB file"):
        export_to_duckdb(duck_catalog, tmp_path / "again.duckdb")


def test_the_dialect_translation_leaves_quoted_text_alone():
    sql = "SELECT 'a ? 50%' AS \"odd ? name\", arg_max(x, t) AS x -- a ? in a comment\nFROM t WHERE y = ? GROUP BY ALL"
    assert to_postgres(sql) == (
        "SELECT 'a ? 50%%' AS \"odd ? name\", (array_agg(x ORDER BY t DESC) FILTER (WHERE (t) IS NOT NULL))[1] AS x "
        "-- a ? in a comment\nFROM t WHERE y = %s GROUP BY 1")
    # a subquery's GROUP BY ALL counts its own select list
    assert to_postgres("SELECT n FROM (SELECT a, b, count(*) AS n FROM t GROUP BY ALL) s") == (
        "SELECT n FROM (SELECT a, b, count(*) AS n FROM t GROUP BY 1, 2) s")
