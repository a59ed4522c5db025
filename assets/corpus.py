"""`corpus` group: the source files of a language slice and the function-level units cut from them."""


from collections import Counter
from dataclasses import asdict

import dagster as dg

from assets.k8s_tags import DATA_STEP
from assets.partitions import language_slices
from assets.profile_config import ProfileConfig, from_profile
from assets.publish import publish_rows, read_upstream, skip_metadata
from ml.corpus.ingest import FileRow, extract_units, read_files
from ml.corpus.sources import SourceError
from ml.reports import markdown_table
from ml.schemas import CODE_UNITS, SOURCE_FILES
from resources import ArtifactStore, CorpusResource, DuckDBCatalog


class CodeUnitsConfig(ProfileConfig):
    max_unit_chars: int | None = from_profile("ast", "max_unit_chars")
    workers: int = 0  # 0: one per core


@dg.asset(
    group_name="corpus",
    partitions_def=language_slices,
    description="Source files of one language slice, filtered (binary, non-UTF-8, minified, oversized).",
    kinds={"python", "parquet", "duckdb"},
    op_tags=DATA_STEP,
)
def source_files(
    context: dg.AssetExecutionContext, corpus: CorpusResource, artifacts: ArtifactStore, catalog: DuckDBCatalog
) -> dg.MaterializeResult:
    language = context.partition_key
    spec = corpus.spec_for(language)
    warning = ""
    if spec.kind == "missing":
        warning = f"empty slice: {spec.note}"
        context.log.warning(f"{language}: {warning}")
    try:
        found = read_files(language, spec, corpus.file_limit(), corpus.file_filter())
    except SourceError as exc:
        raise dg.Failure(f"{language}: cannot read corpus source {spec.label}: {exc}") from exc
    rows = [asdict(r) | {"language": language} for r in found.rows]
    pub = publish_rows(
        context, store=artifacts, catalog=catalog, rows=rows, schema=SOURCE_FILES,
        skipped=found.skipped, exclude_columns=("text",),
    )
    kept = sum(1 for r in found.rows if r.text is not None)
    context.log.info(f"{language}: {kept} usable files of {len(found.rows)} from {spec.label}")
    return dg.MaterializeResult(
        metadata={
            "source": spec.label,
            "files": len(found.rows),
            "usable_files": kept,
            "file_limit": corpus.file_limit() or 0,
            "warning": warning or "none",
            "path": dg.MetadataValue.path(str(pub.path)),
            **skip_metadata(found.skipped),
        },
        data_version=dg.DataVersion(pub.data_version),
    )


@dg.asset(
    group_name="corpus",
    partitions_def=language_slices,
    deps=[source_files],
    description="Function/method-level code units with content-hash ids, exact duplicates removed.",
    kinds={"python", "parquet", "duckdb"},
    op_tags=DATA_STEP,
)
def code_units(
    context: dg.AssetExecutionContext, config: CodeUnitsConfig, artifacts: ArtifactStore, catalog: DuckDBCatalog
) -> dg.MaterializeResult:
    language = context.partition_key
    files, entry = read_upstream(catalog, "source_files", language)
    file_rows = [
        FileRow(f["source"], f["path"], f["sha256"], f["size_bytes"], f["text"], f["skip_reason"]) for f in files
    ]
    context.log.info(f"{language}: extracting units from {sum(f.text is not None for f in file_rows)} files")
    units, skipped = extract_units(language, file_rows, config.max_unit_chars, config.workers or None)
    rows = [u.to_row() for u in units]
    pub = publish_rows(
        context, store=artifacts, catalog=catalog, rows=rows, schema=CODE_UNITS, skipped=skipped,
        upstream={"source_files": entry["data_version"]},
    )
    with_doc = sum(1 for r in rows if r["docstring"])
    sample = rows[:: max(1, len(rows) // 8)][:8]
    return dg.MaterializeResult(
        metadata={
            "units": len(rows),
            "units_with_docstring": with_doc,
            "files_with_units": len({r["path"] for r in rows}),
            "path": dg.MetadataValue.path(str(pub.path)),
            "sample": dg.MetadataValue.md(markdown_table(sample, ["name", "path", "start_line", "docstring"], 60)),
            **skip_metadata(Counter(skipped)),
        },
        data_version=dg.DataVersion(pub.data_version),
    )
