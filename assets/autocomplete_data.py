"""`autocomplete` group, data half: FIM and comment-to-code rows per language slice (`fim_samples`) and the Stage B
domain corpus per slice (`domain_corpus`, AWS CDK by default: the Python wheel's examples, the npm package's
TypeScript examples that are plain JavaScript, its Java translations), each with a `split` column (train / dev /
test, decided by a group key: the file, or the domain's near-duplicate cluster) and a blocking check that no group
is on two sides."""

from collections import Counter
from functools import partial
from typing import Annotated

import dagster as dg
from pydantic import Field, model_validator

from assets.config_checks import Fraction, NonNegativeInt, PositiveInt, Seed, TrainFraction
from assets.corpus import code_units
from assets.k8s_tags import DATA_STEP
from assets.partitions import language_slices
from assets.profile_config import ProfileConfig, from_profile
from assets.publish import publish_rows, read_upstream, skip_metadata
from assets.split_checks import leak_check, leak_check_spec
from ml.autocomplete.fim import FimRates, dataset_rows
from ml.languages import get_language
from ml.schemas import FIM_SAMPLES
from ml.splits import DEFAULT_DEV_FRACTION, DEFAULT_TEST_FRACTION
from resources import ArtifactStore, DuckDBCatalog

GROUP = "autocomplete"

class FimRowsConfig(ProfileConfig):
    fim_rate: Fraction = 0.8  # FIM rows; the rest comment-to-code (where a unit has a docstring / leading comment)
    spm_rate: Fraction = 0.5  # of the FIM rows: suffix-prefix-middle order (else prefix-suffix-middle)
    ast_span_rate: Fraction = 0.3  # of the FIM rows: the middle is one whole syntax node
    line_span_rate: Fraction = 0.5  # of the FIM rows: one to three whole lines; the rest: two random characters
    max_context_chars: PositiveInt = 400  # prefix and suffix, each, cut at line boundaries
    max_middle_chars: PositiveInt = 240
    # of the split groups (files; the domain's near-duplicate clusters), by a stable hash of the group key: dev and
    # test groups give single-line infilling tasks only (tune on dev, report on test), train groups the training rows
    dev_fraction: TrainFraction = DEFAULT_DEV_FRACTION
    test_fraction: TrainFraction = DEFAULT_TEST_FRACTION
    seed: Seed = 0

    @model_validator(mode="after")
    def _span_shares(self):
        if self.ast_span_rate + self.line_span_rate > 1:
            raise ValueError(f"ast_span_rate + line_span_rate must be at most 1, not "
                             f"{self.ast_span_rate} + {self.line_span_rate}")
        if self.dev_fraction + self.test_fraction >= 1:
            raise ValueError(f"dev_fraction + test_fraction must leave room for train, not "
                             f"{self.dev_fraction} + {self.test_fraction}")
        return self

    def split_fractions(self) -> dict[str, float]:
        return {"dev_fraction": self.dev_fraction, "test_fraction": self.test_fraction}

    def rates(self) -> FimRates:
        return FimRates(fim_rate=self.fim_rate, spm_rate=self.spm_rate, ast_span_rate=self.ast_span_rate,
                        line_span_rate=self.line_span_rate,
                        max_context_chars=self.max_context_chars, max_middle_chars=self.max_middle_chars)


class DomainCorpusConfig(FimRowsConfig):
    # default: AWS CDK's examples in the slice's language (python: the aws-cdk-lib wheel's docstrings; javascript,
    # java: the aws-cdk-lib npm package's jsii tablet) | dir:PATH | zip:PATH (every file of the slice's language) |
    # npm:PATH (the jsii tablet of a jsii library's npm tarball or folder)
    source: str = "default"
    max_examples: NonNegativeInt | None = from_profile("autocomplete", "domain_max_examples")  # 0 = all
    min_chars: PositiveInt = 40
    max_chars: PositiveInt = 2000
    # examples whose token-shingle Jaccard similarity reaches this (directly or through a chain) share a split;
    # MinHash LSH (128 permutations) has no banding above 0.98
    near_duplicate_threshold: Annotated[float, Field(gt=0, le=0.98)] = 0.8


def _row_metadata(rows: list[dict]) -> dict:
    train = [r for r in rows if r["split"] == "train"]
    tasks = {s: [r for r in rows if r["split"] == s] for s in ("dev", "test")}
    kinds = Counter(r["kind"] for r in train)
    fim = [r for r in train if r["kind"] == "fim"]
    sample = next((r for r in fim if r["span"] == "ast"), fim[0] if fim else None)
    meta = {
        "training_rows": len(train), "fim_rows": kinds["fim"], "comment_to_code_rows": kinds["comment_to_code"],
        "spm_rows": sum(r["order"] == "spm" for r in fim), "ast_span_rows": sum(r["span"] == "ast" for r in fim),
        "train_groups": len({r["group_key"] for r in train}),
        **{f"{s}_tasks": len(t) for s, t in tasks.items()},
        **{f"{s}_groups": len({r["group_key"] for r in t}) for s, t in tasks.items()},
    }
    if sample is not None:
        meta["sample_fim_row"] = dg.MetadataValue.md(
            f"order {sample['order']}, span {sample['span']}\n\n```\n{sample['prompt']}\n```\nmiddle:\n"
            f"```\n{sample['completion']}\n```")
    return meta


