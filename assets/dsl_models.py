"""`dsl` group, models: the student's base, LoRA SFT, teacher evaluation (M0, SFT, DPO), preference pairs from the
teacher's verdicts, DPO, and the report. Unpartitioned: the catalog keys its rows by ``all``."""

import random
import time
from pathlib import Path
from typing import Literal

import dagster as dg
import pyarrow.parquet as pq
from pydantic import model_validator

from assets.config_checks import BpeSplit, Dropout, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Seed
from assets.dsl_data import GROUP, P, dsl_training_corpus, specs_and_schemas, teacher_call, teacher_metadata
from assets.k8s_tags import DATA_STEP, MODEL_STEP, TRAINING_STEP
from assets.models import base_lineage, pretrained_base, resolve_base
from assets.profile_config import ProfileConfig, from_profile, or_profile
from assets.publish import checkpoint_dir, log_progress, png_markdown, publish_folder, publish_rows, read_upstream
from ml import schemas
from ml.stats import estimates_table, metadata_text, write_metrics_files
from resources import ArtifactStore, DuckDBCatalog
from resources.compute import ComputeResource
from resources.teacher import TeacherResource

# ---------------------------------------------------------------------------------------------------- configs


class DslBaseModelConfig(ProfileConfig):
    # smollm2-135m (packaged, offline) | tiny:gemma3_text | gguf:PATH | unsloth/gemma-3-270m-it (hub) | a local folder
    base_model: str | None = from_profile("dsl", "base_model")
    vocab_size: PositiveInt = 4000  # BPE size for tiny: bases (pretrained tokenizers keep theirs)
    # wordpunct | words | whitespace (ml/tokenizer.train_bpe)
    bpe_split: or_profile(BpeSplit) = from_profile("dsl", "bpe_split", "name")
    bpe_max_token_length: NonNegativeInt = 0  # longest BPE token in characters; 0 = no limit
    seed: Seed = 0


class DslSftConfig(ProfileConfig):
    # -1 would be Hugging Face's "train epochs" sentinel: refused
    max_steps: PositiveInt | None = from_profile("dsl", "sft_max_steps")
    # auto: the compute resource's; bf16 on a CPU with bfloat16 units is autocast (≈ 1.4x faster steps, measured)
    precision: Literal["profile", "auto", "bf16", "fp32"] = from_profile("dsl", "train_precision", "name")
    # evaluation batches are as large
    per_device_train_batch_size: PositiveInt | None = from_profile("dsl", "sft_batch_size")
    gradient_accumulation_steps: PositiveInt | None = from_profile("dsl", "sft_grad_accum")
    # on a CPU, rows per forward/backward pass: the same optimizer steps, faster and in less memory (PhaseConfig)
    cpu_micro_batch_size: NonNegativeInt = 2
    learning_rate: PositiveFloat | None = from_profile("dsl", "sft_learning_rate")
    weight_decay: NonNegativeFloat = 0.01
    warmup_steps: NonNegativeInt | None = from_profile("dsl", "sft_warmup_steps")
    max_length: PositiveInt | None = from_profile("dsl", "max_length")
    # validation rows from the dev split; 0 = none
    eval_max_samples: NonNegativeInt | None = from_profile("dsl", "eval_max_samples")
    eval_steps: PositiveInt | None = from_profile("dsl", "sft_eval_steps")
    logging_steps: PositiveInt = 10
    save_steps: PositiveInt | None = from_profile("dsl", "sft_save_steps")
    save_total_limit: PositiveInt = 3
    max_grad_norm: NonNegativeFloat = 1.0  # 0 = no clipping
    early_stopping_threshold: NonNegativeFloat = 0.002  # the least eval_loss improvement that counts
    early_stopping_patience: NonNegativeInt = 2  # 0 = off
    lora_r: PositiveInt | None = from_profile("dsl", "sft_lora_r")
    lora_alpha: PositiveInt | None = from_profile("dsl", "sft_lora_alpha")
    lora_dropout: Dropout = 0.05
    # LoRA on the top N layers only (0 = all): the backward pass stops below them
    lora_top_layers: NonNegativeInt | None = from_profile("dsl", "sft_lora_top_layers")
    probe_samples: NonNegativeInt | None = from_profile("dsl", "probe_samples")  # 0 = off
    seed: Seed = 0

    @model_validator(mode="after")
    def _save_on_evaluations(self):
        # Early stopping restores the best checkpoint, so Hugging Face wants a save at evaluations; it would say so
        # only after the data and the model are loaded.
        stops = self.early_stopping_patience and self.eval_max_samples
        if stops and self.save_steps % self.eval_steps:
            raise ValueError(f"save_steps ({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps}) "
                             "while early_stopping_patience > 0 (set it to 0 to turn early stopping off)")
        return self


