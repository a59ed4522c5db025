"""`dsl` group: schema-conditioned natural language → JSON AST. Teacher-made data, a LoRA SFT student, teacher
evaluation, DPO on teacher verdicts, and a report. Unpartitioned: the catalog keys its rows by ``all``."""

import json
import random
import time
from pathlib import Path
from typing import Literal

import dagster as dg
import pyarrow.parquet as pq
from pydantic import model_validator

from assets.config_checks import (
    BpeSplit,
    Dropout,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SchemaView,
    Seed,
    TrainFraction,
)
from assets.models import base_lineage, pretrained_base, resolve_base
from assets.publish import (
    UNPARTITIONED,
    checkpoint_dir,
    log_progress,
    png_markdown,
    publish_folder,
    publish_rows,
    read_upstream,
    skip_metadata,
)
from ml import schemas
from ml.dsl.dataset import mutated_negatives, request_split, row_id
from ml.dsl.domains import DOMAIN_NAMES, build_schema, sample_operators, schema_errors, spec_from_dict, spec_to_dict
from ml.dsl.format import ast_to_text
from resources import ArtifactStore, DuckDBCatalog
from resources.compute import ComputeResource
from resources.settings import active_dsl_profile
from resources.teacher import TeacherResource

_D = active_dsl_profile()
GROUP = "dsl"
P = UNPARTITIONED


# ---------------------------------------------------------------------------------------------------- configs


class DslDomainSpecsConfig(dg.Config):
    domains: list[str] = list(DOMAIN_NAMES)
    # Never trained on: the evaluation reports them apart, to tell schema reading from memorization.
    heldout_domains: list[str] = ["recipes", "weather"]
    examples_per_schema: int = _D.examples_per_schema
    seed: int = 11
    # A domain the teacher gives no usable spec for (after its retries) is dropped and counted; the step fails
    # only when fewer training domains than this remain.
    min_domains: int = 2


class DslSchemasConfig(dg.Config):
    min_operators: int = 4
    max_operators: int = 7
    seed: int = 11


class DslQueriesConfig(dg.Config):
    per_schema_queries: PositiveInt = _D.per_schema_queries
    test_fraction: TrainFraction = 0.1  # requests of the training domains kept for evaluation
    seed: Seed = 11


class DslDatasetConfig(dg.Config):
    positives_per_schema: PositiveInt = _D.positives_per_schema
    negative_ratio: Fraction = 0.6  # schema-invalid mutations per kept positive (1: every positive once)
    seed: Seed = 11


class DslTrainingCorpusConfig(dg.Config):
    include_invalid: bool = False  # mutated, schema-invalid targets (off: they would teach schema violations)
    max_samples: NonNegativeInt = 0  # cap on training rows; 0 = all
    schema_view: SchemaView = _D.schema_view  # json: the whole JSON Schema in the prompt | digest: a few lines off it
    seed: Seed = 0  # the max_samples draw


class DslBaseModelConfig(dg.Config):
    # smollm2-135m (packaged, offline) | tiny:gemma3_text | gguf:PATH | unsloth/gemma-3-270m-it (hub) | a local folder
    base_model: str = _D.base_model
    vocab_size: PositiveInt = 4000  # BPE size for tiny: bases (pretrained tokenizers keep theirs)
    bpe_split: BpeSplit = _D.bpe_split  # wordpunct | words | whitespace (ml/tokenizer.train_bpe)
    bpe_max_token_length: NonNegativeInt = 0  # longest BPE token in characters; 0 = no limit
    seed: Seed = 0


class DslSftConfig(dg.Config):
    max_steps: PositiveInt = _D.sft_max_steps  # -1 would be Hugging Face's "train epochs" sentinel: refused
    # auto: the compute resource's; bf16 on a CPU with bfloat16 units is autocast (≈ 1.4x faster steps, measured)
    precision: Literal["auto", "bf16", "fp32"] = _D.train_precision
    batch_size: PositiveInt = _D.sft_batch_size
    gradient_accumulation_steps: PositiveInt = _D.sft_grad_accum
    learning_rate: PositiveFloat = _D.sft_learning_rate
    weight_decay: NonNegativeFloat = 0.01
    warmup_steps: NonNegativeInt = _D.sft_warmup_steps
    max_seq_length: PositiveInt = _D.max_seq_length
    val_split: TrainFraction = 0.05
    eval_max_samples: NonNegativeInt = _D.eval_max_samples  # 0 = no validation rows (no early stopping, no probes)
    eval_steps: PositiveInt = _D.sft_eval_steps
    logging_steps: PositiveInt = 10
    save_steps: PositiveInt = _D.sft_save_steps
    save_total_limit: PositiveInt = 3
    max_grad_norm: NonNegativeFloat = 1.0  # 0 = no clipping
    early_stopping_min_delta: NonNegativeFloat = 0.002
    early_stopping_patience: NonNegativeInt = 2  # 0 = off
    lora_r: PositiveInt = _D.sft_lora_r
    lora_alpha: PositiveInt = _D.sft_lora_alpha
    lora_dropout: Dropout = 0.05
    # LoRA on the top N layers only (0 = all): the backward pass stops below them
    lora_top_layers: NonNegativeInt = _D.sft_lora_top_layers
    probe_samples: NonNegativeInt = _D.probe_samples  # 0 = off
    seed: Seed = 0

    @model_validator(mode="after")
    def _save_on_evaluations(self):
        # Early stopping restores the best checkpoint, so Hugging Face wants a save at evaluations; it would say so
        # only after the data and the model are loaded.
        stops = self.early_stopping_patience and self.val_split and self.eval_max_samples
        if stops and self.save_steps % self.eval_steps:
            raise ValueError(f"save_steps ({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps}) "
                             "while early_stopping_patience > 0 (set it to 0 to turn early stopping off)")
        return self


