"""`srl` group, the ablation sweep: the GRPO step of `srl_adapter` under other settings (lambda, the malformed
penalty, the reward weights), one factor at a time, each continuing the same warm-up and evaluated like the student
on the **dev** families: the knobs are tuned there, so that srl_eval's test families stay unseen by the tuning.
Each variant's figures carry their n and interval, and its paired difference against the reference variant (same
dev tasks) says whether a setting measurably changes anything. Configurations of the same recipe (ml.srl.recipe),
not copies of assets; `srl_ablation_job` runs it."""

import json
from pathlib import Path

import dagster as dg
from pydantic import model_validator

from assets.config_checks import PositiveInt
from assets.k8s_tags import TRAINING_STEP
from assets.partitions import language_slices
from assets.publish import UNPARTITIONED, checkpoint_dir, log_progress, png_markdown, publish_folder
from assets.srl import (
    GROUP,
    SrlAdapterConfig,
    eval_inputs,
    srl_adapter,
    srl_base_model,
    srl_teacher_traces,
    train_rows,
)
from ml.stats import Estimate
from resources import ArtifactStore, DuckDBCatalog
from resources.compute import ComputeResource


class SrlAblationConfig(SrlAdapterConfig):
    """One factor at a time around the GRPO settings above (the first value of each list is the reference): every
    variant continues srl_adapter's warm-up adapter (the sft_* settings are not used) for max_steps GRPO steps and
    is evaluated like srl_eval's student, on the dev families (up to eval_tasks of their tasks)."""

    betas: list[float] = [0.05, 0.01, 0.1]  # the KL coefficient lambda
    malformed_penalties: list[float] = [-0.2, -0.1]
    reward_weights: list[str] = ["0.5,0.3,0.2", "0.7,0.2,0.1"]  # action,state,think
    eval_tasks: PositiveInt = 12
    max_new_tokens: PositiveInt = 96

    @model_validator(mode="after")
    def _sweep(self):
        if not self.betas or not self.malformed_penalties or not self.reward_weights:
            raise ValueError("betas, malformed_penalties and reward_weights need at least one value each")
        for text in self.reward_weights:
            parts = text.split(",")
            if len(parts) != 3 or not all(p.strip().replace(".", "", 1).isdigit() for p in parts):
                raise ValueError(f"reward_weights entry {text!r}: expected 'action,state,think', e.g. '0.5,0.3,0.2'")
        return self

    def variants(self) -> list[tuple[str, "SrlAdapterConfig"]]:
        reference = {"beta": self.betas[0], "malformed_penalty": self.malformed_penalties[0],
                     **dict(zip(("reward_action", "reward_state", "reward_think"),
                                map(float, self.reward_weights[0].split(",")), strict=True))}
        out = [("reference", reference)]
        out += [(f"beta_{b:g}", {**reference, "beta": b}) for b in self.betas[1:]]
        out += [(f"malformed_{m:g}", {**reference, "malformed_penalty": m}) for m in self.malformed_penalties[1:]]
        for text in self.reward_weights[1:]:
            a, st, t = map(float, text.split(","))
            out.append((f"weights_{a:g}_{st:g}_{t:g}",
                        {**reference, "reward_action": a, "reward_state": st, "reward_think": t}))
        base = {k: v for k, v in self.model_dump().items() if k in SrlAdapterConfig.model_fields}
        return [(name, SrlAdapterConfig(**{**base, **changes})) for name, changes in out]



@dg.asset(group_name=GROUP, partitions_def=language_slices, deps=[srl_adapter, srl_base_model, srl_teacher_traces],
          pool="gpu", kinds={"pytorch", "markdown"}, op_tags=TRAINING_STEP,
          description="Ablations of the GRPO step as configurations of the same recipe: lambda (beta), the malformed "
                      "penalty and the reward weights, one at a time, each continuing srl_adapter's warm-up and "
                      "evaluated on the dev families (tuning never sees srl_eval's test families). A table "
                      "(n, intervals, paired differences to the reference) and a plot compare them "
                      "(srl_ablation_job).")
