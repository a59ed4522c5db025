"""`ast_first` group, model half: tokenizer, base model, Phase 1 and Phase 2 adapters, evaluation."""

import json
import shutil
import time
from pathlib import Path

import dagster as dg

from assets.ast_first import ast_corpus, nl_ast_pairs
from assets.models import pretrained_base, resolve_base
from assets.partitions import language_slices
from assets.publish import checkpoint_dir, log_progress, png_markdown, publish_folder, read_upstream
from ml.dataset import split_heldout
from ml.languages import get_language
from resources import ArtifactStore, DuckDBCatalog
from resources.compute import ComputeResource
from resources.settings import active_profile

_P = active_profile()


class AstTokenizerConfig(dg.Config):
    # tiny:qwen2 | smollm2-135m (packaged, offline) | gguf:PATH | a hub id (Qwen/Qwen2.5-0.5B) | a local folder
    base_model: str = _P.base_model
    vocab_size: int = 4000  # BPE size for tiny: bases (pretrained tokenizers keep theirs)


class AstBaseModelConfig(dg.Config):
    seed: int = 0


class PhaseTrainingConfig(dg.Config):
    max_steps: int = _P.phase1_steps
    learning_rate: float = _P.learning_rate
    batch_size: int = _P.batch_size
    gradient_accumulation_steps: int = 1
    max_length: int = _P.max_length
    # A tiny random-init base has little to keep: a wide adapter lets it learn; the full
    # profile's pretrained base keeps r=16-class adapters (set it in the launchpad).
    lora_r: int = 64
    lora_alpha: int = 128
    # Phase 1 embedding rows that train: "ast" (only the appended AST tokens), "all", or "auto":
    # "all" for a tiny: base (random rows are not worth freezing), "ast" for a pretrained one.
    trainable_embeddings: str = "auto"
    eval_steps: int = 50
    save_steps: int = 50
    logging_steps: int = 10
    heldout_fraction: float = 0.05
    max_eval_rows: int = 64


class Phase2TrainingConfig(PhaseTrainingConfig):
    max_steps: int = _P.phase2_steps


class AstEvalConfig(dg.Config):
    samples: int = _P.eval_samples
    max_new_tokens: int = 256
    heldout_fraction: float = 0.05
    max_length: int = _P.max_length
    seed: int = 0


def _require_rows(rows: list, what: str, language: str) -> None:
    if not rows:
        raise dg.Failure(
            f"{what} has no rows for slice {language!r}: nothing to train on. Materialize the data assets "
            f"for this slice, or point the corpus resource at a source that has {language} code."
        )


@dg.asset(group_name="ast_first", partitions_def=language_slices, deps=[ast_corpus, nl_ast_pairs, pretrained_base],
          description="Base tokenizer (BPE trained on the slice for tiny: bases) + AST tokens in a disjoint id range.",
          kinds={"huggingface"})
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
    lo, hi = ast_id_range(tok, vocab)
    base_size = tok.init_kwargs["astforge_base_vocab_size"]
    path = publish_folder(
        context, store=artifacts, catalog=catalog, build=tok.save_pretrained, rows=0,
        upstream={"ast_corpus": entry["data_version"], "nl_ast_pairs": pentry["data_version"]},
    ).path
    return dg.MaterializeResult(metadata={
        "base_model": config.base_model, "vocab_size": len(tok), "base_vocab_size": base_size,
        "ast_tokens": len(vocab), "ast_id_min": lo, "ast_id_max": hi, "path": dg.MetadataValue.path(str(path)),
    })


@dg.asset(group_name="ast_first", partitions_def=language_slices, deps=[ast_tokenizer],
          description="The base causal LM with embeddings resized for the AST vocabulary (tiny: built from config).",
          kinds={"huggingface", "pytorch"})
