"""The Dagster UI in a real browser: `dagster dev` on 127.0.0.1 over a small materialized instance, driven with
Playwright through the system Chromium. Screenshots land in $ASTFORGE_TEST_ARTIFACTS (else tests/artifacts/ui/)."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from tests.dagster_ui import (
    CHROMIUM,
    chromium_page,
    dagster_dev,
    fixture_source_env,
    graphql,
    materialize_small_instance,
)

# The groups ARCHITECTURE.md names as the pipelines; the definitions may hold more.
CONTRACT_GROUPS = {"corpus", "ast_first", "dsl", "models", "autocomplete", "srl", "graph_repair"}
SLICES = {"python", "javascript", "java"}
BACKFILL_DEADLINE_S = 240
BACKFILLS_QUERY = """
query {
  partitionBackfillsOrError {
    __typename
    ... on PartitionBackfills { results { id status partitionNames } }
    ... on PythonError { message }
  }
}
"""
TERMINAL_BACKFILL_STATUSES = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: install Debian's `chromium` package to run the browser test"
    if os.environ.get("ASTFORGE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"ASTFORGE_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def artifacts_dir() -> Path:
    folder = Path(os.environ.get("ASTFORGE_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts" / "ui")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def ui(tmp_path, artifacts_dir):
    """(base URL, Dagster home) of a running `dagster dev` whose instance holds the python slice of the corpus
    group and ast_corpus; every slice reads the fixture corpora."""
    _require_chromium()
    dagster_home, astforge_home = tmp_path / "dagster", tmp_path / "astforge"
    materialize_small_instance(dagster_home, astforge_home, partition="python")
    with dagster_dev(dagster_home, astforge_home, artifacts_dir / "dagster-dev.log", fixture_source_env()) as url:
        yield url, dagster_home


def _group_names() -> set[str]:
    from definitions import defs

    return {node.group_name for node in defs.resolve_asset_graph().asset_nodes}


def _wait_for_backfill(url: str) -> dict:
    """The one backfill on the instance, once the daemon has finished it (or the deadline says it never will)."""
    deadline = time.monotonic() + BACKFILL_DEADLINE_S
    while True:
        answer = graphql(url, BACKFILLS_QUERY)["partitionBackfillsOrError"]
        assert answer["__typename"] == "PartitionBackfills", answer
        backfills = answer["results"]
        assert len(backfills) == 1, backfills
        if backfills[0]["status"] in TERMINAL_BACKFILL_STATUSES:
            return backfills[0]
        if time.monotonic() > deadline:
            pytest.fail(f"backfill {backfills[0]['id']} still {backfills[0]['status']} after {BACKFILL_DEADLINE_S}s")
        time.sleep(2)


@pytest.mark.slow
def test_ui_shows_groups_and_plots_and_runs_a_slice_backfill(ui, artifacts_dir):
    import dagster as dg
    from playwright.sync_api import expect

    url, dagster_home = ui
    groups = _group_names()
    assert CONTRACT_GROUPS <= groups

    with chromium_page() as page:
        # 1. The global asset graph shows one collapsed node per group.
        page.goto(f"{url}/asset-groups")
        graph = page.locator("svg foreignObject")
        for group in sorted(groups):
            expect(graph.get_by_text(group, exact=True).first).to_be_visible()
        page.screenshot(path=artifacts_dir / "asset-graph.png", animations="disabled")

        # 2. ast_corpus's page renders its token-length histogram: the markdown opens with the PNG inline.
        page.goto(f"{url}/assets/ast_corpus")
        page.locator("tr", has_text="token_length_histogram").get_by_text("[Show Markdown]").click()
        dialog = page.get_by_role("dialog")
        plot = dialog.locator('img[src^="data:image/png;base64,"]')
        expect(plot).to_be_visible()
        assert plot.evaluate("img => img.complete && img.naturalWidth > 0"), "the histogram PNG did not decode"
        page.screenshot(path=artifacts_dir / "asset-metadata-plot.png", animations="disabled")
        dialog.get_by_role("button", name="Close").click()

        # 3. A backfill of every slice of source_files, launched from its page, runs in the daemon and succeeds.
        page.goto(f"{url}/assets/source_files")
        page.get_by_role("button", name=re.compile(r"\bMaterialize")).click()
        launch = page.get_by_role("dialog")
        launch.get_by_role("button", name="All", exact=True).click()
        expect(launch.get_by_text(f"{len(SLICES)} partitions")).to_be_visible()
        page.screenshot(path=artifacts_dir / "backfill-launch.png", animations="disabled")
        launch.get_by_role("button", name="Launch backfill").click()
        expect(launch).to_be_hidden()

        backfill = _wait_for_backfill(url)
        page.goto(f"{url}/runs/b/{backfill['id']}")
        expect(page.get_by_text("source_files").first).to_be_visible()
        page.screenshot(path=artifacts_dir / "backfill-done.png", animations="disabled")

    assert set(backfill["partitionNames"]) == SLICES
    assert backfill["status"] == "COMPLETED_SUCCESS", backfill
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert instance.get_materialized_partitions(dg.AssetKey("source_files")) == SLICES


def test_missing_chromium_skips_unless_services_are_required(monkeypatch, tmp_path):
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("ASTFORGE_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromium is missing"):
        this._require_chromium()
    monkeypatch.setenv("ASTFORGE_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="ASTFORGE_REQUIRE_SERVICES=1"):
        this._require_chromium()


@pytest.mark.slow
def test_readme_screenshot_script_falls_back_to_a_fixture_instance(tmp_path, capsys):
    import importlib.util

    _require_chromium()
    script = Path(__file__).resolve().parents[1] / "docs" / "screenshots.py"
    spec = importlib.util.spec_from_file_location("readme_screenshots", script)
    screenshots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screenshots)

    out = tmp_path / "img"
    assert screenshots.main(["--dagster-home", str(tmp_path / "no-instance"), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "(ast_corpus / token_length_histogram)" in printed.out
    assert "does not load" not in printed.err
    for name in ("asset-graph.png", "report.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert (width, height) == (1400, 900)