class DslEvalConfig(ProfileConfig):
    # per group: seen-domain test requests, held-out-domain requests
    samples: PositiveInt | None = from_profile("dsl", "eval_samples")
    # rows decoded together: 24 cost 0.74x the time per row of 16 (SmolLM2-135M, fp32, 2 cores; KV cache ≈ 0.5 GB)
    batch_size: PositiveInt = 24
    seed: Seed = 0


class DslDpoPairsConfig(ProfileConfig):
    max_pairs: PositiveInt | None = from_profile("dsl", "max_pairs")
    only_rejected: bool = True  # False: also pairs where the teacher accepted an output that differs from its AST
    candidates: NonNegativeInt = 0  # training requests the student answers; 0 = 2 × max_pairs
    batch_size: PositiveInt = 16
    seed: Seed = 0


class DslDpoConfig(ProfileConfig):
    beta: PositiveFloat = 0.1
    # as in DslSftConfig
    precision: Literal["profile", "auto", "bf16", "fp32"] = from_profile("dsl", "train_precision", "name")
    max_steps: PositiveInt | None = from_profile("dsl", "dpo_max_steps")
    per_device_train_batch_size: PositiveInt | None = from_profile("dsl", "dpo_batch_size")
    gradient_accumulation_steps: PositiveInt | None = from_profile("dsl", "dpo_grad_accum")
    learning_rate: PositiveFloat | None = from_profile("dsl", "dpo_learning_rate")
    warmup_steps: NonNegativeInt | None = from_profile("dsl", "dpo_warmup_steps")
    logging_steps: PositiveInt = 5
    save_steps: PositiveInt = 100
    max_length: PositiveInt | None = from_profile("dsl", "max_length")  # longer pairs are dropped, never truncated
    # chosen answers' NLL added to the DPO loss (RPO); 0 = plain DPO
    sft_weight: NonNegativeFloat | None = from_profile("dsl", "dpo_sft_weight")
    seed: Seed = 0


# ---------------------------------------------------------------------------------------------------- models


@dg.asset(group_name=GROUP, deps=[dsl_training_corpus, pretrained_base], kinds={"huggingface", "pytorch"},
          description="The student's base: Gemma 3 (tiny: built from config with a BPE tokenizer trained on the "
                      "training prompts; otherwise a hub id or local folder).", op_tags=MODEL_STEP)
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
        "architecture": type(model).__name__, "device": plan.device, "path": dg.MetadataValue.path(str(path))})


@dg.asset(group_name=GROUP, deps=[dsl_base_model, dsl_training_corpus], pool="gpu", kinds={"pytorch", "huggingface"},
          description="LoRA SFT of the student on prompt → AST with completion-only loss and early stopping; "
                      "semantic_pass_rate is probed at each evaluation.", op_tags=TRAINING_STEP)
