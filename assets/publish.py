"""The write path every dataset asset shares: Parquet in a staging folder, renamed into place,
then registered in the catalog with its rows in one transaction. Each folder carries a manifest
from which the catalog can be rebuilt (resources/catalog_rebuild.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from ml.schemas import to_table
from ml.training.glue import MAX_STEPS
from resources import ArtifactStore, DuckDBCatalog
from resources.artifacts import SIDECARS

UNPARTITIONED = "all"


@dataclass(frozen=True)
class Published:
    path: Path
    parquet: Path
    data_version: str
    rows: int


def folder_digest(folder: Path) -> str:
    """Content version of a folder: names and bytes of every file in it (not the manifest, which says who
    registered the content and when)."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and not (f.parent == folder and f.name in SIDECARS):
            h.update(f.relative_to(folder).as_posix().encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def publish_folder(
    context: dg.AssetExecutionContext,
    *,
    store: ArtifactStore,
    catalog: DuckDBCatalog,
    build: Callable[[Path], None],
    rows: int,
    upstream: Mapping[str, str] | None = None,
    table: str | None = None,
    exclude_columns: tuple[str, ...] = (),
    skipped: Mapping[str, int] | None = None,
    table_asset_column: bool = False,
) -> Published:
    """``build(tmp)`` writes the artifact into a staging folder; it is renamed into place under its
    content version and registered (with its rows in ``table`` when given) in one catalog transaction.
    Any failure leaves the previous version as the registered one. ``table_asset_column``: ``table`` is shared by
    several assets (e.g. ``eval_results``), its rows carry ``asset_key`` and only this asset's rows are replaced."""
    asset = context.asset_key.to_user_string()
    partition = partition_of(context)
    created_at = datetime.now(UTC).replace(tzinfo=None)
    # Everything the catalog learns of this registration, so that a rebuild can tell it again.
    manifest = {
        "asset_key": asset, "partition": partition, "upstream": dict(upstream or {}), "run_id": context.run_id,
        "created_at": created_at.isoformat(), "rows": rows, "table": table,
        "parquet": "rows.parquet" if table else None, "exclude_columns": list(exclude_columns),
        "table_asset_key": asset if table_asset_column else None,
        "skipped": {k: int(v) for k, v in sorted((skipped or {}).items())},
    }
    with store.staging(asset) as tmp:
        build(tmp)
        version = folder_digest(tmp)
        manifest["data_version"] = version
        store.write_manifest(tmp, manifest)
        final, created = store.commit(tmp, asset, partition, version)
    try:
        catalog.publish_partition(
            asset_key=asset,
            partition=partition,
            data_version=version,
            path=final,
            run_id=context.run_id,
            rows=rows,
            upstream=upstream,
            table=table,
            parquet=final / "rows.parquet" if table else None,
            exclude_columns=exclude_columns,
            skipped=skipped,
            table_asset_key=asset if table_asset_column else None,
            created_at=created_at,
        )
    except BaseException:
        # The catalog still points at the previous version: drop the folder nobody references.
        if created:
            shutil.rmtree(final, ignore_errors=True)
        raise
    if not created:
        # Same content registered again (by this run, maybe from other upstream versions): the folder's manifest
        # tells its latest registration, the one a rebuilt catalog must make current.
        store.write_manifest(final, manifest)
    context.log.info(f"{asset}[{partition}]: {rows} rows, version {version} at {final}")
    return Published(final, final / "rows.parquet", version, rows)


def publish_rows(
    context: dg.AssetExecutionContext,
    *,
    store: ArtifactStore,
    catalog: DuckDBCatalog,
    rows: list[dict],
    schema: pa.Schema,
    skipped: Mapping[str, int],
    upstream: Mapping[str, str] | None = None,
    exclude_columns: tuple[str, ...] = (),
) -> Published:
    """A dataset artifact: ``rows.parquet``, mirrored into the catalog table named after the asset."""

    def build(tmp: Path) -> None:
        pq.write_table(to_table(rows, schema), tmp / "rows.parquet", compression="zstd")

    return publish_folder(
        context, store=store, catalog=catalog, build=build, rows=len(rows), upstream=upstream,
        table=context.asset_key.to_user_string(), exclude_columns=exclude_columns, skipped=skipped,
    )


def partition_of(context: dg.AssetExecutionContext) -> str:
    """The slice of a partitioned asset; ``all`` for an unpartitioned one (the catalog keys every row by one)."""
    # an unpartitioned asset (a shared base model) in a partitioned run still sees the run's partition key
    partitioned = context.has_partition_key and context.assets_def.partitions_def is not None
    return context.partition_key if partitioned else UNPARTITIONED


def read_upstream(catalog: DuckDBCatalog, asset: str, partition: str) -> tuple[list[dict], dict]:
    """Rows of the latest materialization of ``asset`` for this slice, and its catalog entry."""
    entry = catalog.require_artifact(asset, partition)
    return pq.read_table(Path(entry["path"]) / "rows.parquet").to_pylist(), entry


def png_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


_LOCAL_IMAGE = re.compile(r"!\[([^\]]*)\]\(([\w.-]+\.png)\)")


def report_markdown(report: str, folder: Path) -> dg.MetadataValue:
    """A report as UI metadata: the UI sees only the text, so the images it links beside ``report.md`` in the
    artifact folder (``![alt](name.png)``) are embedded as data URLs."""

    def embed(match: re.Match) -> str:
        image = folder / match.group(2)
        if not image.is_file():
            return match.group(0)
        return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(image.read_bytes()).decode()})"

    return dg.MetadataValue.md(_LOCAL_IMAGE.sub(embed, report))


def skip_metadata(skipped: Mapping[str, int]) -> dict:
    return {f"skipped_{k}": dg.MetadataValue.int(int(v)) for k, v in sorted(skipped.items())} | {
        "skipped_total": dg.MetadataValue.int(int(sum(skipped.values())))
    }


def log_progress(context: dg.AssetExecutionContext, what: str) -> Callable[[int, dict], None]:
    """A training ``on_log`` callback that writes each log entry's numbers to the run log, as ``step N/MAX`` when
    the entry says the run's planned steps (the demo's progress bar reads it)."""

    def on_log(step: int, logs: dict) -> None:
        total = logs.get(MAX_STEPS)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in logs.items() if isinstance(v, int | float) and k != MAX_STEPS)
        context.log.info(f"{what} step {step}{f'/{total}' if total else ''}: {shown}")

    return on_log


def checkpoint_dir(store: ArtifactStore, asset: str, partition: str, key: dict) -> Path:
    """Checkpoints live outside staging, keyed by inputs and config (all but ``max_steps``: a longer
    run continues a shorter one), so a re-run after an interruption resumes them."""
    key = {k: ({f: v for f, v in cfg.items() if f != "max_steps"} if isinstance(cfg, dict) else cfg)
           for k, cfg in key.items()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return store.root_path / asset / partition / "_checkpoints" / digest
