"""`srl` group: supervised RL for ast-grep rewrites. Rewrite tasks mined from a slice's code units, the teacher's
steps executed in the sandbox and kept when they did the task, a base with the step tags, a LoRA student (supervised
warm-up, then GRPO on the structured reward with a KL anchor), and base / warm-up only / student on the test rewrite
families (split by family, ml/srl/families.py; srl_ablation tunes on dev), each figure with n and a 95% interval.
Partitioned by language slice, except the base model."""

import json
from collections import Counter
from pathlib import Path
from typing import Literal

import dagster as dg
import pyarrow.parquet as pq
from pydantic import model_validator

from assets.config_checks import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Seed
from assets.corpus import code_units
from assets.k8s_tags import DATA_STEP, MODEL_STEP, TRAINING_STEP
from assets.models import base_lineage, pretrained_base, resolve_base
from assets.partitions import language_slices
from assets.profile_config import ProfileConfig, from_profile
from assets.publish import (
    UNPARTITIONED,
    checkpoint_dir,
    log_progress,
    png_markdown,
    publish_folder,
    publish_rows,
    read_upstream,
    report_markdown,
    skip_metadata,
)
from assets.split_checks import leak_check, leak_check_spec
from ml.schemas import SRL_EVAL_RESULTS, SRL_TASKS, SRL_TRACES, to_table
from ml.srl.report import family_counts_table
from ml.stats import estimates_table, write_metrics_files
from resources import ArtifactStore, DuckDBCatalog
from resources.compute import ComputeResource
from resources.teacher import TeacherResource

GROUP = "srl"

class SrlTasksConfig(ProfileConfig):
    max_per_family: PositiveInt | None = from_profile("srl", "max_tasks_per_family")
    # longer units are skipped (prompt length)
    max_code_chars: PositiveInt | None = from_profile("srl", "max_code_chars")
    seed: Seed = 0


class SrlTracesConfig(ProfileConfig):
    min_quality: Fraction = 0.6  # trace_quality threshold (schema 0.3 + execution 0.5 + brevity 0.2)
    # the same number of traces per family at most
    max_per_family: PositiveInt | None = from_profile("srl", "max_tasks_per_family")
    sandbox_timeout_s: PositiveFloat = 10.0


class SrlBaseModelConfig(ProfileConfig):
    # smollm2-135m (packaged, offline) | a hub id | gguf:PATH | a local folder | tiny:qwen2 (tests)
    base_model: str | None = from_profile("srl", "base_model")
    vocab_size: PositiveInt = 2000  # tiny: bases only (BPE trained on the slices' tasks)
    seed: Seed = 0


class SrlAdapterConfig(ProfileConfig):
    """Supervised warm-up (``sft_*``), then GRPO (TRL ``GRPOConfig`` names: ``beta`` is the KL coefficient)."""

    sft_steps: NonNegativeInt | None = from_profile("srl", "warmup_steps")  # 0: GRPO starts from the base
    sft_learning_rate: PositiveFloat = 1e-3
    # the step tags' embedding rows start at the vocabulary's mean and must become outputs: they learn this much faster
    sft_tag_lr_multiplier: PositiveFloat = 30.0
    sft_batch_size: PositiveInt = 8
    # on a CPU, warm-up rows per forward/backward pass: the same optimizer steps, faster and in less memory
    sft_cpu_micro_batch_size: NonNegativeInt = 2
    max_length: PositiveInt = 768  # warm-up rows longer than this are dropped
    max_steps: PositiveInt | None = from_profile("srl", "grpo_steps")
    beta: NonNegativeFloat = 0.05
    learning_rate: PositiveFloat = 5e-5
    num_generations: PositiveInt | None = from_profile("srl", "num_generations")
    per_device_train_batch_size: PositiveInt | None = from_profile("srl", "num_generations")
    max_completion_length: PositiveInt = 96
    temperature: PositiveFloat = 0.8  # below 1: a small student's samples stay well-formed often enough to differ
    reward_action: NonNegativeFloat = 0.5
    reward_state: NonNegativeFloat = 0.3
    reward_think: NonNegativeFloat = 0.2
    # > 0: each sampled step's action runs in the sandbox and this weight x (1 if it did the task else 0) is added
    reward_execution: NonNegativeFloat = 0.0
    malformed_penalty: float = -0.2
    lora_r: PositiveInt = 16
    lora_alpha: PositiveInt = 32
    lora_top_layers: NonNegativeInt = 10  # LoRA on the top N layers (0 = all): the backward pass stops there
    # bf16: autocast on a CPU with bf16 units
    precision: Literal["profile", "auto", "bf16", "fp32"] = from_profile("srl", "train_precision", "name")
    seed: Seed = 0

    @model_validator(mode="after")
    def _groups(self):
        if self.num_generations < 2:
            raise ValueError("num_generations must be at least 2 (GRPO compares samples of one prompt)")
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be a multiple "
                             f"of num_generations ({self.num_generations})")
        return self

    def weights(self):
        from ml.srl.reward import RewardWeights

        return RewardWeights(action=self.reward_action, state=self.reward_state, think=self.reward_think,
                             execution=self.reward_execution, malformed=self.malformed_penalty)

    def grpo_settings(self):
        from ml.srl.recipe import grpo_settings

        return grpo_settings(self.model_dump())


