"""`ast_first` group, model half: tokenizer, base model, Phase 1 and Phase 2 adapters, evaluation."""

import shutil
import time
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import model_validator

from assets.ast_first import ast_corpus, nl_ast_pairs
from assets.config_checks import (
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
    TrainableEmbeddings,
)
from assets.k8s_tags import MODEL_STEP, TRAINING_STEP
from assets.models import base_lineage, pretrained_base, resolve_base
from assets.partitions import language_slices
from assets.pipes_training import LAUNCH_SETTINGS, Launcher, checkpoint_world, train_phase1_through_pipes
from assets.profile_config import ProfileConfig, from_profile
from assets.publish import checkpoint_dir, log_progress, png_markdown, publish_folder, read_upstream, report_markdown
from ml.languages import get_language
from ml.stats import metadata_text, write_metrics_files
from resources import ArtifactStore, DuckDBCatalog
from resources.compute import ComputeResource
from resources.settings import profile_value


class AstTokenizerConfig(ProfileConfig):
    # tiny:qwen2 | smollm2-135m (packaged, offline) | gguf:PATH | a hub id (Qwen/Qwen2.5-0.5B) | a local folder
    base_model: str | None = from_profile("ast", "base_model")
    vocab_size: PositiveInt = 4000  # BPE size for tiny: bases (pretrained tokenizers keep theirs)


class AstBaseModelConfig(dg.Config):
    seed: Seed = 0
    # where a pretrained base's new AST rows start: "names" (each at the mean of the base tokens spelling its name:
    # <FunctionDef> near "Function" + "Def") or "mean" (every row at one vector, the vocabulary's mean). On
    # SmolLM2-135M, before any training, held-out python functions cost 4.36 bits per source character as AST text
    # with "names" and 5.93 with "mean" (what "mean" reached after 10 Phase 1 steps). tiny: bases are random-init.
    new_token_init: Literal["mean", "names"] = "names"


class PhaseTrainingConfig(ProfileConfig):
    # -1 would be Hugging Face's "train epochs" sentinel: refused
    max_steps: PositiveInt | None = from_profile("ast", "phase1_steps")
    learning_rate: PositiveFloat | None = from_profile("ast", "learning_rate")
    batch_size: PositiveInt | None = from_profile("ast", "batch_size")
    gradient_accumulation_steps: PositiveInt = 1
    max_length: PositiveInt | None = from_profile("ast", "max_length")
    # A tiny random-init base has little to keep: a wide adapter lets it learn; the full
    # profile's pretrained base keeps r=16-class adapters (set it in the launchpad).
    lora_r: PositiveInt = 64
    lora_alpha: PositiveInt = 128
    # Phase 1 embedding rows that train: "added" (only the appended AST tokens), "none", "all", or "auto":
    # "all" for a tiny: base (random rows are not worth freezing), "added" for a pretrained one.
    trainable_embeddings: TrainableEmbeddings = "auto"
    eval_steps: PositiveInt = 50
    save_steps: PositiveInt = 50
    logging_steps: PositiveInt = 10
    # Rows come by their `split` column (decided once by ast_corpus): train on "train", validation loss on "dev".
    max_eval_rows: NonNegativeInt = 64  # dev rows in the validation loss; 0 = none during training


class Phase1TrainingConfig(PhaseTrainingConfig):
    # "pipes": the trainer runs in `nproc_per_node` torchrun processes (data-parallel: gloo on CPU, NCCL on GPU)
    # launched through Dagster Pipes; "in_process": in the step's own process, one process.
    launcher: Launcher = "in_process"
    nproc_per_node: PositiveInt = 1

    @model_validator(mode="after")
    def _processes_need_a_launcher(self):
        if self.nproc_per_node > 1 and self.launcher != "pipes":
            raise ValueError(f"nproc_per_node={self.nproc_per_node} needs launcher: pipes (in_process runs one "
                             "process)")
        return self


class Phase2TrainingConfig(PhaseTrainingConfig):
    max_steps: PositiveInt | None = from_profile("ast", "phase2_steps")


