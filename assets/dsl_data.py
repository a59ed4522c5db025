"""`dsl` group, data: teacher-invented domains, their JSON Schemas, natural-language requests, teacher-labelled
(request, AST) rows with schema-invalid negatives, and the prompt/completion corpus. Unpartitioned: the catalog keys
its rows by ``all``."""

import json
import random
import time
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
from pydantic import model_validator

from assets.config_checks import Fraction, NonNegativeInt, PositiveInt, SchemaView, Seed, TrainFraction
from assets.k8s_tags import DATA_STEP
from assets.profile_config import ProfileConfig, from_profile, or_profile
from assets.publish import UNPARTITIONED, publish_folder, publish_rows, read_upstream, skip_metadata
from assets.split_checks import leak_check, leak_check_spec
from ml import schemas
from ml.dsl.dataset import mutated_negatives, row_id
from ml.dsl.domains import DOMAIN_NAMES, build_schema, sample_operators, spec_from_dict, spec_to_dict
from ml.dsl.format import ast_to_text
from ml.splits import DEFAULT_DEV_FRACTION, DEFAULT_TEST_FRACTION, split_counts
from resources import ArtifactStore, DuckDBCatalog
from resources.teacher import TeacherResource

GROUP = "dsl"
P = UNPARTITIONED


# ---------------------------------------------------------------------------------------------------- configs


class DslDomainSpecsConfig(ProfileConfig):
    domains: list[str] = list(DOMAIN_NAMES)
    # Never trained on: the evaluation reports them apart, to tell schema reading from memorization.
    heldout_domains: list[str] = ["recipes", "weather"]
    examples_per_schema: int | None = from_profile("dsl", "examples_per_schema")
    seed: int = 11
    # A domain the teacher gives no usable spec for (after its retries) is dropped and counted; the step fails
    # only when fewer training domains than this remain.
    min_domains: int = 2


class DslSchemasConfig(dg.Config):
    min_operators: int = 4
    max_operators: int = 7
    seed: int = 11


class DslQueriesConfig(ProfileConfig):
    per_schema_queries: PositiveInt | None = from_profile("dsl", "per_schema_queries")
    seed: Seed = 11


class DslDatasetConfig(ProfileConfig):
    positives_per_schema: PositiveInt | None = from_profile("dsl", "positives_per_schema")
    negative_ratio: Fraction = 0.6  # schema-invalid mutations per kept positive (1: every positive once)
    # Shares of the training domains' requests (by group key: the canonical label AST) in dev (SFT validation)
    # and test (evaluation); held-out domains are all test.
    dev_fraction: TrainFraction = DEFAULT_DEV_FRACTION
    test_fraction: TrainFraction = DEFAULT_TEST_FRACTION
    seed: Seed = 11

    @model_validator(mode="after")
    def _room_for_train(self):
        if self.dev_fraction + self.test_fraction >= 1:
            raise ValueError(f"dev_fraction ({self.dev_fraction}) + test_fraction ({self.test_fraction}) must leave "
                             "room for train (< 1)")
        return self


class DslTrainingCorpusConfig(ProfileConfig):
    include_invalid: bool = False  # mutated, schema-invalid targets (off: they would teach schema violations)
    max_samples: NonNegativeInt = 0  # cap on training rows; 0 = all
    # json: the whole JSON Schema in the prompt | digest: a few lines off it
    schema_view: or_profile(SchemaView) = from_profile("dsl", "schema_view", "name")
    seed: Seed = 0  # the max_samples draw


# ---------------------------------------------------------------------------------------------------- helpers


def teacher_call(what: str, fn, *args, **kwargs):
    """Run a teacher call; a dead server fails the step with the teacher's message (earlier artifacts stay)."""
    from ml.dsl.teachers import TeacherUnavailable

    try:
        return fn(*args, **kwargs)
    except TeacherUnavailable as exc:
        raise dg.Failure(f"{what}: the teacher is unavailable. {exc}") from exc