class DslEvalConfig(dg.Config):
    samples: PositiveInt = _D.eval_samples  # per group: seen-domain test requests, held-out-domain requests
    batch_size: PositiveInt = 16
    seed: Seed = 0


class DslDpoPairsConfig(dg.Config):
    max_pairs: PositiveInt = _D.max_pairs
    only_rejected: bool = True  # False: also pairs where the teacher accepted an output that differs from its AST
    candidates: NonNegativeInt = 0  # training requests the student answers; 0 = 2 × max_pairs
    batch_size: PositiveInt = 16
    seed: Seed = 0


class DslDpoConfig(dg.Config):
    beta: PositiveFloat = 0.1
    precision: Literal["auto", "bf16", "fp32"] = _D.train_precision  # as in DslSftConfig
    max_steps: PositiveInt = _D.dpo_max_steps
    batch_size: PositiveInt = _D.dpo_batch_size
    gradient_accumulation_steps: PositiveInt = _D.dpo_grad_accum
    learning_rate: PositiveFloat = _D.dpo_learning_rate
    warmup_steps: NonNegativeInt = _D.dpo_warmup_steps
    logging_steps: PositiveInt = 5
    save_steps: PositiveInt = 100
    max_seq_length: PositiveInt = _D.max_seq_length
    # > 0: chosen answers' NLL added to the DPO loss (RPO); 0 = plain DPO
    sft_weight: NonNegativeFloat = _D.dpo_sft_weight
    seed: Seed = 0


# ---------------------------------------------------------------------------------------------------- helpers


def _teacher_call(what: str, fn, *args, **kwargs):
    """Run a teacher call; a dead server fails the step with the teacher's message (earlier artifacts stay)."""
    from ml.dsl.teachers import TeacherUnavailable

    try:
        return fn(*args, **kwargs)
    except TeacherUnavailable as exc:
        raise dg.Failure(f"{what}: the teacher is unavailable. {exc}") from exc


def _specs_and_schemas(catalog: DuckDBCatalog) -> tuple[dict, dict, dict, dict]:
    """Per domain: the final spec, its schema, and its split (train | heldout_domain); and the catalog entry."""
    rows, entry = read_upstream(catalog, "dsl_schemas", P)
    specs, schemas_, splits = {}, {}, {}
    for r in rows:
        schema = json.loads(r["schema_json"])
        specs[r["domain"]] = spec_from_dict(schema["x-astforge-spec"])
        schemas_[r["domain"]] = {k: v for k, v in schema.items() if k != "x-astforge-spec"}
        splits[r["domain"]] = r["split"]
    return specs, schemas_, splits, entry


def _teacher_metadata(teacher) -> dict:
    return {"teacher": teacher.describe().get("backend", teacher.name),
            **{f"teacher_{k}": v for k, v in teacher.stats.as_dict().items()}}


# ---------------------------------------------------------------------------------------------------- data


@dg.asset(group_name=GROUP, kinds={"python"},
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
            spec, examples = _teacher_call("dsl_domain_specs", t.domain_spec, name, seed=config.seed,
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
        **_teacher_metadata(t),
    })