class SrlEvalConfig(ProfileConfig):
    # test tasks (families never trained on) per policy
    eval_tasks: PositiveInt | None = from_profile("srl", "eval_tasks")
    max_new_tokens: PositiveInt = 96
    # rows decoded together: 16 cost 0.58x the time per row of 8 (SmolLM2-135M, fp32, 2 cores; KV cache < 0.2 GB)
    batch_size: PositiveInt = 16
    # the student also decodes held to the step grammar (llguidance): metrics with a _constrained suffix. (The base
    # writes no tags: held to the grammar, its think never ends within max_new_tokens, so it parses nothing either.)
    constrained: bool = True
    seed: Seed = 0


@dg.asset(group_name=GROUP, partitions_def=language_slices, deps=[code_units], kinds={"python", "parquet", "duckdb"},
          check_specs=[leak_check_spec("srl_tasks")],
          description="Rewrite tasks: the slice's code units where a family of the catalog (ml/srl/families.py) "
                      "matches; code, a plain-English instruction and the expected rewrite. The split (train / dev / "
                      "test) is the family's; the blocking no_split_leak check finds no family in two splits.",
          op_tags=DATA_STEP)
def srl_tasks(context: dg.AssetExecutionContext, config: SrlTasksConfig, artifacts: ArtifactStore,
              catalog: DuckDBCatalog) -> dg.MaterializeResult:
    from ml.srl.families import families_for
    from ml.srl.tasks import mine_tasks

    language = context.partition_key
    units, entry = read_upstream(catalog, "code_units", language)
    families = families_for(language)
    if not families:
        raise dg.Failure(f"srl_tasks: no rewrite family for {language!r} in ml/srl/families.py")
    mined = mine_tasks(units, language, families, max_per_family=config.max_per_family,
                       max_code_chars=config.max_code_chars, seed=config.seed)
    if not mined.tasks:
        raise dg.Failure(f"srl_tasks[{language}]: no family matched any of {len(units)} units "
                         f"({dict(mined.skipped)})")
    publish_rows(context, store=artifacts, catalog=catalog, rows=mined.tasks, schema=SRL_TASKS,
                 skipped=dict(mined.skipped), upstream={"code_units": entry["data_version"]})
    per_family = Counter(t["family"] for t in mined.tasks)
    splits = Counter(t["split"] for t in mined.tasks)
    context.log.info(f"srl_tasks[{language}]: {len(mined.tasks)} tasks from {len(per_family)} of {len(families)} "
                     f"families ({dict(splits)})")
    return dg.MaterializeResult(check_results=[leak_check("srl_tasks", mined.tasks, key="family")], metadata={
        "tasks": len(mined.tasks), "train_tasks": splits["train"], "dev_tasks": splits["dev"],
        "test_tasks": splits["test"],
        "families_matched": len(per_family), "families": len(families),
        "tasks_per_family": dg.MetadataValue.md(family_counts_table(per_family)), **skip_metadata(mined.skipped),
    })


@dg.asset(group_name=GROUP, partitions_def=language_slices, deps=[srl_tasks], kinds={"python", "parquet", "duckdb"},
          op_tags=DATA_STEP, check_specs=[leak_check_spec("srl_teacher_traces")],
          description="The teacher's step (think / action / state_update) per task, executed in the sandbox "
                      "(ast-grep rewrite, parse, expected code, Python behaviour on generated inputs); kept when "
                      "trace_quality >= min_quality, at most max_per_family per family. Rejections by reason; the "
                      "teacher's own rates on the test tasks before that filter in eval_metrics.")