@dg.asset(group_name=GROUP, partitions_def=language_slices, deps=[code_units], kinds={"python", "parquet", "duckdb"},
          op_tags=DATA_STEP, check_specs=[leak_check_spec("fim_samples")],
          description="Fill-in-the-middle (PSM and SPM; character or AST-node spans) and comment-to-code rows from "
                      "the slice's code units, split train/dev/test by file; dev and test files give single-line "
                      "infilling tasks.")
def fim_samples(context: dg.AssetExecutionContext, config: FimRowsConfig, artifacts: ArtifactStore,
                catalog: DuckDBCatalog) -> dg.MaterializeResult:
    language = context.partition_key
    units, entry = read_upstream(catalog, "code_units", language)
    if not units:
        raise dg.Failure(f"fim_samples: code_units[{language}] has no units (is the slice's source installed?)")
    rows = dataset_rows(units, language, config.rates(), seed=config.seed, **config.split_fractions(),
                        nl_target=get_language(language).nl_target)
    skipped = {"no_span": len(units) - len(rows)} if len(rows) < len(units) else {}
    publish_rows(context, store=artifacts, catalog=catalog, rows=rows, schema=FIM_SAMPLES, skipped=skipped,
                 upstream={"code_units": entry["data_version"]})
    return dg.MaterializeResult(metadata={"units": len(units), **_row_metadata(rows)},
                                check_results=[leak_check("fim_samples", rows)])


@dg.asset(group_name=GROUP, partitions_def=language_slices, kinds={"python", "parquet", "duckdb"}, op_tags=DATA_STEP,
          check_specs=[leak_check_spec("domain_corpus")],
          description="Stage B domain corpus of the slice: AWS CDK's code examples (python: the aws-cdk-lib wheel's "
                      "docstrings; javascript: the npm package's TypeScript examples that are plain JavaScript; java: "
                      "their Java translations) or dir:/zip:/npm: sources of your own, parsed by the slice's parser, "
                      "deduplicated, split train/dev/test by near-duplicate cluster (edited copies of one example "
                      "share a split), made into FIM / comment-to-code rows and infilling tasks like fim_samples.")
def domain_corpus(context: dg.AssetExecutionContext, config: DomainCorpusConfig, artifacts: ArtifactStore,
                  catalog: DuckDBCatalog) -> dg.MaterializeResult:
    from ml.autocomplete.domain import domain_examples, domain_units, without_leading_comment

    language = context.partition_key
    try:
        found = domain_examples(config.source, language=language, max_examples=config.max_examples,
                                min_chars=config.min_chars, max_chars=config.max_chars)
    except (FileNotFoundError, ValueError) as exc:
        raise dg.Failure(f"domain_corpus[{language}]: {exc}") from exc
    if not found.examples:
        raise dg.Failure(f"domain_corpus[{language}]: no usable example in {config.source!r} ({dict(found.skipped)})")
    context.log.info(f"domain_corpus[{language}]: {len(found.examples)} examples from {found.files_read} files "
                     f"({dict(found.skipped)} skipped)")
    units = domain_units(found.examples, threshold=config.near_duplicate_threshold, language=language)
    rows = dataset_rows(units, language, config.rates(), seed=config.seed, **config.split_fractions(),
                        nl_target=partial(without_leading_comment, language=language))
    publish_rows(context, store=artifacts, catalog=catalog, rows=rows, schema=FIM_SAMPLES,
                 skipped=dict(found.skipped), upstream={"source": config.source})
    return dg.MaterializeResult(metadata={
        "source": config.source, "examples": len(found.examples), "files_read": found.files_read,
        "near_duplicate_clusters": len({u["group_key"] for u in units}),
        **skip_metadata(found.skipped), **_row_metadata(rows),
    }, check_results=[leak_check("domain_corpus", rows)])


def rows_of(catalog: DuckDBCatalog, languages: list[str],
            asset: str = "fim_samples") -> tuple[list[dict], dict[str, str]]:
    """``asset``'s rows (fim_samples or domain_corpus) of ``languages`` (each slice's latest) and their data versions;
    a missing slice fails."""
    rows, versions = [], {}
    for language in languages:
        entry = catalog.latest_artifact(asset, language)
        if entry is None:
            raise dg.Failure(f"{asset}[{language}] is not materialized: run autocomplete_data_job for the slice "
                             f"(or remove {language!r} from `languages`)")
        part, _ = read_upstream(catalog, asset, language)
        rows += part
        versions[f"{asset}[{language}]"] = entry["data_version"]
    return rows, versions


AUTOCOMPLETE_DATA_ASSETS = [fim_samples, domain_corpus]