@dg.asset(group_name=GROUP, deps=[dsl_domain_specs], kinds={"json"},
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


@dg.asset(group_name=GROUP, deps=[dsl_schemas], kinds={"python"},
          description="Natural-language requests per schema, in English and French, split train / test / held-out "
                      "domain.")
def dsl_queries(context: dg.AssetExecutionContext, config: DslQueriesConfig, teacher: TeacherResource,
                artifacts: ArtifactStore, catalog: DuckDBCatalog) -> dg.MaterializeResult:
    specs, schemas_, splits, entry = _specs_and_schemas(catalog)
    t = teacher.teacher()
    rows, seen = [], set()
    for domain, spec in specs.items():
        queries = _teacher_call("dsl_queries", t.queries, spec, schemas_[domain], config.per_schema_queries,
                                seed=config.seed)
        for q in queries:
            # Both languages of one request share a split (the AST, when known, names the request).
            key = ast_to_text(q.ast) if q.ast is not None else q.text
            split = request_split(splits[domain], domain, key, config.test_fraction, config.seed)
            rid = row_id(domain, q.lang, q.text)
            if rid in seen:
                continue
            seen.add(rid)
            rows.append({"id": rid, "domain": domain, "split": split, "lang": q.lang, "text": q.text,
                         "teacher_ast_json": ast_to_text(q.ast) if q.ast is not None else None})
        context.log.info(f"dsl_queries: {domain}: {len(queries)} requests")
    if not rows:
        raise dg.Failure("dsl_queries: the teacher produced no requests")
    publish_rows(context, store=artifacts, catalog=catalog, rows=rows, schema=schemas.DSL_QUERIES,
                 skipped={"teacher_dropped": t.stats.dropped}, upstream={"dsl_schemas": entry["data_version"]})
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "test", "heldout_domain")}
    return dg.MaterializeResult(metadata={
        "requests": len(rows), **{f"split_{k}": v for k, v in counts.items()},
        "english": sum(r["lang"] == "en" for r in rows), "french": sum(r["lang"] == "fr" for r in rows),
        "sample": dg.MetadataValue.json(rows[:4]), **_teacher_metadata(t),
    })


@dg.asset(group_name=GROUP, deps=[dsl_queries], kinds={"duckdb"},
          description="(schema, request) → AST rows labelled by the teacher and validated with jsonschema, plus "
                      "schema-invalid negatives made by seeded mutations.")
def dsl_dataset(context: dg.AssetExecutionContext, config: DslDatasetConfig, teacher: TeacherResource,
                artifacts: ArtifactStore, catalog: DuckDBCatalog) -> dg.MaterializeResult:
    from ml.dsl.teachers import TeacherQuery

    specs, schemas_, _, sentry = _specs_and_schemas(catalog)
    queries, qentry = read_upstream(catalog, "dsl_queries", P)
    t = teacher.teacher()
    skipped = {"teacher_no_label": 0, "schema_invalid_label": 0, "over_positive_cap": 0}
    rows, kept = [], {}
    started = time.monotonic()
    for i, q in enumerate(queries):
        domain = q["domain"]
        if kept.get(domain, 0) >= config.positives_per_schema:
            skipped["over_positive_cap"] += 1
            continue
        known = json.loads(q["teacher_ast_json"]) if q["teacher_ast_json"] else None
        tq = TeacherQuery(domain=domain, lang=q["lang"], text=q["text"], ast=known)
        ast = _teacher_call("dsl_dataset", t.label, specs[domain], schemas_[domain], tq)
        if ast is None:
            skipped["teacher_no_label"] += 1
            continue
        if schema_errors(ast, schemas_[domain]):
            skipped["schema_invalid_label"] += 1
            continue
        kept[domain] = kept.get(domain, 0) + 1
        rows.append({"id": q["id"], "domain": domain, "split": q["split"], "lang": q["lang"], "query": q["text"],
                     "ast_json": ast_to_text(ast), "valid": True, "mutation": None, "errors": None})
        if (i + 1) % 500 == 0:
            context.log.info(f"dsl_dataset: {i + 1}/{len(queries)} requests labelled")
    if not rows:
        raise dg.Failure(f"dsl_dataset: no request got a valid label from the teacher ({skipped})")
    positives = list(rows)
    negatives, skipped["mutation_still_valid"] = mutated_negatives(positives, specs, schemas_,
                                                                   config.negative_ratio, config.seed)
    rows += negatives
    publish_rows(context, store=artifacts, catalog=catalog, rows=rows, schema=schemas.DSL_DATASET, skipped=skipped,
                 upstream={"dsl_queries": qentry["data_version"], "dsl_schemas": sentry["data_version"]})
    kinds = {}
    for r in negatives:
        kinds[r["mutation"]] = kinds.get(r["mutation"], 0) + 1
    return dg.MaterializeResult(metadata={
        "positives": len(positives), "negatives": len(negatives), "positives_per_domain": kept,
        "mutations": kinds, "seconds": round(time.monotonic() - started, 1),
        "sample": dg.MetadataValue.json([{k: r[k] for k in ("domain", "lang", "query", "ast_json")}
                                         for r in positives[:3]]),
        **skip_metadata(skipped), **_teacher_metadata(t),
    })


