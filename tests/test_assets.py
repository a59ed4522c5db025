"""Asset tests through dagster: the data graph on the fixture corpora, checks, atomic replacement."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from assets import DATA_ASSETS as ALL_ASSETS
from definitions import defs
from resources import DuckDBCatalog

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_definitions_load_with_the_contract_asset_keys():
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"source_files", "code_units", "ast_corpus", "nl_ast_pairs"} <= keys
    assert defs.resolve_job_def("ast_data_job") is not None


def _materialize(resources, partition, instance=None):
    return dg.materialize(ALL_ASSETS, resources=resources, partition_key=partition, instance=instance)


def test_python_slice_end_to_end(resources, astforge_home):
    result = _materialize(resources, "python")
    assert result.success
    mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
    units_meta = mats["code_units"].materialization.metadata
    assert units_meta["units"].value >= 8
    assert units_meta["skipped_syntax_error"].value == 1 and units_meta["skipped_duplicate"].value == 1
    files_meta = mats["source_files"].materialization.metadata
    assert files_meta["skipped_binary"].value == 1 and files_meta["skipped_minified"].value == 1
    corpus_meta = mats["ast_corpus"].materialization.metadata
    assert "token_length_histogram" in corpus_meta and corpus_meta["rows"].value == units_meta["units"].value
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["roundtrip_exact"].passed and checks["no_duplicate_ids"].passed
    assert checks["non_empty_slice"].passed

    catalog = resources["catalog"]
    # Rows in the catalog match the Parquet artifact of the registered version.
    entry = catalog.latest_artifact("ast_corpus", "python")
    table = pq.read_table(Path(entry["path"]) / "rows.parquet")
    [row] = catalog.query("SELECT count(*) AS n FROM ast_corpus WHERE partition = 'python'")
    assert row["n"] == table.num_rows == entry["rows"]
    # Renamed names are var_i, and the mapping lets a reader undo it.
    sample = table.to_pylist()[0]
    assert "var_0" in sample["renamed_code"] and sample["rename_map"].startswith("{")
    pairs = catalog.query("SELECT nl, target_code FROM nl_ast_pairs WHERE partition = 'python'")
    assert pairs and all(p["nl"] for p in pairs)
    # The Phase 2 target no longer holds the docstring it is conditioned on.
    assert all(p["nl"].splitlines()[0] not in p["target_code"] for p in pairs)
    skips = catalog.query("SELECT reason, count FROM skipped_inputs WHERE asset_key = 'source_files'")
    assert {s["reason"] for s in skips} == {"binary", "non_utf8", "minified"}


def test_missing_default_source_gives_an_empty_slice_with_a_warning(astforge_home):
    from definitions import build_resources
    from resources import CorpusResource

    res = build_resources(corpus=CorpusResource(sources={"java": f"dir:{astforge_home / 'empty'}"}))
    (astforge_home / "empty").mkdir(parents=True)
    result = _materialize(res, "java")
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["non_empty_slice"].passed
    assert checks["non_empty_slice"].severity == dg.AssetCheckSeverity.WARN


class FailingCatalog(DuckDBCatalog):
    """Fails inside the write transaction, after the old rows were deleted."""

    def _insert_rows(self, con, table, partition, parquet, star):
        if table == "ast_corpus":
            raise RuntimeError("disk full (simulated)")
        return super()._insert_rows(con, table, partition, parquet, star)


def test_failed_step_leaves_the_previous_version_intact(resources, astforge_home):
    assert _materialize(resources, "python").success
    catalog = resources["catalog"]
    before = catalog.latest_artifact("ast_corpus", "python")
    [n_before] = catalog.query("SELECT count(*) AS n FROM ast_corpus WHERE partition='python'")

    broken = dict(resources, catalog=FailingCatalog())
    # Change the data so the failed run would have produced a new version.
    from resources import CorpusResource

    broken["corpus"] = CorpusResource(sources=resources["corpus"].sources, max_files=2)
    result = dg.materialize(ALL_ASSETS, resources=broken, partition_key="python", raise_on_error=False)
    assert not result.success

    after = catalog.latest_artifact("ast_corpus", "python")
    assert after["data_version"] == before["data_version"] and Path(after["path"]).exists()
    [n_after] = catalog.query("SELECT count(*) AS n FROM ast_corpus WHERE partition='python'")
    assert n_after == n_before
    versions = list((astforge_home / "artifacts" / "ast_corpus" / "python").iterdir())
    assert [v.name for v in versions] == [before["data_version"]]  # no orphan half-version
    assert not any((astforge_home / "artifacts" / ".staging").iterdir())


_RUN_SLICE = """
import sys
import dagster as dg
from assets import DATA_ASSETS as ALL_ASSETS
from definitions import build_resources
from resources import CorpusResource
from tests.conftest import fixture_sources

res = build_resources(corpus=CorpusResource(sources=fixture_sources()))
ok = dg.materialize(ALL_ASSETS, resources=res, partition_key=sys.argv[1], raise_on_error=False).success
sys.exit(0 if ok else 1)
"""


def _start_slice(home: Path, partition: str) -> subprocess.Popen:
    """One run process per slice, as a backfill launches them."""
    env = dict(os.environ, ASTFORGE_HOME=str(home))
    return subprocess.Popen([sys.executable, "-c", _RUN_SLICE, partition], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_slice(home: Path, partition: str) -> bool:
    proc = _start_slice(home, partition)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return True


@pytest.mark.parametrize("backend", ["duckdb", "postgresql"])
def test_concurrent_backfill_of_all_slices_loses_and_duplicates_nothing(astforge_home, resources, backend, request,
                                                                         monkeypatch):
    if backend == "postgresql":
        # the run processes and this test's catalog find the database through the environment, as runs do
        monkeypatch.setenv("ASTFORGE_CATALOG_URL", request.getfixturevalue("pg_database"))
    slices = ["python", "javascript", "java"]
    procs = [_start_slice(astforge_home, s) for s in slices]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        assert "Could not set lock" not in out  # DuckDB's own lock error never reaches a run
    catalog = resources["catalog"]
    assert catalog.backend == backend
    for s in slices:
        for table in ("code_units", "ast_corpus"):
            entry = catalog.latest_artifact(table, s)
            rows = pq.read_table(Path(entry["path"]) / "rows.parquet").num_rows
            [got] = catalog.query(
                f"SELECT count(*) AS n, count(DISTINCT id) AS d FROM {table} WHERE partition = ?", [s]
            )
            assert got["n"] == got["d"] == rows > 0, (table, s)
    # Re-materializing one slice replaces exactly that slice.
    counts = {r["partition"]: r["n"] for r in catalog.query(
        "SELECT partition, count(*) AS n FROM ast_corpus GROUP BY partition")}
    assert _run_slice(astforge_home, "javascript")
    again = {r["partition"]: r["n"] for r in catalog.query(
        "SELECT partition, count(*) AS n FROM ast_corpus GROUP BY partition")}
    assert again == counts