def dsl_sft_adapter(context: dg.AssetExecutionContext, config: DslSftConfig, teacher: TeacherResource,
                    artifacts: ArtifactStore, catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from ml.dsl.probe import make_probe_callback
    from ml.dsl.recipe import model_inputs, sft_phase_config, sft_rows
    from ml.models.loading import load_tokenizer
    from ml.training.lora_sft import train_lora_sft

    base = catalog.require_artifact("dsl_base_model", P)
    rows, entry = read_upstream(catalog, "dsl_training_corpus", P)
    specs, schemas_, _, _ = specs_and_schemas(catalog)
    tok = load_tokenizer(base["path"])
    train, val = sft_rows(rows, config.eval_max_samples, config.seed)  # the train split; dev for validation
    if not train:
        raise dg.Failure("dsl_sft_adapter: no training rows")
    tiny = str(tok.init_kwargs.get("astforge_base_model", "")).startswith("tiny:")
    cfg = sft_phase_config(config.model_dump(), tiny_base=tiny)
    plan = compute.plan(config.precision)
    t = teacher.teacher()
    probe_rows = val[: config.probe_samples]
    callbacks = [make_probe_callback(tok, probe_rows, schemas_, specs, t, at_step_zero=tiny,
                                     on_result=log_progress(context, "dsl SFT probe"))] if probe_rows else []
    work = checkpoint_dir(artifacts, "dsl_sft_adapter", P,
                     {"base": base["data_version"], "data": entry["data_version"], "cfg": config.model_dump()})
    context.log.info(f"dsl_sft_adapter: {len(train)} training rows, {len(val)} validation rows, "
                     f"probe {len(probe_rows)} requests, device {plan.device}, base {base['path']}")
    holder = {}

    def build(tmp: Path) -> None:
        from ml.dsl.report import sft_curve_plot

        holder["result"] = train_lora_sft(base["path"], tok, model_inputs(tok, train), model_inputs(tok, val), tmp,
                                          work, cfg, plan, on_log=log_progress(context, "dsl SFT"), callbacks=callbacks)
        (tmp / "training_curve.png").write_bytes(sft_curve_plot(holder["result"].curve))

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


def _load_model(catalog: DuckDBCatalog, model_asset: str, plan):
    """The model of ``model_asset``, ready to generate: ``dsl_base_model`` itself (M0), or an adapter merged into it."""
    from ml.models.loading import load_base_or_merged

    base = catalog.require_artifact("dsl_base_model", P)
    if model_asset == "dsl_base_model":
        return load_base_or_merged(base["path"], None, plan), base
    adapter = catalog.require_artifact(model_asset, P)
    try:
        return load_base_or_merged(base["path"], adapter["path"], plan), adapter
    except ValueError as exc:
        raise dg.Failure(f"{model_asset}: {exc}") from exc


def _evaluate(context, config: DslEvalConfig, teacher: TeacherResource, artifacts: ArtifactStore,
              catalog: DuckDBCatalog, compute: ComputeResource, model_asset: str) -> dg.MaterializeResult:
    """Evaluate the model of ``model_asset`` (an adapter, or ``dsl_base_model`` itself: M0)."""
    from ml.dsl.recipe import evaluate_both_modes, evaluation_rows
    from ml.models.loading import load_tokenizer

    asset = context.asset_key.to_user_string()
    plan = compute.plan()
    specs, schemas_, _, _ = specs_and_schemas(catalog)
    corpus, centry = read_upstream(catalog, "dsl_training_corpus", P)
    rows = evaluation_rows(corpus, config.samples, config.seed)
    if not rows:
        raise dg.Failure(f"{asset}: dsl_training_corpus has no test or held-out-domain rows")
    model, entry = _load_model(catalog, model_asset, plan)
    tok = load_tokenizer(entry["path"])
    t = teacher.teacher()
    # M0 is measured with schema-constrained decoding only: unconstrained, an untrained base writes prose to the
    # token cap on every request, which costs minutes on a CPU and says only that it was not trained.
    modes = (True,) if model_asset == "dsl_base_model" else (False, True)
    metrics, results = teacher_call(asset, evaluate_both_modes, model, tok, rows, schemas_, specs, t,
                                    batch_size=config.batch_size, label=asset, modes=modes, on_log=context.log.info)
    results = [{"asset_key": asset, **r} for r in results]
    catalog.write_metrics(asset_key=asset, partition=P, run_id=context.run_id, metrics=metrics)

    def build(tmp: Path) -> None:
        from ml.dsl.report import rates_plot

        pq.write_table(schemas.to_table(results, schemas.EVAL_RESULTS), tmp / "rows.parquet", compression="zstd")
        write_metrics_files(tmp, metrics)
        (tmp / "rates.png").write_bytes(rates_plot({asset: metrics}, title=asset))

    path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=len(results),
                          table="eval_results", table_asset_column=True,
                          upstream={model_asset: entry["data_version"],
                                    "dsl_training_corpus": centry["data_version"]}).path
    return dg.MaterializeResult(metadata={
        **{k: dg.MetadataValue.float(v.value) for k, v in metrics.items()},  # numbers: the console, UI plots
        "estimates": dg.MetadataValue.md(estimates_table(metrics)),
        "requests": len(rows), "rates": png_markdown((path / "rates.png").read_bytes(), "rates"),
        **teacher_metadata(t), "path": dg.MetadataValue.path(str(path)),
    })


@dg.asset(group_name=GROUP, pool="gpu", op_tags=TRAINING_STEP, deps=[dsl_base_model], kinds={"pytorch"},
          description="M0: the untrained base, measured like dsl_sft_eval with schema-constrained decoding (seen and "
                      "held-out domains, same metric names), so the report shows what training adds.")