@dg.asset(group_name=GROUP, deps=[dsl_dataset], kinds={"duckdb"},
          description="Prompt (instruction + schema + request) and completion (compact JSON AST) rows.")
def dsl_training_corpus(context: dg.AssetExecutionContext, config: DslTrainingCorpusConfig,
                        artifacts: ArtifactStore, catalog: DuckDBCatalog) -> dg.MaterializeResult:
    from ml.dsl.recipe import training_rows

    _, schemas_, _, sentry = _specs_and_schemas(catalog)
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
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "test", "heldout_domain")}
    return dg.MaterializeResult(metadata={
        "rows": len(rows), "schema_view": config.schema_view, **{f"split_{k}": v for k, v in counts.items()},
        "invalid_rows": sum(not r["valid"] for r in rows), "capped": capped,
        "prompt_chars_mean": round(sum(len(r["prompt"]) for r in rows) / max(1, len(rows)), 1),
        "example_prompt": dg.MetadataValue.md(f"```\n{rows[0]['prompt']}{rows[0]['completion']}\n```"),
    })


# ---------------------------------------------------------------------------------------------------- models


@dg.asset(group_name=GROUP, deps=[dsl_training_corpus, pretrained_base], kinds={"huggingface", "pytorch"},
          description="The student's base: Gemma 3 (tiny: built from config with a BPE tokenizer trained on the "
                      "training prompts; otherwise a hub id or local folder).")
