"""Artifacts in an object store: a real S3-compatible server (moto's) on 127.0.0.1, started by the test."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import fsspec
import pyarrow.parquet as pq
import pytest

from assets import DATA_ASSETS
from definitions import build_resources
from resources import ArtifactStore, CorpusResource
from resources.artifacts import MANIFEST, read_manifest
from tests.conftest import fixture_sources

BUCKET = "astforge-artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server in its own process; the AWS variables point boto (under s3fs) at it."""
    server = Path(sys.executable).with_name("moto_server")
    if not server.exists():
        pytest.fail(f"{server} is missing: moto[server] is a dev dependency (make install)")
    port = _free_port()
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start on {url}")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def s3(s3_server, monkeypatch):
    for name, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    prefix = f"{BUCKET}/run-{time.monotonic_ns()}"
    monkeypatch.setenv("ASTFORGE_ARTIFACTS_URL", f"s3://{prefix}")
    return fs, prefix


def _versions(fs, prefix: str, asset: str, partition: str) -> set[str]:
    found = fs.glob(f"{prefix}/{asset}/{partition}/*/{MANIFEST}")
    return {p.split("/")[-2] for p in found}


@pytest.mark.slow
def test_published_artifacts_reach_s3_and_another_machine_fetches_them(s3, astforge_home):
    fs, prefix = s3
    resources = build_resources(corpus=CorpusResource(sources=fixture_sources()))
    corpus = [a for a in DATA_ASSETS if a.key.to_user_string() in ("source_files", "code_units")]
    assert dg.materialize(corpus, resources=resources, partition_key="python").success
    catalog = resources["catalog"]
    units = catalog.latest_artifact("code_units", "python")
    assert _versions(fs, prefix, "code_units", "python") == {units["data_version"]}
    key = f"{prefix}/code_units/python/{units['data_version']}"
    local = Path(units["path"])
    assert sorted(Path(p).name for p in fs.find(key)) == sorted(p.name for p in local.iterdir() if p.is_file())
    assert not fs.exists(f"{prefix}/.staging") or not fs.find(f"{prefix}/.staging")  # staging keys cleaned up
    want_rows = pq.read_table(local / "rows.parquet").num_rows

    # Another machine: same catalog, no local folders. Its next step fetches its inputs from the object store.
    shutil.rmtree(astforge_home / "artifacts")
    downstream = [a for a in DATA_ASSETS if a.key.to_user_string() == "ast_corpus"]
    assert dg.materialize(downstream, resources=resources, partition_key="python",
                          selection=["ast_corpus"]).success
    assert pq.read_table(local / "rows.parquet").num_rows == want_rows
    assert read_manifest(local)["data_version"] == units["data_version"]
    corpus_entry = catalog.latest_artifact("ast_corpus", "python")
    assert _versions(fs, prefix, "ast_corpus", "python") == {corpus_entry["data_version"]}


def test_a_failed_upload_registers_nothing_and_keeps_the_previous_version(s3, astforge_home, monkeypatch):
    fs, prefix = s3
    resources = build_resources(corpus=CorpusResource(sources=fixture_sources()))
    source_files = [a for a in DATA_ASSETS if a.key.to_user_string() == "source_files"]
    assert dg.materialize(source_files, resources=resources, partition_key="python").success
    catalog = resources["catalog"]
    before = catalog.latest_artifact("source_files", "python")

    # New content, and a store that breaks after the first file.
    extra = astforge_home / "more-python"
    shutil.copytree(Path(fixture_sources()["python"][4:]), extra)
    (extra / "added.py").write_text("def added(x):\n    return x + 1\n")
    calls = {"n": 0}
    store_fs = ArtifactStore()._remote()[0]  # fsspec's cached filesystem, the one the store uses
    real_put = store_fs.put_file

    def put_file_then_fail(lpath, rpath, **kw):
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("the object store went away")
        return real_put(lpath, rpath, **kw)

    monkeypatch.setattr(store_fs, "put_file", put_file_then_fail)
    broken = build_resources(corpus=CorpusResource(sources={**fixture_sources(), "python": f"dir:{extra}"}))
    result = dg.materialize(source_files, resources=broken, partition_key="python", raise_on_error=False)
    assert not result.success and calls["n"] == 2
    assert catalog.latest_artifact("source_files", "python")["data_version"] == before["data_version"]
    monkeypatch.setattr(store_fs, "put_file", real_put)
    assert _versions(fs, prefix, "source_files", "python") == {before["data_version"]}
    local_versions = {p.name for p in (astforge_home / "artifacts" / "source_files" / "python").iterdir()}
    assert local_versions == {before["data_version"]}


def test_file_urls_work_as_a_shared_folder(tmp_path, astforge_home):
    shared = tmp_path / "shared"
    store = ArtifactStore(url=f"file://{shared}")
    with store.staging("thing") as tmp:
        (tmp / "a.txt").write_text("a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
        store.write_manifest(tmp, {"asset_key": "thing"})
        final, created = store.commit(tmp, "thing", "python", "v1")
    assert created and (shared / "thing/python/v1/sub/b.txt").read_text() == "b"
    assert read_manifest(shared / "thing/python/v1")["asset_key"] == "thing"
    shutil.rmtree(final)
    assert store.ensure_local(final) and (final / "sub" / "b.txt").read_text() == "b"
    assert not store.ensure_local(store.final_path("thing", "python", "v2"))  # the store lacks it
    assert not ArtifactStore().ensure_local(store.final_path("thing", "python", "v2"))  # no store at all
    assert os.environ.get("ASTFORGE_ARTIFACTS_URL") is None