class AstEvalConfig(ProfileConfig):
    # Scores the "test" rows of ast_corpus / nl_ast_pairs (their split column): no fraction to agree on.
    samples: PositiveInt | None = from_profile("ast", "eval_samples")
    max_new_tokens: PositiveInt = 256
    max_length: PositiveInt | None = from_profile("ast", "max_length")
    max_test_texts: PositiveInt = 64  # test functions in the loss comparison
    seed: Seed = 0


def _require_rows(rows: list, what: str, language: str) -> None:
    if not rows:
        raise dg.Failure(
            f"{what} has no rows for slice {language!r}: nothing to train on. Materialize the data assets "
            f"for this slice, or point the corpus resource at a source that has {language} code."
        )


@dg.asset(group_name="ast_first", partitions_def=language_slices, deps=[ast_corpus, nl_ast_pairs, pretrained_base],
          description="Base tokenizer (BPE trained on the slice for tiny: bases) + AST tokens in a disjoint id range.",
          kinds={"huggingface"}, op_tags=MODEL_STEP)
def ast_tokenizer(context: dg.AssetExecutionContext, config: AstTokenizerConfig, artifacts: ArtifactStore,
                  catalog: DuckDBCatalog) -> dg.MaterializeResult:
    from ml.codec.tokens import SEP, text_to_tokens
    from ml.training.ast_tokenizer import ast_id_range, build_ast_tokenizer

    language = context.partition_key
    rows, entry = read_upstream(catalog, "ast_corpus", language)
    pairs, pentry = read_upstream(catalog, "nl_ast_pairs", language)
    _require_rows(rows, "ast_corpus", language)
    # <sep> belongs to the text form (it ends a raw payload), not to any one codec.
    vocab = [*get_language(language).codec.vocabulary(), SEP]
    # The base vocabulary must cover payloads (identifiers, strings) and docstrings.
    corpus = [" ".join(t for t in text_to_tokens(r["ast_text"]) if not t.startswith("<")) for r in rows]
    corpus += [p["nl"] for p in pairs]
    base = resolve_base(catalog, config.base_model, "ast_tokenizer.base_model", context)
    tok = build_ast_tokenizer(base.loadable, corpus, vocab, config.vocab_size)
    tok.init_kwargs["astforge_base_model"] = config.base_model
    # the exact weights this tokenizer extends: ast_base_model loads these, not a later conversion of the alias
    tok.init_kwargs["astforge_base_location"] = base.loadable
    lo, hi = ast_id_range(tok, vocab)
    base_size = tok.init_kwargs["astforge_base_vocab_size"]
    path = publish_folder(
        context, store=artifacts, catalog=catalog, build=tok.save_pretrained, rows=0,
        upstream={"ast_corpus": entry["data_version"], "nl_ast_pairs": pentry["data_version"],
                  **base_lineage(catalog, base)},
    ).path
    return dg.MaterializeResult(metadata={
        "base_model": config.base_model, "vocab_size": len(tok), "base_vocab_size": base_size,
        "ast_tokens": len(vocab), "ast_id_min": lo, "ast_id_max": hi, "path": dg.MetadataValue.path(str(path)),
    })


@dg.asset(group_name="ast_first", partitions_def=language_slices, deps=[ast_tokenizer],
          description="The base causal LM with embeddings resized for the AST vocabulary (tiny: built from config).",
          kinds={"huggingface", "pytorch"}, op_tags=MODEL_STEP)