def dsl_base_model(context: dg.AssetExecutionContext, config: DslBaseModelConfig, artifacts: ArtifactStore,
                   catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from ml.training.ast_tokenizer import build_ast_tokenizer
    from ml.training.base_model import build_base_model, save_base_model

    rows, entry = read_upstream(catalog, "dsl_training_corpus", P)
    # Only training rows: held-out domains must not shape the tokenizer either.
    texts = [r["prompt"] + r["completion"] for r in rows if r["split"] == "train"]
    if not texts:
        raise dg.Failure("dsl_training_corpus has no training rows")
    base = resolve_base(catalog, config.base_model, "dsl_base_model.base_model", context)
    tok = build_ast_tokenizer(base.loadable, texts, [], config.vocab_size, split=config.bpe_split,
                              max_token_length=config.bpe_max_token_length or None)
    tok.init_kwargs["astforge_base_model"] = config.base_model
    plan = compute.plan()
    model = build_base_model(base.loadable, tok, seed=config.seed, plan=plan)
    n_params = sum(p.numel() for p in model.parameters())
    path = publish_folder(context, store=artifacts, catalog=catalog, rows=0,
                          build=lambda tmp: save_base_model(model, tok, tmp),
                          upstream={"dsl_training_corpus": entry["data_version"], **base_lineage(catalog, base)}).path
    return dg.MaterializeResult(metadata={
        "base_model": config.base_model, "parameters": n_params, "vocab_size": len(tok),
        "architecture": type(model).__name__, "device": plan.device, "path": dg.MetadataValue.path(str(path)),
    })


@dg.asset(group_name=GROUP, deps=[dsl_base_model, dsl_training_corpus], pool="gpu", kinds={"pytorch", "huggingface"},
          description="LoRA SFT of the student on prompt → AST with completion-only loss and early stopping; "
                      "semantic_pass_rate is probed at each evaluation.")
def dsl_sft_adapter(context: dg.AssetExecutionContext, config: DslSftConfig, teacher: TeacherResource,
                    artifacts: ArtifactStore, catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from transformers import AutoTokenizer

    from ml.dsl.probe import make_probe_callback
    from ml.dsl.recipe import model_inputs, split_validation
    from ml.training.sft import PhaseConfig, train_lora_sft

    base = catalog.require_artifact("dsl_base_model", P)
    rows, entry = read_upstream(catalog, "dsl_training_corpus", P)
    specs, schemas_, _, _ = _specs_and_schemas(catalog)
    tok = AutoTokenizer.from_pretrained(base["path"])
    train, val = split_validation([r for r in rows if r["split"] == "train"], config.val_split,
                                  config.eval_max_samples, config.seed)
    if not train:
        raise dg.Failure("dsl_sft_adapter: no training rows")
    tiny = str(tok.init_kwargs.get("astforge_base_model", "")).startswith("tiny:")
    cfg = PhaseConfig(
        max_steps=config.max_steps, learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay, max_length=config.max_seq_length, logging_steps=config.logging_steps,
        eval_steps=config.eval_steps, save_steps=config.save_steps, save_total_limit=config.save_total_limit,
        max_grad_norm=config.max_grad_norm, early_stopping_patience=config.early_stopping_patience,
        early_stopping_threshold=config.early_stopping_min_delta, lora_r=config.lora_r,
        lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, lora_top_layers=config.lora_top_layers,
        seed=config.seed, separator="", add_eos=False, lr_scheduler_type="linear",
        # a random-init tiny: base also trains its embedding rows; a pretrained base keeps them
        trainable_embeddings="all" if tiny else "none",
    )
    plan = compute.plan(config.precision)
    t = teacher.teacher()
    probe_rows = val[: config.probe_samples]
    probe_log = log_progress(context, "dsl SFT probe")
    callbacks = [make_probe_callback(tok, probe_rows, schemas_, specs, t, on_result=probe_log, at_step_zero=tiny)
                 ] if probe_rows else []
    work = checkpoint_dir(artifacts, "dsl_sft_adapter", P,
                     {"base": base["data_version"], "data": entry["data_version"], "cfg": config.model_dump()})
    context.log.info(f"dsl_sft_adapter: {len(train)} training rows, {len(val)} validation rows, "
                     f"probe {len(probe_rows)} requests, device {plan.device}, base {base['path']}")
    holder = {}

    def build(tmp: Path) -> None:
        from ml.dsl.report import sft_curve_plot

        result = train_lora_sft(base["path"], tok, model_inputs(tok, train), model_inputs(tok, val), tmp, work, cfg,
                                plan, on_log=log_progress(context, "dsl SFT"), callbacks=callbacks)
        holder["result"] = result
        (tmp / "training_curve.png").write_bytes(sft_curve_plot(result.curve))

    try:
        path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=len(train),
                              upstream={"dsl_base_model": base["data_version"],
                                        "dsl_training_corpus": entry["data_version"]}).path
    except ValueError as exc:  # no supervised tokens, every row too long, an adapter that does not fit
        raise dg.Failure(f"dsl_sft_adapter: {exc}") from exc
    result = holder["result"]
    catalog.write_training_curve(asset_key="dsl_sft_adapter", partition=P, run_id=context.run_id, points=result.curve)
    probes = [(s, v) for s, m, v in result.curve if m == "probe_semantic_pass_rate_constrained"]
    return dg.MaterializeResult(metadata={
        "steps": result.steps, "train_loss": round(result.train_loss, 4),
        "eval_loss_initial": round(result.eval_loss_initial, 4), "eval_loss_final": round(result.eval_loss_final, 4),
        "dropped_truncated": result.dropped_truncated, "tokens_per_s": round(result.tokens_per_s, 1),
        "step_seconds": round(result.step_seconds, 2), "precision": plan.dtype,
        "train_rows": len(train), "val_rows": len(val), "device": plan.device, "backend": plan.backend,
        "probe_semantic_pass_rate_constrained": probes[-1][1] if probes else float("nan"),
        "resumed_from": result.resumed_from or "none",
        "training_curve": png_markdown((path / "training_curve.png").read_bytes(), "SFT curve"),
        "path": dg.MetadataValue.path(str(path)),
    })


def _load_student(catalog: DuckDBCatalog, adapter_asset: str, plan):
    from ml.training.sft import load_adapter

    base = catalog.require_artifact("dsl_base_model", P)
    adapter = catalog.require_artifact(adapter_asset, P)
    try:
        model = load_adapter(base["path"], adapter["path"], plan)
    except ValueError as exc:
        raise dg.Failure(f"{adapter_asset}: {exc}") from exc
    return model.merge_and_unload(), adapter


def _load_base(catalog: DuckDBCatalog, plan):
    from ml.training.sft import load_base

    base = catalog.require_artifact("dsl_base_model", P)
    return load_base(base["path"], plan), base


def _evaluate(context, config: DslEvalConfig, teacher: TeacherResource, artifacts: ArtifactStore,
              catalog: DuckDBCatalog, compute: ComputeResource, model_asset: str) -> dg.MaterializeResult:
    """Evaluate the model of ``model_asset`` (an adapter, or ``dsl_base_model`` itself: M0)."""
    from transformers import AutoTokenizer

    from ml.dsl.recipe import evaluate_both_modes, evaluation_rows

    asset = context.asset_key.to_user_string()
    plan = compute.plan()
    specs, schemas_, _, _ = _specs_and_schemas(catalog)
    corpus, centry = read_upstream(catalog, "dsl_training_corpus", P)
    rows = evaluation_rows(corpus, config.samples, config.seed)
    if not rows:
        raise dg.Failure(f"{asset}: dsl_training_corpus has no test or held-out-domain rows")
    if model_asset == "dsl_base_model":
        model, entry = _load_base(catalog, plan)
    else:
        model, entry = _load_student(catalog, model_asset, plan)
    tok = AutoTokenizer.from_pretrained(entry["path"])
    t = teacher.teacher()
    # M0 is measured with schema-constrained decoding only: unconstrained, an untrained base writes prose to the
    # token cap on every request, which costs minutes on a CPU and says only that it was not trained.
    modes = (True,) if model_asset == "dsl_base_model" else (False, True)
    metrics, results = _teacher_call(asset, evaluate_both_modes, model, tok, rows, schemas_, specs, t,
                                     batch_size=config.batch_size, label=asset, modes=modes,
                                     on_log=context.log.info)
    results = [{"asset_key": asset, **r} for r in results]
    catalog.write_metrics(asset_key=asset, partition=P, run_id=context.run_id, metrics=metrics)

    def build(tmp: Path) -> None:
        from ml.dsl.report import rates_plot

        pq.write_table(schemas.to_table(results, schemas.EVAL_RESULTS), tmp / "rows.parquet", compression="zstd")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "rates.png").write_bytes(rates_plot({asset: metrics}, title=asset))

    path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=len(results),
                          table="eval_results", table_asset_column=True,
                          upstream={model_asset: entry["data_version"],
                                    "dsl_training_corpus": centry["data_version"]}).path
    return dg.MaterializeResult(metadata={
        **{k: dg.MetadataValue.float(v) for k, v in metrics.items()},
        "requests": len(rows), "rates": png_markdown((path / "rates.png").read_bytes(), "rates"),
        **_teacher_metadata(t), "path": dg.MetadataValue.path(str(path)),
    })


