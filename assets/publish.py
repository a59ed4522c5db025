"""The write path every dataset asset shares: Parquet in a staging folder, renamed into place,
then registered in the catalog with its rows in one transaction."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from ml.schemas import to_table
from resources import ArtifactStore, DuckDBCatalog


@dataclass(frozen=True)
class Published:
    path: Path
    parquet: Path
    data_version: str
    rows: int


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def publish_rows(
    context: dg.AssetExecutionContext,
    *,
    store: ArtifactStore,
    catalog: DuckDBCatalog,
    rows: list[dict],
    schema: pa.Schema,
    skipped: Mapping[str, int],
    upstream: Mapping[str, str] | None = None,
    files: Mapping[str, bytes] | None = None,
    exclude_columns: tuple[str, ...] = (),
) -> Published:
    asset = context.asset_key.to_user_string()
    partition = context.partition_key
    with store.staging(asset) as tmp:
        parquet = tmp / "rows.parquet"
        pq.write_table(to_table(rows, schema), parquet, compression="zstd")
        version = file_digest(parquet)
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
        final, created = store.commit(tmp, asset, partition, version)
    try:
        catalog.publish_partition(
            asset_key=asset,
            partition=partition,
            data_version=version,
            path=final,
            run_id=context.run_id,
            rows=len(rows),
            upstream=upstream,
            table=asset,
            parquet=final / "rows.parquet",
            exclude_columns=exclude_columns,
            skipped=skipped,
        )
    except BaseException:
        # The catalog still points at the previous version: drop the folder nobody references.
        if created:
            import shutil

            shutil.rmtree(final, ignore_errors=True)
        raise
    context.log.info(f"{asset}[{partition}]: {len(rows)} rows, version {version} at {final}")
    return Published(final, final / "rows.parquet", version, len(rows))


def read_upstream(catalog: DuckDBCatalog, asset: str, partition: str) -> tuple[list[dict], dict]:
    """Rows of the latest materialization of ``asset`` for this slice, and its catalog entry."""
    entry = catalog.require_artifact(asset, partition)
    return pq.read_table(Path(entry["path"]) / "rows.parquet").to_pylist(), entry


def png_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def skip_metadata(skipped: Mapping[str, int]) -> dict:
    return {f"skipped_{k}": dg.MetadataValue.int(int(v)) for k, v in sorted(skipped.items())} | {
        "skipped_total": dg.MetadataValue.int(int(sum(skipped.values())))
    }
