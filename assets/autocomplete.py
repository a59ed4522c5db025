"""`autocomplete` group, model half: the base with FIM tokens (M0), Stage A on general code (M1), Stage B on the
domain with replay (M2), and the M0/M1/M2 evaluation and report. Unpartitioned: Stage A reads the `fim_samples` of
the slices in its `languages` setting."""

from pathlib import Path
from typing import Literal

import dagster as dg
import pyarrow.parquet as pq

from assets.autocomplete_data import GROUP, domain_corpus, fim_samples, rows_of
from assets.config_checks import NonNegativeInt, PositiveFloat, PositiveInt, Seed, TrainFraction
from assets.k8s_tags import MODEL_STEP, TRAINING_STEP
from assets.models import base_lineage, pretrained_base, resolve_base
from assets.profile_config import ProfileConfig, from_profile
from assets.publish import UNPARTITIONED as P
from assets.publish import checkpoint_dir, log_progress, png_markdown, publish_folder, report_markdown
from ml.schemas import AUTOCOMPLETE_RESULTS, to_table
from resources import ArtifactStore, DuckDBCatalog
from resources.compute import ComputeResource

MODELS = {"m0": "autocomplete_base_model", "m1": "autocomplete_stage_a_adapter", "m2": "autocomplete_stage_b_adapter"}


class AutocompleteBaseModelConfig(ProfileConfig):
    # smollm2-135m (packaged, offline) | Qwen/Qwen2.5-Coder-0.5B (hub) | gguf:PATH | a local folder | tiny:qwen2
    base_model: str | None = from_profile("autocomplete", "base_model")
    # the slices whose rows train a tiny: base's BPE (pretrained bases keep theirs)
    languages: list[str] | None = from_profile("autocomplete", "languages")
    vocab_size: PositiveInt = 4000
    seed: Seed = 0


class StageConfig(ProfileConfig):
    """Field names are the trainer's (ml.training.sft_trainer.PhaseConfig); ml.autocomplete.recipe.phase_config maps
    them."""

    max_steps: PositiveInt | None = from_profile("autocomplete", "stage_a_steps")
    # bf16 on a CPU with bfloat16 units: autocast
    precision: Literal["profile", "auto", "bf16", "fp32"] = from_profile("autocomplete", "train_precision", "name")
    learning_rate: PositiveFloat | None = from_profile("autocomplete", "learning_rate")
    per_device_train_batch_size: PositiveInt | None = from_profile("autocomplete", "batch_size")
    gradient_accumulation_steps: PositiveInt = 1
    # on a CPU, rows per forward/backward pass: the same optimizer steps, faster and in less memory (PhaseConfig)
    cpu_micro_batch_size: NonNegativeInt = 2
    # longer rows are dropped (a cut middle would teach stopping mid-line)
    max_length: PositiveInt | None = from_profile("autocomplete", "max_length")
    warmup_steps: NonNegativeInt = 4
    logging_steps: PositiveInt = 5
    save_steps: PositiveInt = 20
    lora_r: PositiveInt = 16
    lora_alpha: PositiveInt = 32
    lora_top_layers: NonNegativeInt = 20  # LoRA on the top N layers only (0 = all): the backward pass stops there
    seed: Seed = 0


class StageAConfig(StageConfig):
    # the fim_samples slices Stage A trains on; Stage B trains on the domain_corpus slices of the same languages
    languages: list[str] | None = from_profile("autocomplete", "languages")


class StageBConfig(StageConfig):
    max_steps: PositiveInt | None = from_profile("autocomplete", "stage_b_steps")
    replay_ratio: TrainFraction = 0.2  # share of Stage A rows in the Stage B mix, against forgetting


class AutocompleteEvalConfig(ProfileConfig):
    # generic and domain single-line tasks per model (a seeded sample)
    tasks_per_set: PositiveInt | None = from_profile("autocomplete", "eval_tasks")
    # a seeded sample of HumanEval's 164 problems, one masked line each (0: all of them); not the first N
    humaneval_problems: NonNegativeInt | None = from_profile("autocomplete", "humaneval_problems")
    # the split the generic and domain tasks come from: test to report, dev to tune a knob (HumanEval is skipped
    # on dev, so that nothing is tuned on the benchmark)
    split: Literal["dev", "test"] = "test"
    max_new_tokens: PositiveInt = 48
    # the slices evaluated: per slice a generic set (its fim_samples' tasks) and a domain set (its domain_corpus'),
    # named generic / domain for python and generic_{slice} / domain_{slice} for the others; HumanEval with python
    languages: list[str] | None = from_profile("autocomplete", "languages")
    sandbox_timeout_s: PositiveFloat = 10.0  # per HumanEval program
    # the generic set's first N tasks are completed one at a time and timed (an editor's latency); every other
    # completion goes in batches, untimed (one decoding pass serves 8 rows)
    latency_tasks: NonNegativeInt = 16
    batch_size: PositiveInt = 16  # decoding 16 rows costs 0.58x the time per row of 8 (SmolLM2-135M, fp32, 2 cores)
    seed: Seed = 0


