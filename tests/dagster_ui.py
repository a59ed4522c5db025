"""A real `dagster dev` on 127.0.0.1 over a small materialized instance, and the system Chromium to look at it.

Shared by tests/test_ui_browser.py and docs/screenshots.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import fixture_sources

CHECKOUT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# The machine has no internet: without the background-networking flags Chromium floods refused connections.
# --no-sandbox because tests run as root.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}


def fixture_source_env() -> dict[str, str]:
    """Environment for `dagster dev`: its runs (a backfill) read every slice from the test fixtures too."""
    return {f"ASTFORGE_SOURCE_{lang.upper()}": spec for lang, spec in fixture_sources().items()}


def _prepare_homes(dagster_home: Path, astforge_home: Path) -> None:
    dagster_home.mkdir(parents=True, exist_ok=True)
    astforge_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(CHECKOUT / "config" / "dagster.yaml", dagster_home / "dagster.yaml")


def materialize_small_instance(dagster_home: Path, astforge_home: Path, partition: str = "python") -> None:
    """One slice of the corpus group and ast_corpus (its metadata carries a token-length histogram PNG), on the
    fixture corpora: seconds, not minutes. Writes to ``dagster_home``'s instance and ``astforge_home``'s catalog."""
    import dagster as dg

    from assets import ALL_ASSETS
    from definitions import build_resources
    from resources import ArtifactStore, CorpusResource, DuckDBCatalog

    _prepare_homes(dagster_home, astforge_home)
    resources = build_resources(
        corpus=CorpusResource(sources=fixture_sources()),
        artifacts=ArtifactStore(root=str(astforge_home / "artifacts")),
        catalog=DuckDBCatalog(path=str(astforge_home / "catalog.duckdb")),
    )
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        result = dg.materialize(
            ALL_ASSETS, selection=["source_files", "code_units", "ast_corpus"], resources=resources,
            partition_key=partition, instance=instance,
        )
    if not result.success:
        raise RuntimeError(f"seeding the UI test instance failed for slice {partition}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop_process_group(proc: subprocess.Popen) -> None:
    """`dagster dev` spawns the webserver, the daemon and code servers: end the whole group, then make sure."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass


WORKSPACE_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""


def graphql(url: str, query: str, variables: Mapping | None = None) -> dict:
    """One request to the webserver's GraphQL API; its ``data``, or an error that shows what the server said."""
    body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
    request = urllib.request.Request(f"{url}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL errors from {url}: {answer['errors']}")
    return answer["data"]


def _wait_for_code_location(url: str, proc: subprocess.Popen, log_path: Path, deadline: float) -> None:
    """The webserver answers before definitions.py has loaded; until then every asset shows as external."""
    while True:
        workspace = graphql(url, WORKSPACE_QUERY)["workspaceOrError"]
        entries = workspace.get("locationEntries") or []
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
            if errors:
                raise RuntimeError(f"`dagster dev` could not load {errors[0]['name']}: "
                                   f"{errors[0]['locationOrLoadError']['message']}")
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the code location did not load in `dagster dev`; see {log_path}")
        time.sleep(1)


@contextmanager
def dagster_dev(
    dagster_home: Path, astforge_home: Path, log_path: Path, extra_env: Mapping[str, str] | None = None,
    startup_deadline_s: float = 180.0, daemon: bool = True,
) -> Iterator[str]:
    """`dagster dev` on a free port of 127.0.0.1 in its own process group; yields the base URL.

    ``daemon=False`` starts the webserver alone: nothing (sensors, backfills) can launch runs.
    Output goes to ``log_path`` (a pipe nobody reads would fill and stall it)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "DAGSTER_HOME": str(dagster_home), "ASTFORGE_HOME": str(astforge_home), "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", **(extra_env or {}),
    }
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "dagster"), "dev"] if daemon else [str(bin_dir / "dagster-webserver")]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*command, "-w", str(CHECKOUT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=CHECKOUT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + startup_deadline_s
            while not _server_answers(url):
                if proc.poll() is not None:
                    raise RuntimeError(f"`dagster dev` exited with {proc.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"`dagster dev` did not answer on {url} in {startup_deadline_s:.0f}s; "
                                       f"see {log_path}")
                time.sleep(1)
            _wait_for_code_location(url, proc, log_path, deadline)
            # Dagster's "Join the community" dialog opens a second after the first page on 127.0.0.1 and would
            # cover whatever a script clicks next; marking it seen on the server keeps it away.
            graphql(url, "mutation { setNuxSeen }")
            yield url
        finally:
            _stop_process_group(proc)


@contextmanager
def chromium_page(viewport: Mapping[str, int] = VIEWPORT) -> Iterator:
    """A Playwright page in the system Chromium (the machine cannot download Playwright's own browser build)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=dict(viewport))
            yield page
        finally:
            browser.close()