def dsl_base_eval(context: dg.AssetExecutionContext, config: DslEvalConfig, teacher: TeacherResource,
                  artifacts: ArtifactStore, catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    return _evaluate(context, config, teacher, artifacts, catalog, compute, "dsl_base_model")


@dg.asset(group_name=GROUP, pool="gpu", op_tags=TRAINING_STEP, deps=[dsl_sft_adapter], kinds={"pytorch"},
          description="SFT student: parse, schema validity, exact match, teacher verdict; unconstrained and "
                      "schema-constrained; seen and held-out domains. Per-request rows in eval_results.")
def dsl_sft_eval(context: dg.AssetExecutionContext, config: DslEvalConfig, teacher: TeacherResource,
                 artifacts: ArtifactStore, catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    return _evaluate(context, config, teacher, artifacts, catalog, compute, "dsl_sft_adapter")


@dg.asset(group_name=GROUP, pool="gpu", deps=[dsl_sft_adapter, dsl_training_corpus], kinds={"duckdb"},
          description="Preference pairs: prompt → chosen (the teacher's AST) / rejected (the SFT student's output) "
                      "on training requests the teacher rejected.", op_tags=TRAINING_STEP)
def dsl_dpo_pairs(context: dg.AssetExecutionContext, config: DslDpoPairsConfig, teacher: TeacherResource,
                  artifacts: ArtifactStore, catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from ml.dsl.probe import preference_pairs
    from ml.models.loading import load_tokenizer

    specs, schemas_, _, _ = specs_and_schemas(catalog)
    corpus, centry = read_upstream(catalog, "dsl_training_corpus", P)
    train = [r for r in corpus if r["split"] == "train" and r["valid"]]
    candidates = random.Random(config.seed).sample(train, min(config.candidates or 2 * config.max_pairs, len(train)))
    model, adapter = _load_model(catalog, "dsl_sft_adapter", compute.plan())
    tok = load_tokenizer(adapter["path"])
    t = teacher.teacher()
    started = time.monotonic()
    pairs, stats = teacher_call("dsl_dpo_pairs", preference_pairs, model, tok, candidates, schemas_, specs, t,
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
        **teacher_metadata(t)})


@dg.asset(group_name=GROUP, deps=[dsl_dpo_pairs, dsl_sft_adapter], pool="gpu", op_tags=TRAINING_STEP,
          kinds={"pytorch", "huggingface"},
          description="TRL DPO from the SFT adapter; the frozen SFT student is the reference (KL anchor).")
def dsl_dpo_adapter(context: dg.AssetExecutionContext, config: DslDpoConfig, artifacts: ArtifactStore,
                    catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from ml.dsl.format import wrap_prompt
    from ml.dsl.recipe import dpo_settings
    from ml.models.loading import load_tokenizer
    from ml.training.dpo import train_dpo

    base = catalog.require_artifact("dsl_base_model", P)
    sft = catalog.require_artifact("dsl_sft_adapter", P)
    pairs, pentry = read_upstream(catalog, "dsl_dpo_pairs", P)
    tok = load_tokenizer(sft["path"])
    rows = [{"prompt": wrap_prompt(tok, p["prompt"]), "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    cfg = dpo_settings(config.model_dump())
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


@dg.asset(group_name=GROUP, pool="gpu", op_tags=TRAINING_STEP, deps=[dsl_dpo_adapter], kinds={"pytorch"},
          description="DPO student, measured exactly like dsl_sft_eval.")
def dsl_dpo_eval(context: dg.AssetExecutionContext, config: DslEvalConfig, teacher: TeacherResource,
                 artifacts: ArtifactStore, catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    return _evaluate(context, config, teacher, artifacts, catalog, compute, "dsl_dpo_adapter")


@dg.asset(group_name=GROUP, deps=[dsl_base_eval, dsl_sft_eval, dsl_dpo_eval], kinds={"markdown"},
          automation_condition=dg.AutomationCondition.eager(), op_tags=DATA_STEP,
          description="Markdown report: base (M0) vs SFT vs DPO table, training curves and rate plots, sample JSON.")
def dsl_report(context: dg.AssetExecutionContext, artifacts: ArtifactStore,
               catalog: DuckDBCatalog) -> dg.MaterializeResult:
    from ml.dsl.recipe import build_report

    entries = {a: catalog.require_artifact(a, P) for a in
               ("dsl_base_eval", "dsl_sft_eval", "dsl_dpo_eval", "dsl_sft_adapter", "dsl_dpo_adapter", "dsl_base_model",
                "dsl_dataset", "dsl_schemas", "dsl_domain_specs")}
    report = build_report({a.removeprefix("dsl_"): Path(e["path"]) for a, e in entries.items()},
                          {a.removeprefix("dsl_"): catalog.latest_training_curve(a, P)
                           for a in ("dsl_sft_adapter", "dsl_dpo_adapter")},
                          dataset_rows=entries["dsl_dataset"]["rows"])

    flat = report.flat_metrics()  # from the per-request rows; SFT - base, DPO - SFT as paired differences

    def build(tmp: Path) -> None:
        (tmp / "report.md").write_text(report.markdown)
        for name, png in report.images.items():
            (tmp / f"{name}.png").write_bytes(png)
        write_metrics_files(tmp, flat)

    path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=0,
                          upstream={a: e["data_version"] for a, e in entries.items()}).path
    catalog.write_metrics(asset_key="dsl_report", partition=P, run_id=context.run_id,
                          metrics={k: v for k, v in flat.items() if k.startswith(("sft_vs_base_", "dpo_vs_sft_"))})
    headline = [f"{o}_semantic_pass_rate_constrained" for o in ("base", "sft", "dpo", "sft_vs_base", "dpo_vs_sft")]
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.md(report.inline_markdown()),
        **metadata_text({k: flat[k] for k in headline if k in flat}),
        "path": dg.MetadataValue.path(str(path / "report.md")),
    })
