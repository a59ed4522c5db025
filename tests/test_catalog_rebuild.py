"""A damaged catalog: detected when a step opens it, before any work, and rebuilt from the artifact manifests."""

import logging
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from assets.corpus import code_units, source_files
from assets.publish import publish_folder
from ml.stats import EVIDENCE_FILE, rate, write_metrics_files
from resources import ArtifactStore, DuckDBCatalog
from resources.artifacts import MANIFEST, read_manifest
from resources.catalog_rebuild import table_counts

ROOT = Path(__file__).resolve().parents[1]
CURVE = [(1, "loss", 2.0), (1, "eval_loss", 2.5), (2, "loss", 1.5)]


@dg.asset
def tiny_trained(context: dg.AssetExecutionContext, artifacts: ArtifactStore, catalog: DuckDBCatalog) -> None:
    """Writes what a training and an evaluation asset write: a folder with metrics.json, eval metrics, a curve."""
    metrics = {"accuracy": rate([1, 0, 1, 0])}
    catalog.write_metrics(asset_key="tiny_trained", partition="all", run_id=context.run_id, metrics=metrics)

    def build(tmp: Path) -> None:
        write_metrics_files(tmp, metrics | {"threshold": 0.7})  # an estimate, and a knob beside it in metrics.json
        (tmp / "adapter.bin").write_bytes(b"weights")

    publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=2)
    catalog.write_training_curve(asset_key="tiny_trained", partition="all", run_id=context.run_id, points=CURVE)


def _latest(catalog: DuckDBCatalog) -> dict:
    return {(r["asset_key"], r["partition"]): (r["data_version"], r["path"], r["rows"], r["run_id"])
            for r in catalog.query("SELECT * FROM artifacts QUALIFY row_number() OVER "
                                   "(PARTITION BY asset_key, partition ORDER BY created_at DESC) = 1")}


def _evidence(catalog: DuckDBCatalog) -> dict:
    return {r["metric"]: (r["value"], r["n"], r["ci_low"], r["ci_high"], r["split"])
            for r in catalog.query("SELECT * FROM eval_metrics")}


def test_an_older_catalog_gains_the_evidence_columns(astforge_home):
    import duckdb

    db = astforge_home / "catalog.duckdb"
    db.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(db)) as con:  # the eval_metrics table as catalogs before the evidence columns had it
        con.execute("CREATE TABLE eval_metrics (asset_key VARCHAR, partition VARCHAR, run_id VARCHAR, "
                    "metric VARCHAR, value DOUBLE, created_at TIMESTAMP)")
        con.execute("INSERT INTO eval_metrics VALUES ('a', 'all', 'r0', 'old', 1.0, now())")
    catalog = DuckDBCatalog()
    catalog.write_metrics(asset_key="a", partition="all", run_id="r1", metrics={"new": rate([1, 1, 0])})
    with pytest.raises(TypeError, match="threshold = 0.7 is a bare number"):  # no row without its evidence
        catalog.write_metrics(asset_key="a", partition="all", run_id="r2", metrics={"threshold": 0.7})
    assert _evidence(catalog) == {"old": (1.0, None, None, None, None),
                                  "new": (pytest.approx(2 / 3), 3, pytest.approx(0.208, abs=1e-3),
                                          pytest.approx(0.939, abs=1e-3), "test")}


def test_a_truncated_catalog_fails_at_open_and_is_rebuilt_from_the_manifests(resources, astforge_home):
    for lang in ("python", "java"):
        assert dg.materialize([source_files, code_units], resources=resources, partition_key=lang).success
    assert dg.materialize([tiny_trained], resources=resources).success
    catalog: DuckDBCatalog = resources["catalog"]
    counts, latest, evidence = table_counts(catalog), _latest(catalog), _evidence(catalog)
    assert evidence == {"accuracy": (0.5, 4, pytest.approx(0.15, abs=0.01), pytest.approx(0.85, abs=0.01), "test")}
    assert counts["code_units"] > 0 and counts["training_metrics"] == 3 and counts["eval_metrics"] == 1
    entry = catalog.latest_artifact("code_units", "python")
    manifest = read_manifest(Path(entry["path"]))
    assert manifest["data_version"] == entry["data_version"] and manifest["table"] == "code_units"
    assert manifest["upstream"] == {"source_files": catalog.latest_artifact("source_files", "python")["data_version"]}

    db = catalog.db_path
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 2)
    units_dir = astforge_home / "artifacts" / "code_units" / "python"
    versions = sorted(units_dir.iterdir())

    # A step that opens the catalog fails at once, naming the file and the way out; it did no work.
    result = dg.materialize([source_files, code_units], resources=resources, partition_key="python",
                            selection=[code_units], raise_on_error=False)
    assert not result.success
    # In process, resources start once per run: the failure is the run's resource initialisation.
    [failure] = [e for e in result.all_events if e.event_type_value == "RESOURCE_INIT_FAILURE"]
    message = str(failure.event_specific_data.error)
    assert f"The catalog {db} is damaged or unreadable" in message
    assert "the artifacts are intact" in message and "make catalog-rebuild" in message
    assert not any(e.event_type_value == "STEP_START" for e in result.all_events)
    assert sorted(units_dir.iterdir()) == versions

    cli = subprocess.run([sys.executable, "-m", "resources.catalog_rebuild"], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, ASTFORGE_HOME=str(astforge_home)), timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert f"rebuilt {db}" in cli.stdout and ".before-rebuild-" in cli.stdout
    assert table_counts(catalog) == counts
    assert _latest(catalog) == latest
    assert _evidence(catalog) == evidence  # n, interval and split come back from metrics_evidence.json
    curve = catalog.query("SELECT step, metric, value FROM training_metrics")
    assert sorted(tuple(p.values()) for p in curve) == sorted(CURVE)

    # The rebuilt catalog serves the next run.
    assert dg.materialize([source_files, code_units], resources=resources, partition_key="python",
                          selection=[code_units]).success