def srl_ablation(context: dg.AssetExecutionContext, config: SrlAblationConfig, artifacts: ArtifactStore,
                 catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from ml.models.loading import load_tokenizer
    from ml.srl.environment import execute_actions
    from ml.srl.recipe import StructuredReward, paired_differences
    from ml.srl.report import ablation_plot, ablation_table
    from ml.srl.reward import MiniLMEmbedder
    from ml.srl.student import evaluate_student, train_student
    from ml.stats import write_metrics_files

    language = context.partition_key
    base = catalog.require_artifact("srl_base_model", UNPARTITIONED)
    adapter = catalog.require_artifact("srl_adapter", language)
    traces, traces_version = train_rows(catalog, language)
    inputs, _ = eval_inputs(catalog, language, "dev", config.eval_tasks, config.seed, "srl_ablation")
    warmup = Path(adapter["path"]) / "warmup"
    tok = load_tokenizer(adapter["path"])
    plan = compute.plan(config.precision)
    embed = MiniLMEmbedder()
    variants = config.variants()
    reference_weights = variants[0][1].weights()
    results: list[dict] = []
    rows_by_variant: dict[str, list[dict]] = {}

    def metrics_of(results: list[dict]) -> dict:
        return {f"{r['variant']}_{m}": r[m] for r in results
                for m in ("execution_success", "trace_parse_rate", "reward", "action_fidelity",
                          "vs_reference_execution_success", "vs_reference_reward") if m in r}

    versions = {"srl_adapter": adapter["data_version"], "srl_teacher_traces": traces_version}

    def build(tmp: Path) -> None:
        for i, (name, variant) in enumerate(variants):
            context.log.info(f"srl_ablation[{language}] {i + 1}/{len(variants)} {name}: beta {variant.beta}, "
                             f"weights {variant.reward_action}/{variant.reward_state}/{variant.reward_think}, "
                             f"malformed {variant.malformed_penalty}")
            reward = StructuredReward(embed, variant.weights(), execute_actions if variant.reward_execution else None)
            work = checkpoint_dir(artifacts, "srl_ablation", language, {**versions, name: variant.model_dump()})
            # the variant's folder: its GRPO adapter, on a copy of srl_adapter's warm-up (the sft_* settings unused)
            grpo = train_student(base["path"], tok, traces, tmp / name, work, variant.grpo_settings(), plan, reward,
                                 warmup_from=warmup, on_log=log_progress(context, f"srl_ablation {name}")).grpo
            # scored with the reference's weights, so that a variant's weights cannot move its own yardstick
            scored = evaluate_student(base["path"], tmp / name, plan, tok, inputs, embed, execute_actions,
                                      max_new_tokens=config.max_new_tokens, weights=reference_weights)
            kl = [v for _, m, v in grpo.curve if m == "kl"]
            rows = [dict(r, policy=name) for r in scored.rows]
            if results:
                diffs = paired_differences(rows_by_variant["reference"] + rows, name, "reference", "dev",
                                           ("execution_success", "reward"))
                scored.metrics |= {f"vs_reference_{m}": diffs[f"{name}_minus_reference_{m}"]
                                   for m in ("execution_success", "reward")}
            rows_by_variant[name] = rows
            results.append({"variant": name, "beta": variant.beta, "malformed_penalty": variant.malformed_penalty,
                            "weights": f"{variant.reward_action:g}/{variant.reward_state:g}/{variant.reward_think:g}",
                            "train_kl_last": kl[-1] if kl else float("nan"), "grpo_seconds": grpo.seconds,
                            **scored.metrics})
        write_metrics_files(tmp, metrics_of(results))
        (tmp / "ablation.json").write_text(json.dumps([{k: (str(v) if isinstance(v, Estimate) else v)
                                                        for k, v in r.items()} for r in results], indent=1))
        (tmp / "report.md").write_text(f"# SRL ablations ({language})\n\n{ablation_table(results)}\n\n"
                                       "![ablation](ablation.png)\n")
        (tmp / "ablation.png").write_bytes(ablation_plot(results))

    path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=len(variants),
                          upstream=versions).path
    catalog.write_metrics(asset_key="srl_ablation", partition=language, run_id=context.run_id,
                          metrics=metrics_of(results))
    return dg.MaterializeResult(metadata={
        "variants": len(variants), "table": dg.MetadataValue.md(ablation_table(results)),
        "plot": png_markdown((path / "ablation.png").read_bytes(), "ablation"),
        "path": dg.MetadataValue.path(str(path / "report.md")),
    })