def ast_base_model(context: dg.AssetExecutionContext, config: AstBaseModelConfig, artifacts: ArtifactStore,
                   catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from transformers import AutoTokenizer

    from ml.training.base_model import build_base_model, save_base_model

    language = context.partition_key
    tok_entry = catalog.require_artifact("ast_tokenizer", language)
    tok = AutoTokenizer.from_pretrained(tok_entry["path"])
    # The tokenizer asset records which base it extends: model and tokenizer must come from one base.
    base_model = tok.init_kwargs.get("astforge_base_model", _P.base_model)
    base = resolve_base(catalog, base_model, "ast_tokenizer.base_model", context)
    plan = compute.plan()
    model = build_base_model(base.loadable, tok, seed=config.seed, plan=plan)
    n_params = sum(p.numel() for p in model.parameters())
    path = publish_folder(
        context, store=artifacts, catalog=catalog, build=lambda tmp: save_base_model(model, tok, tmp), rows=0,
        upstream={"ast_tokenizer": tok_entry["data_version"]},
    ).path
    return dg.MaterializeResult(metadata={
        "base_model": base_model, "parameters": n_params, "device": plan.device,
        "architecture": type(model).__name__, "path": dg.MetadataValue.path(str(path)),
    })


def _phase_config(config: PhaseTrainingConfig, tiny_base: bool = False):
    from ml.training.sft import PhaseConfig

    embeddings = config.trainable_embeddings
    if embeddings == "auto":
        embeddings = "all" if tiny_base else "ast"
    return PhaseConfig(
        trainable_embeddings=embeddings,
        max_steps=config.max_steps, learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, max_length=config.max_length,
        lora_r=config.lora_r, lora_alpha=config.lora_alpha, eval_steps=config.eval_steps,
        save_steps=config.save_steps, logging_steps=config.logging_steps,
    )


def phase1_texts(tok, rows: list[dict], max_length: int) -> tuple[list[str], int]:
    """Phase 1 sequences: EOS marks the start of a tree (so sampling has a prompt), and sequences
    that would be cut are dropped — a tree cut short never teaches the model to close it."""
    texts = [tok.eos_token + r["ast_text"] for r in rows]
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    kept = [t for t, n in zip(texts, lengths) if n < max_length]
    return kept, len(texts) - len(kept)


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
          pool="gpu", kinds={"pytorch", "huggingface"},
          description="Phase 1: LoRA (+ trainable AST embedding rows) on AST-only sequences, P(AST).")
