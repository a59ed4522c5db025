"""`ast_first` group: the AST-first vs plain-text experiment (same base, functions, LoRA settings and steps).

Materialized on demand (``ast_vs_text_job``, or from the UI): it trains two models per run, so no other job selects
it. ``bench/ast_vs_text.py`` materializes this asset and prints its figures.
"""

import json
import time
from pathlib import Path

import dagster as dg

from assets.ast_first import ast_corpus, nl_ast_pairs
from assets.ast_models import ast_base_model
from assets.config_checks import NonNegativeInt, PositiveFloat, PositiveInt, Seed
from assets.k8s_tags import TRAINING_STEP
from assets.partitions import language_slices
from assets.publish import png_markdown, publish_folder, read_upstream, report_markdown
from ml.stats import Estimate, metadata_text, write_metrics_files
from resources import ArtifactStore, DuckDBCatalog
from resources.compute import ComputeResource


class AstVsTextConfig(dg.Config):
    arms: list[str] = ["text", "ast"]  # the switch: which arms train and get measured; the recipe is shared
    phase1_steps: PositiveInt = 30
    phase2_steps: PositiveInt = 30
    batch_size: PositiveInt = 8
    learning_rate: PositiveFloat = 1e-3
    lora_r: PositiveInt = 16
    lora_alpha: PositiveInt = 32
    max_length: PositiveInt = 256
    curve_points: PositiveInt = 3
    max_test_functions: PositiveInt = 32
    nl2code_samples: PositiveInt = 24
    humaneval_n: NonNegativeInt = 164  # seeded sample of the 164 problems; 0 = none
    max_new_tokens: PositiveInt = 192
    seed: Seed = 0


@dg.asset(group_name="ast_first", partitions_def=language_slices, deps=[ast_base_model, ast_corpus, nl_ast_pairs],
          pool="gpu", op_tags=TRAINING_STEP, kinds={"pytorch"},
          description="AST-first vs plain text on one base: Phase 1 + Phase 2 on AST tokens or on source, the same "
                      "functions and steps; held-out bits per source character, docstring -> code and HumanEval "
                      "pass@1 (sandboxed tests), each with n and 95% interval, arms compared as paired differences.")
def ast_vs_text_eval(context: dg.AssetExecutionContext, config: AstVsTextConfig, artifacts: ArtifactStore,
                     catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    from transformers import AutoTokenizer

    from ml.ast_vs_text.humaneval import HUMANEVAL_LANGUAGE
    from ml.ast_vs_text.recipe import ExperimentSettings, run_experiment
    from ml.ast_vs_text.report import curve_png, experiment_report
    from ml.autocomplete.humaneval import load_problems, sample_problems

    language = context.partition_key
    base = catalog.require_artifact("ast_base_model", language)
    rows, corpus_entry = read_upstream(catalog, "ast_corpus", language)
    pairs, pairs_entry = read_upstream(catalog, "nl_ast_pairs", language)
    settings = config.model_dump()
    humaneval_n = settings.pop("humaneval_n")
    settings["arms"] = tuple(settings["arms"])
    settings["language"] = language
    # HumanEval is Python: the other slices compare the arms on their own test functions and docstrings only
    problems = (sample_problems(load_problems(), humaneval_n, config.seed)
                if humaneval_n and language == HUMANEVAL_LANGUAGE else [])
    started = time.monotonic()
    try:
        result = run_experiment(base["path"], AutoTokenizer.from_pretrained(base["path"]), rows, pairs, problems,
                                ExperimentSettings(**settings), compute.plan(),
                                on_log=lambda msg: context.log.info(f"ast_vs_text[{language}]: {msg}"))
    except ValueError as exc:  # nothing fits, an unknown arm, ...: a clear step failure
        raise dg.Failure(f"ast_vs_text_eval[{language}]: {exc}") from exc
    metrics = result.metrics
    # tokens seen and training seconds are the runs' budget (report, summary.json), not estimates over test items
    catalog.write_metrics(asset_key="ast_vs_text_eval", partition=language, run_id=context.run_id,
                          metrics={k: v for k, v in metrics.items() if isinstance(v, Estimate)})
    png = curve_png(result)
    report = experiment_report(result, "learning_curves.png")

    def build(tmp: Path) -> None:
        (tmp / "report.md").write_text(report)
        (tmp / "learning_curves.png").write_bytes(png)
        (tmp / "summary.json").write_text(json.dumps(result.summary(), indent=1))
        write_metrics_files(tmp, metrics)  # metrics.json (values) + metrics_evidence.json (n, interval, split)

    path = publish_folder(
        context, store=artifacts, catalog=catalog, build=build, rows=len(result.data.test_functions),
        upstream={"ast_base_model": base["data_version"], "ast_corpus": corpus_entry["data_version"],
                  "nl_ast_pairs": pairs_entry["data_version"]},
    ).path
    context.log.info(f"ast_vs_text_eval[{language}] in {time.monotonic() - started:.0f}s")
    return dg.MaterializeResult(metadata={
        **{k: dg.MetadataValue.float(float(getattr(v, "value", v))) for k, v in metrics.items()},
        **{f"{k}_evidence": text for k, text in metadata_text(metrics).items() if isinstance(text, str)},
        **{f"{k}_verdict": text for k, text in result.verdicts.items()},
        "humaneval_n": len(result.tasks),
        "report": report_markdown(report, path),
        "learning_curves": png_markdown(png, "learning curves"),
        "path": dg.MetadataValue.path(str(path)),
    })