def ast_base_model(context: dg.AssetExecutionContext, config: AstBaseModelConfig, artifacts: ArtifactStore,
                   catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from ml.models.loading import load_tokenizer
    from ml.training.base_model import build_base_model, save_base_model

    language = context.partition_key
    tok_entry = catalog.require_artifact("ast_tokenizer", language)
    tok = load_tokenizer(tok_entry["path"])
    # The tokenizer asset records which base it extends: model and tokenizer must come from one base.
    base_model = tok.init_kwargs.get("astforge_base_model", profile_value("ast", "base_model"))
    location = tok.init_kwargs.get("astforge_base_location")
    if not location or not (location.startswith("tiny:") or Path(location).exists()):
        location = resolve_base(catalog, base_model, "ast_tokenizer.base_model", context).loadable
    plan = compute.plan()
    model = build_base_model(location, tok, seed=config.seed, plan=plan, new_rows=config.new_token_init)
    n_params = sum(p.numel() for p in model.parameters())
    path = publish_folder(
        context, store=artifacts, catalog=catalog, build=lambda tmp: save_base_model(model, tok, tmp), rows=0,
        upstream={"ast_tokenizer": tok_entry["data_version"]},
    ).path
    return dg.MaterializeResult(metadata={
        "base_model": base_model, "parameters": n_params, "device": plan.device,
        "architecture": type(model).__name__, "path": dg.MetadataValue.path(str(path)),
    })


def _save_curve(tmp: Path, result, title: str) -> None:
    from ml.training.curves import plot_curves

    (tmp / "training_curve.png").write_bytes(plot_curves(result.curve, title=title))


def _training_result(context, catalog: DuckDBCatalog, result, path: Path, extra: dict) -> dg.MaterializeResult:
    asset = context.asset_key.to_user_string()
    catalog.write_training_curve(asset_key=asset, partition=context.partition_key, run_id=context.run_id,
                                 points=result.curve)
    png = (path / "training_curve.png").read_bytes()
    return dg.MaterializeResult(metadata={
        "steps": result.steps,
        "train_loss": round(result.train_loss, 4),
        "eval_loss_initial": round(result.eval_loss_initial, 4),
        "eval_loss_final": round(result.eval_loss_final, 4),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "real_token_fraction": round(result.real_token_fraction, 3),
        "resumed_from": result.resumed_from or "none",
        "training_curve": png_markdown(png, "training curve"),
        "path": dg.MetadataValue.path(str(path)),
        **extra,
    })


@dg.asset(group_name="ast_first", partitions_def=language_slices, deps=[ast_base_model, ast_corpus],
          pool="gpu", op_tags=TRAINING_STEP, kinds={"pytorch", "huggingface"},
          description="Phase 1: LoRA (+ trainable AST embedding rows) on AST-only sequences, P(AST).")
def ast_phase1_adapter(context: dg.AssetExecutionContext, config: Phase1TrainingConfig, artifacts: ArtifactStore,
                       catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from ml.models.loading import load_tokenizer
    from ml.training.ast_phases import phase1_split, phase_config
    from ml.training.sft import train_phase1

    language = context.partition_key
    base = catalog.require_artifact("ast_base_model", language)
    rows, entry = read_upstream(catalog, "ast_corpus", language)
    _require_rows(rows, "ast_corpus", language)
    tok = load_tokenizer(base["path"])
    try:
        texts, eval_texts, dropped = phase1_split(tok, rows, config.max_length, config.max_eval_rows)
    except ValueError as exc:  # rows made before the split was a column
        raise dg.Failure(f"phase 1 [{language}]: {exc}") from exc
    _require_rows(texts, "ast_corpus (train split, after the length filter)", language)
    context.log.info(f"phase 1 [{language}]: {len(texts)} train sequences ({dropped} longer than "
                     f"{config.max_length} tokens dropped), {len(eval_texts)} dev")
    settings = config.model_dump(exclude=LAUNCH_SETTINGS)
    work = checkpoint_dir(artifacts, "ast_phase1_adapter", language,
                     {"base": base["data_version"], "data": entry["data_version"], "cfg": settings,
                      **checkpoint_world(config.nproc_per_node)})
    plan = compute.plan()
    holder = {}

    def build(tmp: Path) -> None:
        tiny = str(tok.init_kwargs.get("astforge_base_model", "")).startswith("tiny:")
        cfg = phase_config(settings, tiny_base=tiny)
        if config.launcher == "pipes":
            holder["result"] = train_phase1_through_pipes(
                context, staging=tmp, nproc_per_node=config.nproc_per_node, base_dir=base["path"], texts=texts,
                eval_texts=eval_texts, work_dir=work, phase_config=cfg, plan=plan, what=f"phase 1 [{language}]")
        else:
            holder["result"] = train_phase1(base["path"], tok, texts, eval_texts, tmp, work, cfg, plan,
                                            on_log=log_progress(context, f"phase 1 [{language}]"))
        _save_curve(tmp, holder["result"], f"ast_phase1_adapter[{language}]")

    path = publish_folder(
        context, store=artifacts, catalog=catalog, build=build, rows=len(texts),
        upstream={"ast_base_model": base["data_version"], "ast_corpus": entry["data_version"]},
    ).path
    return _training_result(context, catalog, holder["result"], path, {
        "train_sequences": len(texts), "dropped_too_long": dropped, "dev_sequences": len(eval_texts),
        "device": plan.device, "backend": plan.backend, "checkpoints": dg.MetadataValue.path(str(work)),
        "launcher": config.launcher, "processes": config.nproc_per_node,
    })


@dg.asset(group_name="ast_first", partitions_def=language_slices,
          deps=[ast_phase1_adapter, nl_ast_pairs], pool="gpu", op_tags=TRAINING_STEP, kinds={"pytorch", "huggingface"},
          description="Phase 2: docstring -> AST from the Phase 1 adapter; base and AST embeddings frozen, "
                      "prompt masked from the loss.")
def ast_phase2_adapter(context: dg.AssetExecutionContext, config: Phase2TrainingConfig, artifacts: ArtifactStore,
                       catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from ml.models.loading import load_tokenizer
    from ml.training.ast_phases import phase2_pairs, phase_config
    from ml.training.sft import train_phase2

    language = context.partition_key
    base = catalog.require_artifact("ast_base_model", language)
    phase1 = catalog.require_artifact("ast_phase1_adapter", language)
    rows, entry = read_upstream(catalog, "nl_ast_pairs", language)
    _require_rows(rows, "nl_ast_pairs", language)
    tok = load_tokenizer(phase1["path"])
    try:
        pairs, eval_pairs = phase2_pairs(rows, config.max_eval_rows)
    except ValueError as exc:  # rows made before the split was a column
        raise dg.Failure(f"phase 2 [{language}]: {exc}") from exc
    _require_rows(pairs, "nl_ast_pairs (train split)", language)
    work = checkpoint_dir(artifacts, "ast_phase2_adapter", language,
                     {"phase1": phase1["data_version"], "data": entry["data_version"], "cfg": config.model_dump()})
    plan = compute.plan()
    holder = {}

    def build(tmp: Path) -> None:
        holder["result"] = train_phase2(base["path"], phase1["path"], tok, pairs, eval_pairs, tmp, work,
                                        phase_config(config.model_dump()), plan,
                                        on_log=log_progress(context, f"phase 2 [{language}]"))
        _save_curve(tmp, holder["result"], f"ast_phase2_adapter[{language}]")

    try:
        path = publish_folder(
            context, store=artifacts, catalog=catalog, build=build, rows=len(pairs),
            upstream={"ast_phase1_adapter": phase1["data_version"], "nl_ast_pairs": entry["data_version"]},
        ).path
    except ValueError as exc:  # zero supervised tokens, an adapter that does not fit its base, ...
        raise dg.Failure(f"phase 2 [{language}]: {exc}") from exc
    result = holder["result"]
    return _training_result(context, catalog, result, path, {
        "train_pairs": len(pairs) - result.dropped_truncated, "dropped_truncated": result.dropped_truncated,
        "dev_pairs": len(eval_pairs), "device": plan.device, "backend": plan.backend,
    })


def _merged_loader(base_path: str, adapter_asset: str, adapter: dict, language: str, plan):
    """Loads the adapter merged into its base, when the evaluation gets to it (one model in memory at a time)."""
    from ml.models.loading import load_merged

    def load():
        try:
            return load_merged(base_path, adapter["path"], plan)
        except ValueError as exc:
            raise dg.Failure(f"{adapter_asset}[{language}]: {exc}") from exc

    return load


@dg.asset(group_name="ast_first", partitions_def=language_slices,
          deps=[ast_phase1_adapter, ast_phase2_adapter], kinds={"pytorch"}, op_tags=MODEL_STEP,
          automation_condition=dg.AutomationCondition.eager(),
          description="On the test split, with n and 95% intervals: base vs Phase 1 loss (paired), sampled-AST "
                      "validity (constrained and not), and docstring->AST quality.")
def ast_eval(context: dg.AssetExecutionContext, config: AstEvalConfig, artifacts: ArtifactStore,
             catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from transformers import AutoModelForCausalLM

    from ml.evaluation.ast_eval import AstEvalSettings, evaluate_ast_models
    from ml.models.loading import load_tokenizer

    language = context.partition_key
    plan = compute.plan()
    base = catalog.require_artifact("ast_base_model", language)
    p1_entry = catalog.require_artifact("ast_phase1_adapter", language)
    p2_entry = catalog.require_artifact("ast_phase2_adapter", language)
    rows, corpus_entry = read_upstream(catalog, "ast_corpus", language)
    pairs, _ = read_upstream(catalog, "nl_ast_pairs", language)
    started = time.monotonic()
    try:
        result = evaluate_ast_models(
            lambda: AutoModelForCausalLM.from_pretrained(base["path"]),
            _merged_loader(base["path"], "ast_phase1_adapter", p1_entry, language, plan),
            _merged_loader(base["path"], "ast_phase2_adapter", p2_entry, language, plan),
            load_tokenizer(base["path"]), rows, pairs, get_language(language),
            AstEvalSettings(**config.model_dump()), on_log=lambda msg: context.log.info(f"ast_eval[{language}]: {msg}"),
        )
    except ValueError as exc:  # the recipe refuses (nothing in the test split, ...): a clear step failure
        raise dg.Failure(f"ast_eval[{language}]: {exc}") from exc
    metrics = result.metrics
    catalog.write_metrics(asset_key="ast_eval", partition=language, run_id=context.run_id, metrics=metrics)

    curves = {f"{name}_curve.png": Path(e["path"]) / "training_curve.png"
              for name, e in (("phase1", p1_entry), ("phase2", p2_entry))}
    report = result.report(language, {name: name for name, png in curves.items() if png.exists()})

    def build(tmp: Path) -> None:
        (tmp / "report.md").write_text(report)
        write_metrics_files(tmp, metrics)  # metrics.json (values) + metrics_evidence.json (n, interval, split)
        for name, png in curves.items():
            if png.exists():
                shutil.copy(png, tmp / name)

    path = publish_folder(
        context, store=artifacts, catalog=catalog, build=build, rows=len(result.scores),
        upstream={"ast_phase1_adapter": p1_entry["data_version"], "ast_phase2_adapter": p2_entry["data_version"],
                  "ast_corpus": corpus_entry["data_version"]},
    ).path
    context.log.info(f"ast_eval[{language}] in {time.monotonic() - started:.0f}s: "
                     + ", ".join(f"{k} {v}" for k, v in metrics.items()))
    return dg.MaterializeResult(metadata={
        **{k: dg.MetadataValue.float(v.value) for k, v in metrics.items()},  # numbers: the UI plots them over runs
        **{f"{k}_evidence": text for k, text in metadata_text(metrics).items()},  # "0.167 [0.047, 0.448] n=12"
        **{f"{k}_verdict": text for k, text in result.verdicts.items()},
        "report": report_markdown(report, path),
        "phase1_curve": png_markdown((Path(p1_entry["path"]) / "training_curve.png").read_bytes(), "phase 1"),
        "phase2_curve": png_markdown((Path(p2_entry["path"]) / "training_curve.png").read_bytes(), "phase 2"),
        "path": dg.MetadataValue.path(str(path)),
    })
