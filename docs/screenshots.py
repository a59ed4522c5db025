"""The README's screenshots of the Dagster UI: docs/img/asset-graph.png and docs/img/report.png.

    .venv/bin/python docs/screenshots.py                      # from what `make demo` ran (./.dagster), if anything
    .venv/bin/python docs/screenshots.py --dagster-home DIR   # from another instance
    .venv/bin/python docs/screenshots.py --asset dsl_report   # another asset's report

The instance is copied into a temporary folder first (the webserver writes to its instance; yours stays as it is)
and served by `dagster-webserver` alone on 127.0.0.1: no daemon, so nothing can launch a run. With no
materialized report in the instance, a small one is built from the test fixtures (the corpus group and ast_corpus
of the python slice) and the report screenshot shows ast_corpus's token-length histogram instead.
Needs Chromium at /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
# Richest first: the first one the instance has materialized is shown, with the markdown in this metadata entry.
# (autocomplete_eval's report links its plot as a file, which the UI cannot show: it comes after the others.)
REPORT_CANDIDATES = [
    ("dsl_report", "report"), ("ast_eval", "report"), ("srl_eval", "report"), ("graph_repair_eval", "report"),
    ("autocomplete_eval", "report"),
]
FALLBACK_REPORT = ("ast_corpus", "token_length_histogram")


def _default_dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or CHECKOUT / ".dagster")


def _materialized(dagster_home: Path, asset: str) -> bool:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None


def _pick_report(dagster_home: Path, asset: str | None, metadata_key: str) -> tuple[str, str] | None:
    if asset:
        return (asset, metadata_key) if _materialized(dagster_home, asset) else None
    return next(((a, key) for a, key in REPORT_CANDIDATES if _materialized(dagster_home, a)), None)


def _shoot_asset_graph(page, url: str, path: Path) -> None:
    from playwright.sync_api import expect

    page.goto(f"{url}/asset-groups")
    expect(page.locator("svg foreignObject").get_by_text("corpus", exact=True).first).to_be_visible()
    # group nodes say "fetching statuses" until the asset health query answers
    expect(page.get_by_text("fetching statuses")).to_have_count(0, timeout=60_000)
    page.screenshot(path=path, animations="disabled")


def _shoot_report(page, url: str, asset: str, metadata_key: str, path: Path) -> None:
    from playwright.sync_api import expect

    page.goto(f"{url}/assets/{asset}")
    row = page.locator("tr", has_text=metadata_key).first
    expect(row).to_be_visible()
    # Long markdown sits behind a link that opens it in a dialog; short markdown renders in the table.
    show = row.get_by_text("[Show Markdown]")
    if show.count():
        show.click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        for image in dialog.locator("img").all():
            expect(image).to_be_visible()
            if not image.evaluate("img => img.complete && img.naturalWidth > 0"):
                print(f"[screenshots] {asset}/{metadata_key}: image {image.get_attribute('alt')!r} does not load "
                      f"in the UI (a file link rather than a data: URL?)", file=sys.stderr)
        # the dialog is taller than the window, and focusing its Close button scrolled to the end: show its top
        dialog.evaluate("el => el.scrollIntoView({block: 'start'})")
    page.screenshot(path=path, animations="disabled")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dagster-home", type=Path, default=_default_dagster_home(),
                        help="instance to show (copied first; default: $DAGSTER_HOME, else ./.dagster)")
    parser.add_argument("--asset", help="asset whose report to show (default: the richest one materialized)")
    parser.add_argument("--metadata", default="report", help="its metadata entry holding the markdown report")
    parser.add_argument("--out", type=Path, default=CHECKOUT / "docs" / "img", help="folder for the PNGs")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(CHECKOUT))
    from tests.dagster_ui import CHROMIUM, chromium_page, dagster_dev, materialize_small_instance

    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: install Debian's `chromium` package", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="astforge-screenshots-") as tmp:
        work = Path(tmp)
        dagster_home, astforge_home = work / "dagster", work / "astforge"
        astforge_home.mkdir()
        report = None
        if (args.dagster_home / "dagster.yaml").is_file():
            shutil.copytree(args.dagster_home, dagster_home)
            report = _pick_report(dagster_home, args.asset, args.metadata)
        if report is None:
            shutil.rmtree(dagster_home, ignore_errors=True)
            wanted = f"materialization of {args.asset}" if args.asset else "materialized report"
            print(f"[screenshots] {args.dagster_home} holds no {wanted}: building a small instance from the "
                  f"test fixtures", file=sys.stderr)
            materialize_small_instance(dagster_home, astforge_home)
            report = FALLBACK_REPORT
        with dagster_dev(dagster_home, astforge_home, work / "webserver.log", daemon=False) as url:
            with chromium_page() as page:
                _shoot_asset_graph(page, url, args.out / "asset-graph.png")
                _shoot_report(page, url, *report, args.out / "report.png")
    print(f"[screenshots] wrote {args.out / 'asset-graph.png'} and {args.out / 'report.png'} "
          f"({report[0]} / {report[1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
