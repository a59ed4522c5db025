"""`ast_first` group, data half: renamed, serialized functions (Phase 1) and docstring -> AST pairs (Phase 2)."""


import random
import statistics

import dagster as dg

from assets.corpus import code_units
from assets.k8s_tags import DATA_STEP
from assets.partitions import language_slices
from assets.profile_config import ProfileConfig, from_profile
from assets.publish import png_markdown, publish_rows, read_upstream, skip_metadata
from assets.split_checks import leak_check, leak_check_spec
from ml.codec.tokens import text_to_tokens
from ml.dataset import AstRowConfig, build_ast_rows, build_nl_ast_pairs
from ml.languages import get_language
from ml.plots import length_histogram
from ml.reports import markdown_table
from ml.schemas import AST_CORPUS, NL_AST_PAIRS
from ml.splits import split_counts
from resources import ArtifactStore, DuckDBCatalog


class AstCorpusConfig(ProfileConfig):
    mode: str = "compact"  # or "verbose": every node with <open>/<close> and <field:*> tokens
    token_cap: int | None = from_profile("ast", "token_cap")
    workers: int = 0  # 0: one per core
    # Rows re-decoded from the stored text form by the round-trip check (0: all of them).
    check_sample: int = 2000


def _length_metadata(rows: list[dict], title: str, cap: int) -> dict:
    lengths = [r["n_tokens"] for r in rows]
    meta = {"token_length_histogram": png_markdown(length_histogram(lengths, title, cap), title)}
    if lengths:
        q = statistics.quantiles(lengths, n=20) if len(lengths) > 1 else [lengths[0]] * 19
        meta |= {
            "tokens_total": int(sum(lengths)),
            "tokens_mean": round(statistics.fmean(lengths), 1),
            "tokens_p50": int(statistics.median(lengths)),
            "tokens_p95": int(q[18]),
            "tokens_max": max(lengths),
        }
    return meta


@dg.asset(
    group_name="ast_first",
    partitions_def=language_slices,
    deps=[code_units],
    description="Phase 1 rows: alpha-renamed functions without docstrings or comments, serialized as reversible "
                "AST token sequences; split train/dev/test by the renamed code's group key.",
    kinds={"python", "parquet", "duckdb"},
    op_tags=DATA_STEP,
    check_specs=[
        dg.AssetCheckSpec("roundtrip_exact", asset="ast_corpus", blocking=True,
                          description="Every stored sequence decodes back to the AST of its function."),
        dg.AssetCheckSpec("no_duplicate_ids", asset="ast_corpus", blocking=True),
        dg.AssetCheckSpec("non_empty_slice", asset="ast_corpus",
                          description="Warns when a slice has no rows (its default source is missing)."),
        leak_check_spec("ast_corpus"),
    ],
)
def ast_corpus(
    context: dg.AssetExecutionContext, config: AstCorpusConfig, artifacts: ArtifactStore, catalog: DuckDBCatalog
):
    language = context.partition_key
    units, entry = read_upstream(catalog, "code_units", language)
    context.log.info(f"{language}: renaming and serializing {len(units)} units ({config.mode} mode)")
    cfg = AstRowConfig(mode=config.mode, token_cap=config.token_cap)
    rows, skipped = build_ast_rows(language, units, cfg, config.workers or None)
    pub = publish_rows(
        context, store=artifacts, catalog=catalog, rows=rows, schema=AST_CORPUS, skipped=skipped,
        upstream={"code_units": entry["data_version"]},
    )
    yield dg.MaterializeResult(
        metadata={
            "rows": len(rows),
            "mode": config.mode,
            "token_cap": config.token_cap,
            **{f"rows_{name}": n for name, n in split_counts(r["split"] for r in rows).items()},
            "path": dg.MetadataValue.path(str(pub.path)),
            "sample": dg.MetadataValue.md(
                markdown_table(rows[:: max(1, len(rows) // 6)][:6], ["name", "n_tokens", "ast_text"], 100)
            ),
            **_length_metadata(rows, f"ast_corpus[{language}]", config.token_cap),
            **skip_metadata(skipped),
        },
        data_version=dg.DataVersion(pub.data_version),
    )
    # Checks read back what was stored, through the text form a model will see.
    codec = get_language(language).codec
    sample = rows if config.check_sample == 0 else random.Random(0).sample(rows, min(len(rows), config.check_sample))
    bad = [r["name"] for r in sample if not codec.verify(r["renamed_code"], text_to_tokens(r["ast_text"]), r["mode"])]
    failed_build = int(skipped.get("roundtrip_failed", 0))
    yield dg.AssetCheckResult(
        check_name="roundtrip_exact",
        passed=not bad and failed_build == 0,
        metadata={"checked": len(sample), "failed_stored": len(bad), "failed_at_build": failed_build,
                  "examples": ", ".join(bad[:5]) or "none"},
    )
    ids = [r["id"] for r in rows]
    yield dg.AssetCheckResult(check_name="no_duplicate_ids", passed=len(ids) == len(set(ids)),
                              metadata={"duplicates": len(ids) - len(set(ids))})
    yield dg.AssetCheckResult(check_name="non_empty_slice", passed=bool(rows),
                              severity=dg.AssetCheckSeverity.WARN, metadata={"rows": len(rows)})
    yield leak_check("ast_corpus", rows)


@dg.asset(
    group_name="ast_first",
    partitions_def=language_slices,
    deps=[ast_corpus],
    description="Phase 2 rows: docstring text -> AST tokens of the function (docstring removed from the target); "
                "each pair keeps its ast_corpus row's group key and split.",
    kinds={"python", "parquet", "duckdb"},
    op_tags=DATA_STEP,
    check_specs=[leak_check_spec("nl_ast_pairs")],
)
def nl_ast_pairs(
    context: dg.AssetExecutionContext, config: AstCorpusConfig, artifacts: ArtifactStore, catalog: DuckDBCatalog
) -> dg.MaterializeResult:
    language = context.partition_key
    ast_rows, entry = read_upstream(catalog, "ast_corpus", language)
    cfg = AstRowConfig(mode=config.mode, token_cap=config.token_cap)
    pairs, skipped = build_nl_ast_pairs(language, ast_rows, cfg, config.workers or None)
    pub = publish_rows(
        context, store=artifacts, catalog=catalog, rows=pairs, schema=NL_AST_PAIRS, skipped=skipped,
        upstream={"ast_corpus": entry["data_version"]},
    )
    return dg.MaterializeResult(
        metadata={
            "rows": len(pairs),
            **{f"rows_{name}": n for name, n in split_counts(p["split"] for p in pairs).items()},
            "path": dg.MetadataValue.path(str(pub.path)),
            "sample": dg.MetadataValue.md(
                markdown_table(pairs[:: max(1, len(pairs) // 6)][:6], ["name", "nl", "n_tokens"], 100)
            ),
            **_length_metadata(pairs, f"nl_ast_pairs[{language}]", config.token_cap),
            **skip_metadata(skipped),
        },
        data_version=dg.DataVersion(pub.data_version),
        check_results=[leak_check("nl_ast_pairs", pairs)],
    )