def test_same_content_again_keeps_one_folder_whose_manifest_names_the_latest_run(resources, astforge_home):
    first = dg.materialize([tiny_trained], resources=resources)
    second = dg.materialize([tiny_trained], resources=resources)
    [folder] = (astforge_home / "artifacts" / "tiny_trained" / "all").iterdir()
    assert read_manifest(folder)["run_id"] == second.run_id != first.run_id
    assert {p.name for p in folder.iterdir()} == {"metrics.json", EVIDENCE_FILE, "adapter.bin", MANIFEST,
                                                  "_training_metrics.json"}


def test_latest_training_curve_is_the_run_of_the_latest_artifact(astforge_home):
    catalog = DuckDBCatalog()
    assert catalog.latest_training_curve("trained", "all") == []
    for i, run in enumerate(("old-run", "new-run")):
        folder = astforge_home / run
        folder.mkdir(parents=True)
        catalog.publish_partition(asset_key="trained", partition="all", data_version=run, path=folder, run_id=run,
                                  rows=0, created_at=datetime(2026, 1, 1 + i))
        catalog.write_training_curve(asset_key="trained", partition="all", run_id=run,
                                     points=[(2, "loss", 1.0 + i), (1, "loss", 2.0 + i), (1, "eval_loss", 3.0)])
    # A curve of a run that published nothing (a failed retry) and another slice's curve are not it.
    catalog.write_training_curve(asset_key="trained", partition="all", run_id="failed-run", points=[(9, "loss", 0.1)])
    catalog.write_training_curve(asset_key="trained", partition="java", run_id="new-run", points=[(5, "loss", 0.2)])
    assert catalog.latest_training_curve("trained", "all") == [(1, "eval_loss", 3.0), (1, "loss", 3.0),
                                                               (2, "loss", 2.0)]
    assert catalog.latest_training_curve("trained", "python") == []


def test_a_garbage_catalog_is_reported_at_once_not_waited_on(astforge_home):
    catalog = DuckDBCatalog(lock_timeout_s=60)
    catalog.db_path.parent.mkdir(parents=True)
    catalog.db_path.write_bytes(b"not a database" * 100)
    with pytest.raises(dg.Failure, match="damaged or unreadable.*make catalog-rebuild"):
        catalog.query("SELECT 1")


_HOLD_LOCK = """
import sys, time
from resources import DuckDBCatalog
catalog = DuckDBCatalog()
catalog._run_id = "run-that-holds"
with catalog.locked():
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_a_wait_for_the_catalog_lock_says_for_whom(astforge_home, caplog):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, "3"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, ASTFORGE_HOME=str(astforge_home)))
    assert holder.stdout.readline().strip() == "held"
    with caplog.at_level(logging.INFO, logger="astforge.catalog"):
        assert DuckDBCatalog().query("SELECT 42 AS x") == [{"x": 42}]
    holder.wait(timeout=30)
    waits = [r.getMessage() for r in caplog.records if r.name == "astforge.catalog"]
    assert any(f"held by pid {holder.pid} on " in m and "run run-that-holds" in m for m in waits), waits
    assert any(m.startswith("got the catalog lock on ") for m in waits), waits


def test_rows_that_gained_columns_go_into_a_table_made_before(astforge_home, tmp_path):
    """A catalog from before the split columns: the next publish adds them, older rows read NULL there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    catalog = DuckDBCatalog()
    old, new = tmp_path / "old.parquet", tmp_path / "new.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "n_tokens": [3, 4]}), old)
    pq.write_table(pa.table({"id": ["c"], "n_tokens": [5], "split": ["test"], "group_key": ["code-1"]}), new)
    for partition, parquet in (("java", old), ("python", new)):
        catalog.publish_partition(asset_key="rows_asset", partition=partition, data_version=partition, path=tmp_path,
                                  run_id="r", rows=1, table="rows_table", parquet=parquet)
    rows = catalog.query("SELECT partition, id, split, group_key FROM rows_table ORDER BY id")
    assert [tuple(r.values()) for r in rows] == [("java", "a", None, None), ("java", "b", None, None),
                                                 ("python", "c", "test", "code-1")]