def srl_teacher_traces(context: dg.AssetExecutionContext, config: SrlTracesConfig, artifacts: ArtifactStore,
                       catalog: DuckDBCatalog, teacher: TeacherResource) -> dg.MaterializeResult:
    from ml.dsl.teachers import TeacherUnavailable
    from ml.srl.teacher import teacher_success, teacher_traces

    language = context.partition_key
    tasks, entry = read_upstream(catalog, "srl_tasks", language)
    srl_teacher = teacher.srl_teacher(exemplar_tasks=tasks)

    def progress(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            context.log.info(f"srl_teacher_traces[{language}]: {done}/{total} steps from the teacher")

    try:
        batch = teacher_traces(tasks, srl_teacher, min_quality=config.min_quality,
                               max_per_family=config.max_per_family, timeout_s=config.sandbox_timeout_s,
                               progress=progress)
    except TeacherUnavailable as exc:
        raise dg.Failure(f"srl_teacher_traces: {exc}") from exc
    if not batch.traces:
        raise dg.Failure(f"srl_teacher_traces[{language}]: no step passed the checks ({dict(batch.rejected)})")
    publish_rows(context, store=artifacts, catalog=catalog, rows=batch.traces, schema=SRL_TRACES,
                 skipped=dict(batch.rejected), upstream={"srl_tasks": entry["data_version"]})
    kept = Counter(t["family"] for t in batch.traces)
    sample = batch.traces[0]
    # the kept traces parse and execute by construction; this is how often the teacher does on the test tasks
    unfiltered = {f"teacher_{k}": v for k, v in teacher_success(batch.outcomes, "test").items() if v.n}
    if unfiltered:
        catalog.write_metrics(asset_key="srl_teacher_traces", partition=language, run_id=context.run_id,
                              metrics=unfiltered)
    return dg.MaterializeResult(check_results=[leak_check("srl_teacher_traces", batch.traces, key="family")],
                                metadata={
        "traces": len(batch.traces), "tasks": len(tasks), "teacher": json.dumps(srl_teacher.describe()),
        **{f"{split}_traces": sum(t["split"] == split for t in batch.traces) for split in ("train", "dev", "test")},
        **{f"{k}_test_unfiltered": str(v) for k, v in unfiltered.items()},
        "mean_trace_quality": round(sum(t["trace_quality"] for t in batch.traces) / len(batch.traces), 4),
        "traces_per_family": dg.MetadataValue.md(family_counts_table(kept)),
        "sample_trace": dg.MetadataValue.md(f"task: {sample['instruction']}\n\n```\n{sample['step']}\n```\n\n"
                                            f"env report: `{sample['env_report'][:600]}`"),
        **skip_metadata(batch.rejected), **{f"teacher_{k}": v for k, v in batch.teacher_stats.items()},
    })


@dg.asset(group_name=GROUP, deps=[pretrained_base], kinds={"huggingface", "pytorch"}, op_tags=MODEL_STEP,
          description="The pretrained base with <think>, </think>, <action>, </action>, <state_update>, "
                      "</state_update> appended as atomic tokens (embedding rows at the mean of the old ones).")
def srl_base_model(context: dg.AssetExecutionContext, config: SrlBaseModelConfig, artifacts: ArtifactStore,
                   catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from ml.srl.recipe import srl_tokenizer
    from ml.srl.trace import SPECIAL_TOKENS
    from ml.training.base_model import build_base_model, save_base_model

    base = resolve_base(catalog, config.base_model, "srl_base_model.base_model", context)
    texts: list[str] = []
    if base.loadable.startswith("tiny:"):  # a tiny BPE learns the tasks' text of every slice mined so far
        for language in ("python", "javascript", "java"):
            if catalog.latest_artifact("srl_tasks", language):
                texts += [t["instruction"] + "\n" + t["code"] for t in read_upstream(catalog, "srl_tasks",
                                                                                     language)[0]]
    tok = srl_tokenizer(base.loadable, texts, config.vocab_size)
    tok.init_kwargs["astforge_base_model"] = config.base_model
    model = build_base_model(base.loadable, tok, seed=config.seed, plan=compute.plan())
    path = publish_folder(context, store=artifacts, catalog=catalog, rows=0,
                          build=lambda tmp: save_base_model(model, tok, tmp), upstream=base_lineage(catalog, base)).path
    return dg.MaterializeResult(metadata={
        "base_model": config.base_model, "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tok), "tag_token_ids": str([tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]),
        "path": dg.MetadataValue.path(str(path)),
    })


def train_rows(catalog: DuckDBCatalog, language: str) -> tuple[list[dict], str]:
    traces, entry = read_upstream(catalog, "srl_teacher_traces", language)
    train = [t for t in traces if t["split"] == "train"]
    if not train:
        raise dg.Failure(f"srl_adapter[{language}]: srl_teacher_traces has no trace of a train family")
    return train, entry["data_version"]


@dg.asset(group_name=GROUP, partitions_def=language_slices, deps=[srl_base_model, srl_teacher_traces], pool="gpu",
          kinds={"pytorch", "huggingface"}, op_tags=TRAINING_STEP,
          description="The student: a LoRA warm-up on the train families' traces (completion-only loss; the tag "
                      "rows train too) in warmup/, then TRL GRPO with a fresh LoRA on base + warm-up merged, on the "
                      "structured reward (0.5 action + 0.3 state + 0.2 think; malformed = penalty) with beta x KL "
                      "to where RL started. Load: base, merge warmup/, merge this folder's adapter "
                      "(ml.srl.recipe.load_student). Reward components and KL go to training_metrics.")
def srl_adapter(context: dg.AssetExecutionContext, config: SrlAdapterConfig, artifacts: ArtifactStore,
                catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from ml.models.loading import load_tokenizer
    from ml.srl.environment import execute_actions
    from ml.srl.recipe import StructuredReward
    from ml.srl.report import reward_histograms
    from ml.srl.reward import MiniLMEmbedder
    from ml.srl.student import train_student
    from ml.training.sft_trainer import PhaseConfig

    language = context.partition_key
    asset = f"srl_adapter[{language}]"
    base = catalog.require_artifact("srl_base_model", UNPARTITIONED)
    traces, traces_version = train_rows(catalog, language)
    tok = load_tokenizer(base["path"])
    tiny = str(tok.init_kwargs.get("astforge_base_model", "")).startswith("tiny:")
    plan = compute.plan(config.precision)
    versions = {"srl_base_model": base["data_version"], "srl_teacher_traces": traces_version}
    work = checkpoint_dir(artifacts, "srl_adapter", language, {**versions, "cfg": config.model_dump()})
    settings = config.grpo_settings()
    context.log.info(f"{asset}: {len(traces)} train traces; {config.sft_steps} warm-up steps, then "
                     f"{config.max_steps} GRPO steps of {config.per_device_train_batch_size} samples "
                     f"({config.num_generations} per prompt), beta {config.beta}, device {plan.device}")
    holder: dict = {}

    def build(tmp: Path) -> None:
        cfg = None
        if config.sft_steps:
            cfg = PhaseConfig(max_steps=config.sft_steps, learning_rate=config.sft_learning_rate,
                              per_device_train_batch_size=config.sft_batch_size, per_device_eval_batch_size=8,
                              cpu_micro_batch_size=config.sft_cpu_micro_batch_size,
                              warmup_steps=min(3, config.sft_steps), logging_steps=min(5, config.sft_steps),
                              save_steps=max(config.sft_steps, 1), max_length=config.max_length,
                              lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                              lora_top_layers=0 if tiny else config.lora_top_layers, separator="", add_eos=False,
                              trainable_embeddings="all" if tiny else "added", lr_scheduler_type="linear",
                              added_tokens_lr_multiplier=config.sft_tag_lr_multiplier, seed=config.seed)
        reward = StructuredReward(MiniLMEmbedder(), config.weights(),
                                  execute_actions if config.reward_execution else None)
        trained = train_student(base["path"], tok, traces, tmp, work, settings, plan, reward, warmup_config=cfg,
                                on_log=log_progress(context, asset))
        holder["grpo"], holder["sft"] = trained.grpo, trained.sft
        (tmp / "reward_components.png").write_bytes(reward_histograms(holder["grpo"].components))

    try:
        path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=len(traces),
                              upstream=versions).path
    except ValueError as exc:
        raise dg.Failure(f"{asset}: {exc}") from exc
    grpo, sft = holder["grpo"], holder.get("sft")
    points = [(s, f"warmup/{m}", v) for s, m, v in (sft.curve if sft else [])] + grpo.curve
    catalog.write_training_curve(asset_key="srl_adapter", partition=language, run_id=context.run_id, points=points)
    kl = [v for _, m, v in grpo.curve if m == "kl"]
    rewards = [v for _, m, v in grpo.curve if m == "reward"]
    components = grpo.components
    return dg.MaterializeResult(metadata={
        "warmup_steps": sft.steps if sft else 0, "warmup_loss": round(sft.train_loss, 4) if sft else 0.0,
        "grpo_steps": grpo.steps, "grpo_seconds": round(grpo.seconds, 1), "beta": config.beta,
        "reward_first": round(rewards[0], 4) if rewards else 0.0,
        "reward_last": round(rewards[-1], 4) if rewards else 0.0,
        "kl_last": round(kl[-1], 5) if kl else 0.0,
        "malformed_rate": round(sum(components["malformed"]) / max(len(components["malformed"]), 1), 4),
        "reward_components": png_markdown((path / "reward_components.png").read_bytes(), "reward components"),
        "path": dg.MetadataValue.path(str(path)),
    })


def eval_inputs(catalog: DuckDBCatalog, language: str, split: str, n: int, seed: int, asset: str):
    """Up to ``n`` tasks of ``split`` with the teacher's steps (ml.srl.recipe.split_inputs); the traces' version."""
    from ml.srl.recipe import split_inputs

    traces, entry = read_upstream(catalog, "srl_teacher_traces", language)
    inputs = split_inputs(traces, split, n, seed)
    if not inputs.tasks:
        raise dg.Failure(f"{asset}[{language}]: no {split} trace to evaluate on (srl_teacher_traces kept none of "
                         f"the {split} families)")
    return inputs, entry["data_version"]


@dg.asset(group_name=GROUP, partitions_def=language_slices, deps=[srl_adapter, srl_base_model, srl_teacher_traces],
          pool="gpu", kinds={"pytorch", "markdown"}, automation_condition=dg.AutomationCondition.eager(),
          op_tags=TRAINING_STEP,
          description="Base, warm-up-only student and student (warm-up + GRPO) on the test rewrite families: "
                      "trace_parse_rate, action_fidelity, state_faithfulness, think_similarity, brevity_penalty, "
                      "kl_per_token, execution_success (the policy's own action run in the sandbox), think_tokens, "
                      "state_tokens, each with n and a 95% interval; paired differences student - base, student - "
                      "warmup, warmup - base. eval_metrics as {policy}_{metric}; per-row results; a Markdown report.")
def srl_eval(context: dg.AssetExecutionContext, config: SrlEvalConfig, artifacts: ArtifactStore,
             catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from ml.models.loading import load_base, load_tokenizer
    from ml.srl.environment import execute_actions
    from ml.srl.evaluation import evaluate_policies
    from ml.srl.recipe import load_student, load_warmup
    from ml.srl.report import policy_plot, srl_report
    from ml.srl.reward import MiniLMEmbedder

    language = context.partition_key
    inputs, traces_version = eval_inputs(catalog, language, "test", config.eval_tasks, config.seed, "srl_eval")
    tasks = inputs.tasks
    base = catalog.require_artifact("srl_base_model", UNPARTITIONED)
    adapter = catalog.require_artifact("srl_adapter", language)
    plan = compute.plan()
    tok = load_tokenizer(adapter["path"])
    base_model = load_base(base["path"], plan)
    try:
        student = load_student(base["path"], adapter["path"], plan)
        warmup = load_warmup(base["path"], adapter["path"], plan)  # None when the student had no warm-up
    except ValueError as exc:
        raise dg.Failure(f"srl_eval[{language}]: srl_adapter: {exc}") from exc
    policies = [("base", base_model), *([("warmup", warmup)] if warmup is not None else []), ("student", student)]
    metrics, rows = evaluate_policies(policies, tok, inputs, MiniLMEmbedder(), execute_actions, split="test",
                                      max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                      constrained=config.constrained,
                                      log=lambda line: context.log.info(f"srl_eval[{language}] {line}"))
    catalog.write_metrics(asset_key="srl_eval", partition=language, run_id=context.run_id, metrics=metrics)
    report = srl_report(language, metrics, rows, len(tasks))
    plot = policy_plot(metrics)
    holder: dict = {}

    def build(tmp: Path) -> None:
        pq.write_table(to_table(rows, SRL_EVAL_RESULTS), tmp / "rows.parquet", compression="zstd")
        holder["flat"] = write_metrics_files(tmp, metrics)
        (tmp / "report.md").write_text(report)
        (tmp / "policies.png").write_bytes(plot)

    path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=len(rows),
                          table="srl_eval_results", table_asset_column=False,
                          upstream={"srl_adapter": adapter["data_version"], "srl_base_model": base["data_version"],
                                    "srl_teacher_traces": traces_version}).path
    return dg.MaterializeResult(metadata={
        # the values as numbers (plots over runs), and each with its n and interval in `figures`
        **{k: dg.MetadataValue.float(v) for k, v in holder["flat"].items()},
        "figures": dg.MetadataValue.md(estimates_table(metrics)),
        # heldout_tasks (the test tasks scored): bench/srl_learning_curve.py reads this name
        "heldout_tasks": len(tasks), "split": "test", "report": report_markdown(report, path),
        "policies": png_markdown(plot, "policies"), "path": dg.MetadataValue.path(str(path / "report.md")),
    })


SRL_ASSETS = [srl_tasks, srl_teacher_traces, srl_base_model, srl_adapter, srl_eval]