def ast_phase1_adapter(context: dg.AssetExecutionContext, config: PhaseTrainingConfig, artifacts: ArtifactStore,
                       catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from transformers import AutoTokenizer

    from ml.training.sft import train_phase1

    language = context.partition_key
    base = catalog.require_artifact("ast_base_model", language)
    rows, entry = read_upstream(catalog, "ast_corpus", language)
    _require_rows(rows, "ast_corpus", language)
    tok = AutoTokenizer.from_pretrained(base["path"])
    train, held = split_heldout(rows, config.heldout_fraction)
    texts, dropped = phase1_texts(tok, train, config.max_length)
    eval_texts, _ = phase1_texts(tok, held[: config.max_eval_rows], config.max_length)
    _require_rows(texts, "ast_corpus (after the length filter)", language)
    context.log.info(f"phase 1 [{language}]: {len(texts)} sequences ({dropped} longer than "
                     f"{config.max_length} tokens dropped), {len(eval_texts)} held out")
    work = checkpoint_dir(artifacts, "ast_phase1_adapter", language,
                     {"base": base["data_version"], "data": entry["data_version"], "cfg": config.model_dump()})
    plan = compute.plan()
    holder = {}

    def build(tmp: Path) -> None:
        tiny = str(tok.init_kwargs.get("astforge_base_model", "")).startswith("tiny:")
        holder["result"] = train_phase1(base["path"], tok, texts, eval_texts, tmp, work,
                                        _phase_config(config, tiny_base=tiny), plan,
                                        on_log=log_progress(context, f"phase 1 [{language}]"))
        _save_curve(tmp, holder["result"], f"ast_phase1_adapter[{language}]")

    path = publish_folder(
        context, store=artifacts, catalog=catalog, build=build, rows=len(texts),
        upstream={"ast_base_model": base["data_version"], "ast_corpus": entry["data_version"]},
    ).path
    return _training_result(context, catalog, holder["result"], path, {
        "train_sequences": len(texts), "dropped_too_long": dropped, "heldout_sequences": len(eval_texts),
        "device": plan.device, "backend": plan.backend, "checkpoints": dg.MetadataValue.path(str(work)),
    })


@dg.asset(group_name="ast_first", partitions_def=language_slices,
          deps=[ast_phase1_adapter, nl_ast_pairs], pool="gpu", kinds={"pytorch", "huggingface"},
          description="Phase 2: docstring -> AST from the Phase 1 adapter; base and AST embeddings frozen, "
                      "prompt masked from the loss.")
def ast_phase2_adapter(context: dg.AssetExecutionContext, config: Phase2TrainingConfig, artifacts: ArtifactStore,
                       catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from transformers import AutoTokenizer

    from ml.training.sft import train_phase2

    language = context.partition_key
    base = catalog.require_artifact("ast_base_model", language)
    phase1 = catalog.require_artifact("ast_phase1_adapter", language)
    rows, entry = read_upstream(catalog, "nl_ast_pairs", language)
    _require_rows(rows, "nl_ast_pairs", language)
    tok = AutoTokenizer.from_pretrained(phase1["path"])
    train, held = split_heldout(rows, config.heldout_fraction)
    pairs = [(r["nl"], r["ast_text"]) for r in train]
    eval_pairs = [(r["nl"], r["ast_text"]) for r in held][: config.max_eval_rows]
    work = checkpoint_dir(artifacts, "ast_phase2_adapter", language,
                     {"phase1": phase1["data_version"], "data": entry["data_version"], "cfg": config.model_dump()})
    plan = compute.plan()
    holder = {}

    def build(tmp: Path) -> None:
        holder["result"] = train_phase2(base["path"], phase1["path"], tok, pairs, eval_pairs, tmp, work,
                                        _phase_config(config), plan,
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
        "heldout_pairs": len(eval_pairs), "device": plan.device, "backend": plan.backend,
    })


def _grammar_factory(language: str, tok, vocab_size: int, max_new_tokens: int):
    """A grammar-constraining logits processor factory for the slice, or None where there is no grammar
    (JavaScript and Java have none yet: their constrained metrics are not reported)."""
    if language != "python":
        return None
    from ml.constrained.python_grammar import GrammarLogitsProcessor, PythonAstGrammar

    grammar = PythonAstGrammar(tok, vocab_size=vocab_size)
    return lambda prompt_lengths: GrammarLogitsProcessor(
        grammar, prompt_lengths, tok.eos_token_id, vocab_size, max_new_tokens=max_new_tokens,
        pad_token_id=tok.pad_token_id)


def _eval_model(catalog: DuckDBCatalog, language: str, adapter_asset: str, plan):
    from ml.training.sft import load_adapter

    base = catalog.require_artifact("ast_base_model", language)
    adapter = catalog.require_artifact(adapter_asset, language)
    try:
        model = load_adapter(base["path"], adapter["path"], plan)
    except ValueError as exc:
        raise dg.Failure(f"{adapter_asset}[{language}]: {exc}") from exc
    # Merged weights generate several times faster than the adapter wrappers, with the same outputs.
    return model.merge_and_unload(), adapter


@dg.asset(group_name="ast_first", partitions_def=language_slices,
          deps=[ast_phase1_adapter, ast_phase2_adapter], kinds={"pytorch"},
          automation_condition=dg.AutomationCondition.eager(),
          description="Held-out loss, sampled-AST validity (constrained and not), and docstring->AST quality.")
def ast_eval(context: dg.AssetExecutionContext, config: AstEvalConfig, artifacts: ArtifactStore,
             catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ml.evaluation.ast_metrics import judge, score_prediction
    from ml.evaluation.lm import generate_texts, heldout_loss
    from ml.evaluation.report import ast_eval_report

    language = context.partition_key
    plan = compute.plan()
    base = catalog.require_artifact("ast_base_model", language)
    rows, corpus_entry = read_upstream(catalog, "ast_corpus", language)
    pairs, _ = read_upstream(catalog, "nl_ast_pairs", language)
    tok = AutoTokenizer.from_pretrained(base["path"])
    _, held = split_heldout(rows, config.heldout_fraction)
    held_texts, _ = phase1_texts(tok, held[:64], config.max_length)
    if not held_texts:
        raise dg.Failure(f"ast_eval[{language}]: no held-out functions fit in {config.max_length} tokens")
    started = time.monotonic()

    base_model = AutoModelForCausalLM.from_pretrained(base["path"])
    metrics = {"heldout_loss_initial": heldout_loss(base_model, tok, held_texts, config.max_length)}
    del base_model

    phase1, p1_entry = _eval_model(catalog, language, "ast_phase1_adapter", plan)
    metrics["heldout_loss_final"] = heldout_loss(phase1, tok, held_texts, config.max_length)
    vocab_size = phase1.get_output_embeddings().weight.shape[0]
    factory = _grammar_factory(language, tok, vocab_size, config.max_new_tokens)
    prompts = [tok.eos_token] * config.samples
    samples = {}
    for label, proc in (("unconstrained", None), ("constrained", factory)):
        if label == "constrained" and proc is None:
            continue
        texts = generate_texts(phase1, tok, prompts, config.max_new_tokens, do_sample=True, seed=config.seed,
                               processor_factory=proc)
        judged = [judge(language, t) for t in texts]
        metrics[f"valid_rate_{label}"] = sum(j.valid for j in judged) / len(judged)
        samples[label] = [(t, j) for t, j in zip(texts, judged)]
        context.log.info(f"ast_eval[{language}]: {label} sampling valid {metrics[f'valid_rate_{label}']:.2f}")
    del phase1

    phase2, p2_entry = _eval_model(catalog, language, "ast_phase2_adapter", plan)
    _, held_pairs = split_heldout(pairs, config.heldout_fraction)
    held_pairs = held_pairs[: config.samples]
    if not held_pairs:
        raise dg.Failure(f"ast_eval[{language}]: nl_ast_pairs has no held-out pairs")
    preds = generate_texts(phase2, tok, [p["nl"] + "\n" for p in held_pairs], config.max_new_tokens,
                           do_sample=False, processor_factory=factory)
    scores = [score_prediction(language, pred, p["ast_text"]) for pred, p in zip(preds, held_pairs)]
    metrics["nl2ast_valid_rate"] = sum(s.valid for s in scores) / len(scores)
    metrics["nl2ast_exact_match"] = sum(s.exact for s in scores) / len(scores)
    metrics["nl2ast_tree_similarity"] = sum(s.similarity for s in scores) / len(scores)
    metrics = {k: round(float(v), 4) for k, v in metrics.items()}
    catalog.write_metrics(asset_key="ast_eval", partition=language, run_id=context.run_id, metrics=metrics)

    curves = {f"{name}_curve.png": Path(e["path"]) / "training_curve.png"
              for name, e in (("phase1", p1_entry), ("phase2", p2_entry))}
    report = ast_eval_report(language, metrics, samples, held_pairs, preds, scores,
                             {name: name for name, png in curves.items() if png.exists()})

    def build(tmp: Path) -> None:
        (tmp / "report.md").write_text(report)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        for name, png in curves.items():
            if png.exists():
                shutil.copy(png, tmp / name)

    path = publish_folder(
        context, store=artifacts, catalog=catalog, build=build, rows=len(scores),
        upstream={"ast_phase1_adapter": p1_entry["data_version"], "ast_phase2_adapter": p2_entry["data_version"],
                  "ast_corpus": corpus_entry["data_version"]},
    ).path
    context.log.info(f"ast_eval[{language}] in {time.monotonic() - started:.0f}s: {metrics}")
    return dg.MaterializeResult(metadata={
        **{k: dg.MetadataValue.float(v) for k, v in metrics.items()},
        "report": dg.MetadataValue.md(report),
        "phase1_curve": png_markdown((Path(p1_entry["path"]) / "training_curve.png").read_bytes(), "phase 1"),
        "phase2_curve": png_markdown((Path(p2_entry["path"]) / "training_curve.png").read_bytes(), "phase 2"),
        "path": dg.MetadataValue.path(str(path)),
    })