def specs_and_schemas(catalog: DuckDBCatalog) -> tuple[dict, dict, dict, dict]:
    """Per domain: the final spec, its schema, and its split (train | heldout_domain); and the catalog entry."""
    rows, entry = read_upstream(catalog, "dsl_schemas", P)
    specs, schemas_, splits = {}, {}, {}
    for r in rows:
        schema = json.loads(r["schema_json"])
        specs[r["domain"]] = spec_from_dict(schema["x-astforge-spec"])
        schemas_[r["domain"]] = {k: v for k, v in schema.items() if k != "x-astforge-spec"}
        splits[r["domain"]] = r["split"]
    return specs, schemas_, splits, entry


def teacher_metadata(teacher) -> dict:
    """The teacher's backend and its call counters, for an asset's metadata."""
    return {"teacher": teacher.describe().get("backend", teacher.name),
            **{f"teacher_{k}": v for k, v in teacher.stats.as_dict().items()}}


# ---------------------------------------------------------------------------------------------------- data


@dg.asset(group_name=GROUP, kinds={"python"}, op_tags=DATA_STEP,
          description="Teacher-invented domains: fields, types, enum values and example requests per domain prompt.")
def dsl_domain_specs(context: dg.AssetExecutionContext, config: DslDomainSpecsConfig, teacher: TeacherResource,
                     artifacts: ArtifactStore, catalog: DuckDBCatalog) -> dg.MaterializeResult:
    unknown = sorted(set(config.heldout_domains) - set(config.domains))
    if unknown:
        raise dg.Failure(f"heldout_domains {unknown} are not in domains {config.domains}")
    if not set(config.domains) - set(config.heldout_domains):
        raise dg.Failure("every domain is held out: nothing is left to train on")
    to_train = [d for d in config.domains if d not in config.heldout_domains]
    if len(to_train) < config.min_domains:
        raise dg.Failure(f"dsl_domain_specs: min_domains is {config.min_domains} but domains has only "
                         f"{len(to_train)} training domain(s) ({', '.join(to_train)}); lower min_domains or add "
                         f"domains")
    t = teacher.teacher()
    rows, dropped = [], {}
    for name in config.domains:
        split = "heldout_domain" if name in config.heldout_domains else "train"
        try:
            # A dead server still fails the step (TeacherUnavailable); unusable answers for one domain drop it.
            spec, examples = teacher_call("dsl_domain_specs", t.domain_spec, name, seed=config.seed,
                                          examples=config.examples_per_schema)
        except ValueError as exc:
            dropped[name] = str(exc)
            context.log.warning(f"dsl_domain_specs: dropped domain {name!r} ({split}): {exc}")
            continue
        rows.append({"domain": name, "split": split, "teacher": t.name, "spec_json": json.dumps(spec_to_dict(spec)),
                     "example_queries_json": json.dumps(examples, ensure_ascii=False)})
        context.log.info(f"dsl_domain_specs: {name} ({split}): {len(spec.fields)} fields, {len(examples)} examples")
    trained = [r["domain"] for r in rows if r["split"] == "train"]
    if len(trained) < config.min_domains:
        raise dg.Failure(
            f"dsl_domain_specs: {len(trained)} training domain(s) left ({', '.join(trained) or 'none'}), fewer than "
            f"min_domains={config.min_domains}; the teacher gave no usable spec for "
            + "; ".join(f"{d!r} ({why})" for d, why in dropped.items())
            + ". The previous dsl_domain_specs, if any, stays current."
        )
    if dropped and not any(r["split"] == "heldout_domain" for r in rows):
        context.log.warning("dsl_domain_specs: no held-out domain is left: the evaluation cannot tell schema "
                            "reading from memorization")
    skipped = {"teacher_dropped": len(dropped)} if dropped else {}
    publish_rows(context, store=artifacts, catalog=catalog, rows=rows, schema=schemas.DSL_DOMAIN_SPECS,
                 skipped=skipped)
    return dg.MaterializeResult(metadata={
        "domains": len(rows), "training_domains": len(trained),
        "heldout_domains": ", ".join(r["domain"] for r in rows if r["split"] == "heldout_domain") or "none",
        "domains_dropped": len(dropped), "dropped_domains": ", ".join(dropped) or "none",
        **teacher_metadata(t),
    })


@dg.asset(group_name=GROUP, deps=[dsl_domain_specs], kinds={"json"}, op_tags=DATA_STEP,
          description="One JSON Schema per domain: its fields and enums plus a seeded operator sample, injected "
                      "into the base query-schema template.")