@dg.asset(group_name=GROUP, pool="gpu", deps=[dsl_base_model], kinds={"pytorch"},
          description="M0: the untrained base, measured like dsl_sft_eval with schema-constrained decoding (seen and "
                      "held-out domains, same metric names), so the report shows what training adds.")
def dsl_base_eval(context: dg.AssetExecutionContext, config: DslEvalConfig, teacher: TeacherResource,
                  artifacts: ArtifactStore, catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    return _evaluate(context, config, teacher, artifacts, catalog, compute, "dsl_base_model")


@dg.asset(group_name=GROUP, pool="gpu", deps=[dsl_sft_adapter], kinds={"pytorch"},
          description="SFT student: parse, schema validity, exact match, teacher verdict; unconstrained and "
                      "schema-constrained; seen and held-out domains. Per-request rows in eval_results.")
def dsl_sft_eval(context: dg.AssetExecutionContext, config: DslEvalConfig, teacher: TeacherResource,
                 artifacts: ArtifactStore, catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    return _evaluate(context, config, teacher, artifacts, catalog, compute, "dsl_sft_adapter")


@dg.asset(group_name=GROUP, pool="gpu", deps=[dsl_sft_adapter, dsl_training_corpus], kinds={"duckdb"},
          description="Preference pairs: prompt → chosen (the teacher's AST) / rejected (the SFT student's output) "
                      "on training requests the teacher rejected.")
def dsl_dpo_pairs(context: dg.AssetExecutionContext, config: DslDpoPairsConfig, teacher: TeacherResource,
                  artifacts: ArtifactStore, catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from transformers import AutoTokenizer

    from ml.dsl.probe import preference_pairs

    specs, schemas_, _, _ = _specs_and_schemas(catalog)
    corpus, centry = read_upstream(catalog, "dsl_training_corpus", P)
    train = [r for r in corpus if r["split"] == "train" and r["valid"]]
    n = config.candidates or 2 * config.max_pairs
    candidates = random.Random(config.seed).sample(train, min(n, len(train)))
    model, adapter = _load_student(catalog, "dsl_sft_adapter", compute.plan())
    tok = AutoTokenizer.from_pretrained(adapter["path"])
    t = teacher.teacher()
    started = time.monotonic()
    pairs, stats = _teacher_call("dsl_dpo_pairs", preference_pairs, model, tok, candidates, schemas_, specs, t,
                                 only_rejected=config.only_rejected, batch_size=config.batch_size)
    pairs = pairs[: config.max_pairs]
    context.log.info(f"dsl_dpo_pairs: {len(pairs)} pairs from {len(candidates)} requests "
                     f"in {time.monotonic() - started:.0f}s ({stats})")
    if not pairs:
        raise dg.Failure(f"dsl_dpo_pairs: the teacher accepted every one of {len(candidates)} student outputs, so "
                         "there is nothing to prefer; raise `candidates` or set only_rejected=False")
    publish_rows(context, store=artifacts, catalog=catalog, rows=pairs, schema=schemas.DSL_DPO_PAIRS, skipped={},
                 upstream={"dsl_sft_adapter": adapter["data_version"], "dsl_training_corpus": centry["data_version"]})
    return dg.MaterializeResult(metadata={
        "pairs": len(pairs), "candidates": len(candidates), **{k: v for k, v in stats.items()},
        "sample": dg.MetadataValue.json([{k: p[k] for k in ("chosen", "rejected", "reason")} for p in pairs[:3]]),
        **_teacher_metadata(t),
    })


@dg.asset(group_name=GROUP, deps=[dsl_dpo_pairs, dsl_sft_adapter], pool="gpu", kinds={"pytorch", "huggingface"},
          description="TRL DPO from the SFT adapter; the frozen SFT student is the reference (KL anchor).")
def dsl_dpo_adapter(context: dg.AssetExecutionContext, config: DslDpoConfig, artifacts: ArtifactStore,
                    catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from transformers import AutoTokenizer

    from ml.dsl.format import wrap_prompt
    from ml.training.dpo import DPOSettings, train_dpo

    base = catalog.require_artifact("dsl_base_model", P)
    sft = catalog.require_artifact("dsl_sft_adapter", P)
    pairs, pentry = read_upstream(catalog, "dsl_dpo_pairs", P)
    tok = AutoTokenizer.from_pretrained(sft["path"])
    rows = [{"prompt": wrap_prompt(tok, p["prompt"]), "chosen": p["chosen"], "rejected": p["rejected"]}
            for p in pairs]
    cfg = DPOSettings(beta=config.beta, max_steps=config.max_steps, learning_rate=config.learning_rate,
                      per_device_train_batch_size=config.batch_size,
                      gradient_accumulation_steps=config.gradient_accumulation_steps,
                      warmup_steps=config.warmup_steps, logging_steps=config.logging_steps,
                      save_steps=config.save_steps, max_length=config.max_seq_length,
                      sft_weight=config.sft_weight, seed=config.seed)
    plan = compute.plan(config.precision)
    work = checkpoint_dir(artifacts, "dsl_dpo_adapter", P,
                     {"sft": sft["data_version"], "pairs": pentry["data_version"], "cfg": config.model_dump()})
    holder = {}

    def build(tmp: Path) -> None:
        from ml.dsl.report import dpo_curve_plot

        holder["result"] = train_dpo(base["path"], sft["path"], tok, rows, tmp, work, cfg, plan,
                                     on_log=log_progress(context, "dsl DPO"))
        (tmp / "training_curve.png").write_bytes(dpo_curve_plot(holder["result"].curve))

    try:
        path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=len(rows),
                              upstream={"dsl_sft_adapter": sft["data_version"],
                                        "dsl_dpo_pairs": pentry["data_version"]}).path
    except ValueError as exc:
        raise dg.Failure(f"dsl_dpo_adapter: {exc}") from exc
    result = holder["result"]
    catalog.write_training_curve(asset_key="dsl_dpo_adapter", partition=P, run_id=context.run_id, points=result.curve)
    last = {m: v for _, m, v in sorted(result.curve)}
    return dg.MaterializeResult(metadata={
        "steps": result.steps, "train_loss": round(result.train_loss, 4), "pairs": result.pairs,
        "dropped_too_long": result.dropped_too_long, "seconds": round(result.seconds, 1),
        "reward_margin_last": round(last.get("rewards/margins", float("nan")), 4),
        "reward_accuracy_last": round(last.get("rewards/accuracies", float("nan")), 4),
        "device": plan.device, "resumed_from": result.resumed_from or "none",
        "training_curve": png_markdown((path / "training_curve.png").read_bytes(), "DPO curve"),
        "path": dg.MetadataValue.path(str(path)),
    })


@dg.asset(group_name=GROUP, pool="gpu", deps=[dsl_dpo_adapter], kinds={"pytorch"},
          description="DPO student, measured exactly like dsl_sft_eval.")
def dsl_dpo_eval(context: dg.AssetExecutionContext, config: DslEvalConfig, teacher: TeacherResource,
                 artifacts: ArtifactStore, catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    return _evaluate(context, config, teacher, artifacts, catalog, compute, "dsl_dpo_adapter")


@dg.asset(group_name=GROUP, deps=[dsl_base_eval, dsl_sft_eval, dsl_dpo_eval], kinds={"markdown"},
          automation_condition=dg.AutomationCondition.eager(),
          description="Markdown report: base (M0) vs SFT vs DPO table, training curves and rate plots, sample JSON.")
def dsl_report(context: dg.AssetExecutionContext, artifacts: ArtifactStore,
               catalog: DuckDBCatalog) -> dg.MaterializeResult:
    from ml.dsl.report import dpo_curve_plot, dsl_report_markdown, rates_plot, sft_curve_plot

    entries = {a: catalog.require_artifact(a, P) for a in
               ("dsl_base_eval", "dsl_sft_eval", "dsl_dpo_eval", "dsl_sft_adapter", "dsl_dpo_adapter", "dsl_base_model",
                "dsl_dataset", "dsl_schemas", "dsl_domain_specs")}
    metrics = {a: json.loads((Path(entries[a]["path"]) / "metrics.json").read_text())
               for a in ("dsl_base_eval", "dsl_sft_eval", "dsl_dpo_eval")}
    rows = {a: pq.read_table(Path(entries[a]["path"]) / "rows.parquet").to_pylist()
            for a in ("dsl_sft_eval", "dsl_dpo_eval")}
    curves = {a: [(r["step"], r["metric"], r["value"]) for r in catalog.query(
        "SELECT step, metric, value FROM training_metrics WHERE asset_key = ? AND partition = ? AND run_id = ("
        "SELECT run_id FROM artifacts WHERE asset_key = ? AND partition = ? ORDER BY created_at DESC LIMIT 1)",
        [a, P, a, P])] for a in ("dsl_sft_adapter", "dsl_dpo_adapter")}
    sft_result = json.loads((Path(entries["dsl_sft_adapter"]["path"]) / "train_result.json").read_text())
    dpo_result = json.loads((Path(entries["dsl_dpo_adapter"]["path"]) / "train_result.json").read_text())
    specs = pq.read_table(Path(entries["dsl_domain_specs"]["path"]) / "rows.parquet").to_pylist()
    images = {
        "rates": rates_plot({"base": metrics["dsl_base_eval"], "SFT": metrics["dsl_sft_eval"],
                             "DPO": metrics["dsl_dpo_eval"]}),
        "sft_curve": sft_curve_plot(curves["dsl_sft_adapter"]),
        "dpo_curve": dpo_curve_plot(curves["dsl_dpo_adapter"]),
    }
    summary = {
        "teacher": specs[0]["teacher"] if specs else "?",
        "base_model": _base_model_id(Path(entries["dsl_base_model"]["path"])),
        "train_domains": ", ".join(s["domain"] for s in specs if s["split"] == "train"),
        "heldout_domains": ", ".join(s["domain"] for s in specs if s["split"] != "train") or "none",
        "dataset_rows": entries["dsl_dataset"]["rows"],
        "sft_steps": sft_result["steps"], "dpo_steps": dpo_result["steps"], "dpo_pairs": dpo_result["pairs"],
    }
    report = dsl_report_markdown(sft_metrics=metrics["dsl_sft_eval"], dpo_metrics=metrics["dsl_dpo_eval"],
                                 sft_rows=rows["dsl_sft_eval"], dpo_rows=rows["dsl_dpo_eval"],
                                 images={k: f"{k}.png" for k in images}, summary=summary,
                                 base_metrics=metrics["dsl_base_eval"])

    def build(tmp: Path) -> None:
        (tmp / "report.md").write_text(report)
        for name, png in images.items():
            (tmp / f"{name}.png").write_bytes(png)
        (tmp / "metrics.json").write_text(json.dumps({"base": metrics["dsl_base_eval"], "sft": metrics["dsl_sft_eval"],
                                                      "dpo": metrics["dsl_dpo_eval"]}, indent=2))

    path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=0,
                          upstream={a: e["data_version"] for a, e in entries.items()}).path
    inline = report
    for name, png in images.items():
        inline = inline.replace(f"({name}.png)", f"(data:image/png;base64,{_b64(png)})")
    base_c = metrics["dsl_base_eval"].get("semantic_pass_rate_constrained", float("nan"))
    sft_c = metrics["dsl_sft_eval"].get("semantic_pass_rate_constrained", float("nan"))
    dpo_c = metrics["dsl_dpo_eval"].get("semantic_pass_rate_constrained", float("nan"))
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.md(inline), "base_semantic_pass_rate_constrained": base_c,
        "sft_semantic_pass_rate_constrained": sft_c,
        "dpo_semantic_pass_rate_constrained": dpo_c, "path": dg.MetadataValue.path(str(path / "report.md")),
    })


def _base_model_id(folder: Path) -> str:
    """The base a student was built from (recorded by dsl_base_model in its tokenizer config), else the folder."""
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()).get("astforge_base_model") or str(folder)
    return str(folder)


def _b64(png: bytes) -> str:
    import base64

    return base64.b64encode(png).decode()


DSL_ASSETS = [dsl_domain_specs, dsl_schemas, dsl_queries, dsl_dataset, dsl_training_corpus, dsl_base_model,
              dsl_base_eval, dsl_sft_adapter, dsl_sft_eval, dsl_dpo_pairs, dsl_dpo_adapter, dsl_dpo_eval, dsl_report]