@dg.asset(group_name=GROUP, deps=[fim_samples, domain_corpus, pretrained_base], kinds={"huggingface", "pytorch"},
          description="M0: the pretrained base with the FIM tokens (<|fim_prefix|>, <|fim_suffix|>, <|fim_middle|>) "
                      "appended to its vocabulary and embedding matrix.", op_tags=MODEL_STEP)
def autocomplete_base_model(context: dg.AssetExecutionContext, config: AutocompleteBaseModelConfig,
                            artifacts: ArtifactStore, catalog: DuckDBCatalog,
                            compute: ComputeResource) -> dg.MaterializeResult:
    from ml.autocomplete.recipe import fim_tokenizer, training_pairs
    from ml.training.base_model import build_base_model, save_base_model

    base = resolve_base(catalog, config.base_model, "autocomplete_base_model.base_model", context)
    texts = []
    if base.loadable.startswith("tiny:"):
        rows, _ = rows_of(catalog, config.languages)
        texts = [p + c for p, c in training_pairs([r for r in rows if r["split"] == "train"])]
    tok = fim_tokenizer(base.loadable, texts, config.vocab_size)
    tok.init_kwargs["astforge_base_model"] = config.base_model
    plan = compute.plan()
    model = build_base_model(base.loadable, tok, seed=config.seed, plan=plan)
    path = publish_folder(context, store=artifacts, catalog=catalog, rows=0,
                          build=lambda tmp: save_base_model(model, tok, tmp), upstream=base_lineage(catalog, base)).path
    return dg.MaterializeResult(metadata={
        "base_model": config.base_model, "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tok), "fim_token_ids": str([tok.convert_tokens_to_ids(t) for t in
                                                       ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")]),
        "path": dg.MetadataValue.path(str(path)),
    })


def _train(context, config: StageConfig, artifacts, catalog, compute, rows: list[dict], upstream: dict[str, str],
           start_adapter: str | None, languages: list[str]) -> dg.MaterializeResult:
    """Train one stage on ``rows``: a fresh LoRA (Stage A) or the LoRA of ``start_adapter`` continued (Stage B); the
    folder records the fim_samples ``languages`` it trained on."""
    from ml.autocomplete.recipe import phase_config, training_pairs, write_stage_languages
    from ml.models.loading import load_tokenizer
    from ml.plots import line_plot
    from ml.training.lora_sft import continue_lora_sft, train_lora_sft

    asset = context.asset_key.to_user_string()
    base = catalog.require_artifact("autocomplete_base_model", P)
    start = catalog.require_artifact(start_adapter, P) if start_adapter else None
    tok = load_tokenizer(start["path"] if start else base["path"])
    pairs = training_pairs(rows)
    if not pairs:
        raise dg.Failure(f"{asset}: no training rows")
    tiny = str(tok.init_kwargs.get("astforge_base_model", "")).startswith("tiny:")
    cfg = phase_config(config.model_dump(), tiny=tiny)
    plan = compute.plan(config.precision)
    versions = {"autocomplete_base_model": base["data_version"], **upstream,
                **({start_adapter: start["data_version"]} if start else {})}
    work = checkpoint_dir(artifacts, asset, P, {**versions, "cfg": config.model_dump()})
    context.log.info(f"{asset}: {len(pairs)} training pairs, {cfg.max_steps} steps of {cfg.per_device_train_batch_size}"
                     f", device {plan.device} ({plan.dtype})")
    holder = {}

    def build(tmp: Path) -> None:
        on_log = log_progress(context, asset)
        if start:
            holder["r"] = continue_lora_sft(base["path"], start["path"], tok, pairs, [], tmp, work, cfg, plan, on_log,
                                            what=asset)
        else:
            holder["r"] = train_lora_sft(base["path"], tok, pairs, [], tmp, work, cfg, plan, on_log=on_log)
        write_stage_languages(tmp, languages)
        losses = [(s, v) for s, m, v in holder["r"].curve if m == "loss"]
        (tmp / "training_curve.png").write_bytes(line_plot({"train loss": losses}, f"{asset}: loss", "step", "loss"))

    try:
        path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=len(pairs),
                              upstream=versions).path
    except ValueError as exc:  # every row too long, an adapter that does not fit the base
        raise dg.Failure(f"{asset}: {exc}") from exc
    result = holder["r"]
    catalog.write_training_curve(asset_key=asset, partition=P, run_id=context.run_id, points=result.curve)
    return dg.MaterializeResult(metadata={
        "steps": result.steps, "train_loss": round(result.train_loss, 4), "pairs": len(pairs),
        "dropped_too_long": result.dropped_truncated, "step_seconds": round(result.step_seconds, 2),
        "tokens_per_s": round(result.tokens_per_s, 1), "precision": plan.dtype, "device": plan.device,
        "resumed_from": result.resumed_from or "none",
        "training_curve": png_markdown((path / "training_curve.png").read_bytes(), "loss"),
        "path": dg.MetadataValue.path(str(path)),
    })