def dsl_schemas(context: dg.AssetExecutionContext, config: DslSchemasConfig, artifacts: ArtifactStore,
                catalog: DuckDBCatalog) -> dg.MaterializeResult:
    import dataclasses

    specs, entry = read_upstream(catalog, "dsl_domain_specs", P)
    rows, files = [], {}
    for r in specs:
        spec = spec_from_dict(json.loads(r["spec_json"]))
        ops = sample_operators(random.Random(f"operators:{r['domain']}:{config.seed}"),
                               config.min_operators, config.max_operators)
        spec = dataclasses.replace(spec, operators=ops)
        schema = build_schema(spec)
        files[r["domain"]] = schema
        # The final spec travels with the schema (an extension keyword validators ignore).
        stored = {**schema, "x-astforge-spec": spec_to_dict(spec)}
        rows.append({"domain": r["domain"], "split": r["split"], "schema_json": json.dumps(stored, ensure_ascii=False),
                     "fields": len(spec.fields), "operators": ",".join(ops)})

    def build(tmp: Path) -> None:
        pq.write_table(schemas.to_table(rows, schemas.DSL_SCHEMAS), tmp / "rows.parquet", compression="zstd")
        (tmp / "schemas").mkdir()
        for name, schema in files.items():
            (tmp / "schemas" / f"{name}.json").write_text(json.dumps(schema, indent=2, ensure_ascii=False))

    path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=len(rows),
                          upstream={"dsl_domain_specs": entry["data_version"]}, table="dsl_schemas").path
    first = next(iter(files.values()))
    return dg.MaterializeResult(metadata={
        "schemas": len(rows), "operators": {r["domain"]: r["operators"] for r in rows},
        "example_schema": dg.MetadataValue.json(first), "path": dg.MetadataValue.path(str(path / "schemas")),
    })


@dg.asset(group_name=GROUP, deps=[dsl_schemas], kinds={"python"}, op_tags=DATA_STEP,
          description="Natural-language requests per schema, in English and French, with their domain's role "
                      "(train | heldout_domain); dsl_dataset splits them by their label.")
def dsl_queries(context: dg.AssetExecutionContext, config: DslQueriesConfig, teacher: TeacherResource,
                artifacts: ArtifactStore, catalog: DuckDBCatalog) -> dg.MaterializeResult:
    specs, schemas_, splits, entry = specs_and_schemas(catalog)
    t = teacher.teacher()
    rows, seen = [], set()
    for domain, spec in specs.items():
        queries = teacher_call("dsl_queries", t.queries, spec, schemas_[domain], config.per_schema_queries,
                               seed=config.seed)
        for q in queries:
            rid = row_id(domain, q.lang, q.text)
            if rid in seen:
                continue
            seen.add(rid)
            rows.append({"id": rid, "domain": domain, "domain_split": splits[domain], "lang": q.lang, "text": q.text,
                         "teacher_ast_json": ast_to_text(q.ast) if q.ast is not None else None})
        context.log.info(f"dsl_queries: {domain}: {len(queries)} requests")
    if not rows:
        raise dg.Failure("dsl_queries: the teacher produced no requests")
    publish_rows(context, store=artifacts, catalog=catalog, rows=rows, schema=schemas.DSL_QUERIES,
                 skipped={"teacher_dropped": t.stats.dropped}, upstream={"dsl_schemas": entry["data_version"]})
    counts = {s: sum(r["domain_split"] == s for r in rows) for s in ("train", "heldout_domain")}
    return dg.MaterializeResult(metadata={
        "requests": len(rows), **{f"domain_{k}": v for k, v in counts.items()},
        "english": sum(r["lang"] == "en" for r in rows), "french": sum(r["lang"] == "fr" for r in rows),
        "sample": dg.MetadataValue.json(rows[:4]), **teacher_metadata(t),
    })


@dg.asset(group_name=GROUP, deps=[dsl_queries], kinds={"duckdb"}, op_tags=DATA_STEP,
          check_specs=[leak_check_spec("dsl_dataset", partitions_def=None)],
          description="(schema, request) → AST rows labelled by the teacher and validated with jsonschema, plus "
                      "schema-invalid negatives made by seeded mutations; split train/dev/test by the canonical "
                      "label AST (both languages of a request together), held-out domains all test.")
