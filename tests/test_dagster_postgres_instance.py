"""The Dagster instance on PostgreSQL (config/dagster-postgres.yaml): a run and its materialization are stored in,
and read back from, a real server."""

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import psycopg
import pytest
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from assets.corpus import source_files
from resources.catalog_rebuild import table_counts

CONFIG = Path(__file__).resolve().parents[1] / "config" / "dagster-postgres.yaml"


@pytest.fixture
def dagster_home_on_postgres(tmp_path, monkeypatch, pg_server, pg_database) -> str:
    """DAGSTER_HOME holding config/dagster-postgres.yaml as its dagster.yaml, the connection in DAGSTER_PG_*."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(CONFIG, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    url = urlsplit(pg_database)
    for name, value in {"HOST": url.hostname, "PORT": str(url.port), "USER": url.username,
                        "PASSWORD": url.password, "DB": url.path.lstrip("/")}.items():
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value)
    return pg_database


def test_a_run_and_its_materialization_are_stored_in_postgres(dagster_home_on_postgres, monkeypatch, resources):
    # the catalog in the same database: its tables and Dagster's live side by side
    monkeypatch.setenv("ASTFORGE_CATALOG_URL", dagster_home_on_postgres)
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        result = dg.materialize([source_files], resources=resources, partition_key="python", instance=instance)
        assert result.success

    # A new instance (as the webserver or another machine would load it) reads the run back from the server.
    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == "python"
        event = instance.get_latest_materialization_event(dg.AssetKey("source_files"))
        assert event is not None and event.run_id == result.run_id
        assert event.asset_materialization.partition == "python"
        files = event.asset_materialization.metadata["skipped_binary"].value
        assert files == 1

    with psycopg.connect(dagster_home_on_postgres) as conn:
        assert conn.execute("SELECT count(*) FROM runs WHERE run_id = %s", [result.run_id]).fetchone()[0] == 1
    catalog = resources["catalog"]
    assert catalog.backend == "postgresql"
    assert catalog.require_artifact("source_files", "python")["run_id"] == result.run_id
    assert "runs" not in table_counts(catalog)  # the catalog's own tables only