@dg.asset(group_name=GROUP, deps=[autocomplete_base_model, fim_samples], pool="gpu", kinds={"pytorch", "huggingface"},
          op_tags=TRAINING_STEP,
          description="M1: LoRA (and the FIM token rows) on the general FIM + comment-to-code mix, prompt masked.")
def autocomplete_stage_a_adapter(context: dg.AssetExecutionContext, config: StageAConfig, artifacts: ArtifactStore,
                                 catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    rows, versions = rows_of(catalog, config.languages)
    train = [r for r in rows if r["split"] == "train"]
    return _train(context, config, artifacts, catalog, compute, train, versions, start_adapter=None,
                  languages=list(dict.fromkeys(config.languages)))


@dg.asset(group_name=GROUP, deps=[autocomplete_stage_a_adapter, domain_corpus], pool="gpu",
          kinds={"pytorch", "huggingface"}, op_tags=TRAINING_STEP,
          description="M2: Stage A's LoRA continued on the domain rows, with replay_ratio of Stage A rows mixed in.")
def autocomplete_stage_b_adapter(context: dg.AssetExecutionContext, config: StageBConfig, artifacts: ArtifactStore,
                                 catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from ml.autocomplete.recipe import stage_b_rows, stage_languages

    stage_a = catalog.require_artifact("autocomplete_stage_a_adapter", P)
    try:
        languages = stage_languages(stage_a["path"])  # Stage A's replay rows come from the slices it trained on
    except ValueError as exc:
        raise dg.Failure(f"autocomplete_stage_b_adapter: {exc}") from exc
    general, versions = rows_of(catalog, languages)
    domain, dversions = rows_of(catalog, languages, "domain_corpus")  # the domain slices of the same languages
    rows = stage_b_rows([r for r in domain if r["split"] == "train"], [r for r in general if r["split"] == "train"],
                        config.replay_ratio, config.seed)
    return _train(context, config, artifacts, catalog, compute, rows, {**versions, **dversions},
                  start_adapter="autocomplete_stage_a_adapter", languages=languages)


def _load(catalog: DuckDBCatalog, model: str, plan):
    from ml.models.loading import load_base_or_merged

    base = catalog.require_artifact("autocomplete_base_model", P)
    if model == "m0":
        return load_base_or_merged(base["path"], None, plan), base
    entry = catalog.require_artifact(MODELS[model], P)
    try:
        return load_base_or_merged(base["path"], entry["path"], plan), entry
    except ValueError as exc:
        raise dg.Failure(f"autocomplete_eval: {MODELS[model]}: {exc}") from exc


@dg.asset(group_name=GROUP, deps=[autocomplete_base_model, autocomplete_stage_a_adapter, autocomplete_stage_b_adapter],
          pool="gpu", kinds={"pytorch", "markdown"}, op_tags=TRAINING_STEP,
          # a new adapter (a re-trained stage) re-runs the comparison when the automation sensor is on
          automation_condition=dg.AutomationCondition.eager(),
          description="M0 vs M1 vs M2 on single-line infilling of the test split (generic slices, the domain) and "
                      "a seeded sample of HumanEval (tests run in the sandbox): exact match, edit similarity, syntax "
                      "validity with and without syntax-aware truncation, pass@1 (each with n and 95% interval), "
                      "latency; paired differences diff_{a}_vs_{b}_{set}_{metric}. Metrics {model}_{set}_{metric}; "
                      "a Markdown report.")
def autocomplete_eval(context: dg.AssetExecutionContext, config: AutocompleteEvalConfig, artifacts: ArtifactStore,
                      catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from ml.autocomplete import humaneval
    from ml.autocomplete.recipe import eval_set_name, evaluate_set, paired_differences, sample_tasks
    from ml.autocomplete.report import autocomplete_report, differences_table, exact_match_plot
    from ml.models.loading import load_tokenizer
    from ml.stats import Estimate, metadata_text, write_metrics_files

    plan = compute.plan()
    split = config.split
    sets, set_languages, versions = {}, {}, {}
    for language in config.languages:
        generic, gversions = rows_of(catalog, [language])
        domain, dversions = rows_of(catalog, [language], "domain_corpus")
        versions |= gversions | dversions
        for kind, rows in (("generic", generic), ("domain", domain)):
            name = eval_set_name(kind, language)
            sets[name] = sample_tasks(rows, config.tasks_per_set, config.seed, split=split)
            set_languages[name] = language
    if split == "test" and "python" in config.languages:  # HumanEval is Python
        problems = humaneval.sample_problems(humaneval.load_problems(), config.humaneval_problems, config.seed)
        sets["humaneval"] = humaneval.single_line_tasks(problems, seed=config.seed)
        set_languages["humaneval"] = "python"
    for set_name, tasks in sets.items():
        if not tasks:
            raise dg.Failure(f"autocomplete_eval: no {split} task in the {set_name} set (its data has no {split} "
                             "group: more data, or a larger fraction for that split)")

    def run_tests(tasks, middles):
        _, rows = humaneval.score_completions(tasks, middles, timeout_s=config.sandbox_timeout_s)
        return [bool(r["passed"]) for r in rows]

    metrics: dict[str, float | Estimate] = {}
    results: list[dict] = []
    timed_set = next(iter(sets))  # the first slice's generic set: an editor's latency
    for model, asset in MODELS.items():
        loaded, entry = _load(catalog, model, plan)
        versions[asset] = entry["data_version"]
        tok = load_tokenizer(entry["path"])
        for set_name, tasks in sets.items():
            m, rows = evaluate_set(loaded, tok, tasks, set_name, language=set_languages[set_name],
                                   max_new_tokens=config.max_new_tokens,
                                   score=run_tests if set_name == "humaneval" else None,
                                   split="test" if set_name == "humaneval" else split, batch_size=config.batch_size,
                                   latency_tasks=config.latency_tasks if set_name == timed_set else 0)
            metrics |= {f"{model}_{k}": v for k, v in m.items()}
            results += [{"model": model, **r} for r in rows]
            context.log.info(f"autocomplete_eval {model} {set_name}: " + ", ".join(
                f"{k}={v}" for k, v in metadata_text(m).items() if not k.endswith(("_p95", "_truncated"))))
        del loaded
    metrics |= paired_differences(results, split=split)
    catalog.write_metrics(asset_key="autocomplete_eval", partition=P, run_id=context.run_id, metrics=metrics)
    plot = exact_match_plot(metrics)
    report = autocomplete_report(metrics, results, {s: len(t) for s, t in sets.items()}, split=split)

    def build(tmp: Path) -> None:
        pq.write_table(to_table(results, AUTOCOMPLETE_RESULTS), tmp / "rows.parquet", compression="zstd")
        write_metrics_files(tmp, metrics)
        (tmp / "report.md").write_text(report)
        (tmp / "exact_match.png").write_bytes(plot)

    path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=len(results),
                          table="autocomplete_results", upstream=versions).path
    # numbers stay numbers (the UI plots them, the console prints them); their n and intervals, and the paired
    # differences with their verdicts, are in the report and in eval_metrics
    headline = {k: dg.MetadataValue.float(v.value if isinstance(v, Estimate) else v) for k, v in metrics.items()
                if not k.startswith("diff_") and k.endswith(("_exact_match", "_edit_similarity", "_pass_at_1",
                                                             "_syntax_valid_rate_truncated", "_latency_ms_p50"))}
    return dg.MaterializeResult(metadata={
        **headline, "paired_differences": dg.MetadataValue.md(differences_table(metrics)),
        "report": report_markdown(report, path), "exact_match": png_markdown(plot, "exact match"),
        "path": dg.MetadataValue.path(str(path / "report.md")),
    })


AUTOCOMPLETE_MODEL_ASSETS = [autocomplete_base_model, autocomplete_stage_a_adapter, autocomplete_stage_b_adapter,
                             autocomplete_eval]