def dsl_dataset(context: dg.AssetExecutionContext, config: DslDatasetConfig, teacher: TeacherResource,
                artifacts: ArtifactStore, catalog: DuckDBCatalog) -> dg.MaterializeResult:
    from ml.dsl.recipe import label_requests

    specs, schemas_, _, sentry = specs_and_schemas(catalog)
    queries, qentry = read_upstream(catalog, "dsl_queries", P)
    t = teacher.teacher()
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        context.log.info(f"dsl_dataset: {done}/{total} requests labelled")

    rows, skipped = teacher_call("dsl_dataset", label_requests, queries, specs, schemas_, t,
                                 config.positives_per_schema, on_progress=progress, dev_fraction=config.dev_fraction,
                                 test_fraction=config.test_fraction)
    if not rows:
        raise dg.Failure(f"dsl_dataset: no request got a valid label from the teacher ({skipped})")
    positives = list(rows)
    negatives, skipped["mutation_still_valid"] = mutated_negatives(positives, specs, schemas_,
                                                                   config.negative_ratio, config.seed)
    rows += negatives
    publish_rows(context, store=artifacts, catalog=catalog, rows=rows, schema=schemas.DSL_DATASET, skipped=skipped,
                 upstream={"dsl_queries": qentry["data_version"], "dsl_schemas": sentry["data_version"]})
    kinds, kept = {}, {}
    for r in negatives:
        kinds[r["mutation"]] = kinds.get(r["mutation"], 0) + 1
    for r in positives:
        kept[r["domain"]] = kept.get(r["domain"], 0) + 1
    return dg.MaterializeResult(check_results=[leak_check("dsl_dataset", rows)], metadata={
        "positives": len(positives), "negatives": len(negatives), "positives_per_domain": kept,
        **{f"split_{k}": v for k, v in split_counts(r["split"] for r in positives).items()},
        "groups": len({r["group_key"] for r in positives}),
        "mutations": kinds, "seconds": round(time.monotonic() - started, 1),
        "sample": dg.MetadataValue.json([{k: r[k] for k in ("domain", "lang", "query", "ast_json")}
                                         for r in positives[:3]]),
        **skip_metadata(skipped), **teacher_metadata(t),
    })


@dg.asset(group_name=GROUP, deps=[dsl_dataset], kinds={"duckdb"}, op_tags=DATA_STEP,
          check_specs=[leak_check_spec("dsl_training_corpus", partitions_def=None)],
          description="Prompt (instruction + schema + request) and completion (compact JSON AST) rows, with the "
                      "dataset's group key and train/dev/test split.")
def dsl_training_corpus(context: dg.AssetExecutionContext, config: DslTrainingCorpusConfig,
                        artifacts: ArtifactStore, catalog: DuckDBCatalog) -> dg.MaterializeResult:
    from ml.dsl.recipe import training_rows

    _, schemas_, _, sentry = specs_and_schemas(catalog)
    data, dentry = read_upstream(catalog, "dsl_dataset", P)
    try:
        rows, capped = training_rows(data, schemas_, schema_view=config.schema_view,
                                     include_invalid=config.include_invalid, max_samples=config.max_samples,
                                     seed=config.seed)
    except ValueError as exc:  # a schema_view the schemas cannot be read with
        raise dg.Failure(f"dsl_training_corpus: {exc}") from exc
    publish_rows(context, store=artifacts, catalog=catalog, rows=rows, schema=schemas.DSL_TRAINING_CORPUS,
                 skipped={"over_max_samples": capped},
                 upstream={"dsl_dataset": dentry["data_version"], "dsl_schemas": sentry["data_version"]})
    counts = split_counts(r["split"] for r in rows)
    return dg.MaterializeResult(check_results=[leak_check("dsl_training_corpus", rows)], metadata={
        "rows": len(rows), "schema_view": config.schema_view, **{f"split_{k}": v for k, v in counts.items()},
        "heldout_domain_rows": sum(r["group"] == "heldout" for r in rows),
        "invalid_rows": sum(not r["valid"] for r in rows), "capped": capped,
        "prompt_chars_mean": round(sum(len(r["prompt"]) for r in rows) / max(1, len(rows)), 1),
        "example_prompt": dg.MetadataValue.md(f"```\n{rows[0]['prompt']}{rows[0]['completion']}\n```"),
    })
