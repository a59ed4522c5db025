"""`graph_repair` group: abstract syntax graphs of a slice's functions, graded corruptions of them, a Graph U-Net
denoiser and a Transformer of the same size trained on the same rows for the same steps, and both (with the
slot-frequency baseline) repairing test functions: one-shot and iterative, with and without the grammar mask,
with the Z3 check. The split is data: each function's ``split`` comes from the group key of its alpha-renamed code
(renamed copies share it), decided in ``asg_corpus`` and inherited by ``repair_dataset``; both carry the blocking
``no_split_leak`` check. Training reads train, the relabel threshold is chosen on dev, the report shows test.
Partitioned by language slice: Python graphs come from its AST, JavaScript and Java ones from tree-sitter
(``ml.graph_repair.backend`` picks the builder, grammar mask and validity judge per slice)."""

import json
from collections import Counter
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from assets.config_checks import Fraction, NonNegativeInt, PositiveFloat, PositiveInt, Seed
from assets.corpus import code_units
from assets.k8s_tags import DATA_STEP, MODEL_STEP, TRAINING_STEP
from assets.partitions import language_slices
from assets.profile_config import ProfileConfig, from_profile
from assets.publish import png_markdown, publish_folder, publish_rows, read_upstream, report_markdown, skip_metadata
from assets.split_checks import leak_check, leak_check_spec
from ml.schemas import ASG_CORPUS, GRAPH_REPAIR_RESULTS, REPAIR_DATASET, to_table
from ml.splits import DEFAULT_DEV_FRACTION, DEFAULT_TEST_FRACTION
from resources import ArtifactStore, DuckDBCatalog
from resources.compute import ComputeResource

GROUP = "graph_repair"

class AsgCorpusConfig(ProfileConfig):
    max_functions: NonNegativeInt | None = from_profile("graph_repair", "max_functions")  # 0: every function that fits
    min_nodes: PositiveInt = 20
    max_nodes: PositiveInt | None = from_profile("graph_repair", "max_nodes")
    # split_of(group key of the alpha-renamed code): the same functions in every run, renamed copies together
    dev_fraction: Fraction = DEFAULT_DEV_FRACTION
    test_fraction: Fraction = DEFAULT_TEST_FRACTION


class RepairDatasetConfig(ProfileConfig):
    # dev and test functions get one per noise level
    corruptions_per_graph: PositiveInt | None = from_profile("graph_repair", "corruptions_per_graph")
    seed: Seed = 0


class DenoiserConfig(ProfileConfig):
    hidden: PositiveInt | None = from_profile("graph_repair", "hidden")
    depth: PositiveInt = 2  # Graph U-Net levels (each pools to half the nodes)
    steps: PositiveInt | None = from_profile("graph_repair", "steps")
    batch_size: PositiveInt | None = from_profile("graph_repair", "batch_size")
    lr: PositiveFloat = 1e-3
    clean_weight: Fraction = 0.1
    max_vocab: PositiveInt = 4000
    seed: Seed = 0


class GraphRepairEvalConfig(dg.Config):
    diffusion_steps: PositiveInt = 4
    z3_tries: NonNegativeInt = 4
    # candidates for each model's relabel threshold, chosen on dev (never on test); one value: fixed, no sweep
    relabel_thresholds: list[float] = [0.5, 0.7, 0.9]


@dg.asset(group_name=GROUP, partitions_def=language_slices, deps=[code_units], kinds={"python", "parquet", "duckdb"},
          check_specs=[leak_check_spec("asg_corpus")],
          description="Abstract syntax graphs of the slice's functions (alpha-renamed): node labels (types, "
                      "identifiers, operators, literals), child edges with the parent's field, sibling and dataflow "
                      "edges; Parquet edge lists, built once so training never parses text. Each function's split "
                      "(train/dev/test) comes from the group key of its alpha-renamed code.", op_tags=DATA_STEP)
def asg_corpus(context: dg.AssetExecutionContext, config: AsgCorpusConfig, artifacts: ArtifactStore,
               catalog: DuckDBCatalog) -> dg.MaterializeResult:
    from ml.graph_repair.plots import sample_graph_png
    from ml.graph_repair.rows import graph_rows
    from ml.languages import get_language

    language = context.partition_key
    units, entry = read_upstream(catalog, "code_units", language)
    rows, skipped, edges = graph_rows(units, language, get_language(language).renamer, config.min_nodes,
                                      config.max_nodes, config.max_functions, config.dev_fraction,
                                      config.test_fraction)
    context.log.info(f"asg_corpus[{language}]: {len(rows)} graphs from {len(units)} units")
    pub = publish_rows(context, store=artifacts, catalog=catalog, rows=rows, schema=ASG_CORPUS, skipped=skipped,
                       upstream={"code_units": entry["data_version"]})
    splits = Counter(r["split"] for r in rows)
    sample = next((r for r in rows if 25 <= r["n_nodes"] <= 45), rows[0] if rows else None)
    return dg.MaterializeResult(metadata={
        "graphs": len(rows), **{f"graphs_{s}": dg.MetadataValue.int(splits[s]) for s in ("train", "dev", "test")},
        # functions whose alpha-renamed graph another function already has (kept, in the same split as it)
        "duplicate_graphs": len(rows) - len({r["group_key"] for r in rows}),
        "nodes_total": sum(r["n_nodes"] for r in rows),
        **{f"edges_{k}": dg.MetadataValue.int(v) for k, v in sorted(edges.items())},
        "edge_type_histogram": dg.MetadataValue.md("\n".join(["| edge type | count |", "|---|---:|",
                                                              *(f"| {k} | {v} |" for k, v in sorted(edges.items()))])),
        **({"sample_graph": png_markdown(sample_graph_png(sample), sample["name"])} if sample else {}),
        "path": dg.MetadataValue.path(str(pub.path)), **skip_metadata(skipped),
    }, data_version=dg.DataVersion(pub.data_version), check_results=[leak_check("asg_corpus", rows)])


@dg.asset(group_name=GROUP, partitions_def=language_slices, deps=[asg_corpus], kinds={"python", "parquet", "duckdb"},
          check_specs=[leak_check_spec("repair_dataset")],
          description="Corruptions graded by noise (low 5%, mid 15%, high 30% of nodes): substitution, masking, "
                      "masked conditions, sibling swaps, subtree deletion. Rows inherit their function's split and "
                      "group key: train functions get several rows, dev and test ones one row per level; the clean "
                      "graph is kept on every row.", op_tags=DATA_STEP)
def repair_dataset(context: dg.AssetExecutionContext, config: RepairDatasetConfig, artifacts: ArtifactStore,
                   catalog: DuckDBCatalog) -> dg.MaterializeResult:
    from ml.graph_repair.rows import repair_rows

    language = context.partition_key
    graphs, entry = read_upstream(catalog, "asg_corpus", language)
    rows = repair_rows(graphs, config.corruptions_per_graph, config.seed)
    pub = publish_rows(context, store=artifacts, catalog=catalog, rows=rows, schema=REPAIR_DATASET, skipped={},
                       upstream={"asg_corpus": entry["data_version"]})
    by = Counter((r["split"], r["noise"]) for r in rows)
    ops = Counter(op for r in rows for op in r["ops"])
    return dg.MaterializeResult(metadata={
        "rows": len(rows), **{f"rows_{s}_{n}": dg.MetadataValue.int(v) for (s, n), v in sorted(by.items())},
        **{f"ops_{k}": dg.MetadataValue.int(v) for k, v in sorted(ops.items())},
        "corrupted_fraction_mean": sum(r["n_corrupted"] / r["n_nodes"] for r in rows) / max(1, len(rows)),
        "path": dg.MetadataValue.path(str(pub.path)),
    }, data_version=dg.DataVersion(pub.data_version), check_results=[leak_check("repair_dataset", rows)])


def _train(context: dg.AssetExecutionContext, kind: str, config: DenoiserConfig, artifacts: ArtifactStore,
           catalog: DuckDBCatalog, compute: ComputeResource, extra_upstream: dict[str, str],
           target_params: int | None = None) -> dg.MaterializeResult:
    from ml.graph_repair.recipe import fit_denoiser
    from ml.graph_repair.training import TrainSettings, save_denoiser
    from ml.plots import line_plot

    language = context.partition_key
    rows, entry = read_upstream(catalog, "repair_dataset", language)
    train = [r for r in rows if r["split"] == "train"]
    if not train:
        raise dg.Failure(f"{kind}[{language}]: repair_dataset has no training rows")
    settings = TrainSettings(steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                             clean_weight=config.clean_weight, seed=config.seed)
    fitted = fit_denoiser(kind, train, settings, hidden=config.hidden, depth=config.depth,
                          max_vocab=config.max_vocab, target_params=target_params, device=compute.plan().device,
                          log=lambda m: context.log.info(f"{kind}[{language}] {m}"), language=language)
    model, vocab, priors, params, stats = fitted.model, fitted.vocab, fitted.priors, fitted.params, fitted.stats
    curve = stats.pop("loss_curve")
    meta = {**stats, "params": params, "steps": config.steps, "batch_size": config.batch_size,
            "train_rows": len(train)}
    path = publish_folder(context, store=artifacts, catalog=catalog, rows=len(train),
                          build=lambda tmp: save_denoiser(tmp, kind, model.cpu(), vocab, priors, meta),
                          upstream={"repair_dataset": entry["data_version"], **extra_upstream}).path
    catalog.write_training_curve(asset_key=context.asset_key.to_user_string(), partition=language,
                                 run_id=context.run_id,
                                 points=[(i + 1, "loss", v) for i, v in enumerate(curve)])
    plot = line_plot({"loss": list(enumerate(curve, 1))}, f"{kind} [{language}]", "step", "weighted cross-entropy")
    return dg.MaterializeResult(metadata={
        "parameters": params, "train_s": round(stats["train_s"], 1), "final_loss": round(stats["final_loss"], 4),
        "vocab_size": len(vocab), "loss_curve": png_markdown(plot, "loss"), "path": dg.MetadataValue.path(str(path)),
    })


@dg.asset(group_name=GROUP, partitions_def=language_slices, deps=[repair_dataset], pool="gpu",
          kinds={"pytorch", "pyg"}, op_tags=TRAINING_STEP,
          description="Graph U-Net denoiser (PyTorch Geometric): GAT blocks over typed edges, TopKPooling to a "
                      "coarse graph, a bottleneck, unpooling with skips; predicts every node's label.")
def graph_unet_model(context: dg.AssetExecutionContext, config: DenoiserConfig, artifacts: ArtifactStore,
                     catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    return _train(context, "graph_unet", config, artifacts, catalog, compute, {})


@dg.asset(group_name=GROUP, partitions_def=language_slices, deps=[repair_dataset, graph_unet_model], pool="gpu",
          kinds={"pytorch"}, op_tags=TRAINING_STEP,
          description="A Transformer of the Graph U-Net's parameter count (within 10%) over the same trees as "
                      "sequences (one token per node in pre-order, <end> closing each node with children), trained "
                      "on the same rows for the same steps.")
def transformer_baseline(context: dg.AssetExecutionContext, config: DenoiserConfig, artifacts: ArtifactStore,
                         catalog: DuckDBCatalog, compute: ComputeResource) -> dg.MaterializeResult:
    language = context.partition_key
    graph_model = catalog.require_artifact("graph_unet_model", language)
    target = json.loads((Path(graph_model["path"]) / "model.json").read_text())["params"]
    return _train(context, "transformer", config, artifacts, catalog, compute,
                  {"graph_unet_model": graph_model["data_version"]}, target_params=target)


@dg.asset(group_name=GROUP, partitions_def=language_slices, deps=[graph_unet_model, transformer_baseline],
          kinds={"pytorch", "markdown"}, automation_condition=dg.AutomationCondition.eager(), op_tags=MODEL_STEP,
          description="Test-split repair per noise level, every figure with its n and 95% interval: node "
                      "accuracy on corrupted nodes, exact repair, validity (decodes and compiles; JavaScript and Java: "
                      "re-parses to the same tree) for the Graph U-Net, the Transformer and the slot-frequency "
                      "baseline; one-shot and iterative, grammar mask on and off, the Z3 check (Python); Graph "
                      "U-Net minus Transformer as paired differences; the relabel threshold chosen on dev; report "
                      "and plot.")
def graph_repair_eval(context: dg.AssetExecutionContext, config: GraphRepairEvalConfig, artifacts: ArtifactStore,
                      catalog: DuckDBCatalog) -> dg.MaterializeResult:
    import pyarrow as pa

    from ml.graph_repair.evaluation import (
        evaluate_models,
        example_rows,
        graph_repair_metrics,
        paired_differences,
        trained_vs_baseline,
    )
    from ml.graph_repair.report import HEADLINE, exact_plot, graph_repair_report, result_rows
    from ml.graph_repair.training import load_denoiser
    from ml.splits import split_counts
    from ml.stats import metadata_text, write_metrics_files

    language = context.partition_key
    rows, entry = read_upstream(catalog, "repair_dataset", language)
    dev, test = [r for r in rows if r["split"] == "dev"], [r for r in rows if r["split"] == "test"]
    if not test:
        raise dg.Failure(f"graph_repair_eval[{language}]: repair_dataset has no test rows")
    models, sizes, upstream = {}, {}, {"repair_dataset": entry["data_version"]}
    for asset, kind in (("graph_unet_model", "graph_unet"), ("transformer_baseline", "transformer")):
        art = catalog.require_artifact(asset, language)
        upstream[asset] = art["data_version"]
        try:
            model, vocab, priors, meta = load_denoiser(Path(art["path"]))
        except ValueError as exc:
            raise dg.Failure(f"graph_repair_eval[{language}]: {asset}: {exc}") from exc
        models[kind] = (model, vocab, priors)
        sizes[kind] = {"params": meta["params"], "steps": meta["steps"], "train_s": meta["train_s"]}
    results, tuning = evaluate_models(models, dev, test, thresholds=config.relabel_thresholds,
                                      diffusion_steps=config.diffusion_steps, z3_tries=config.z3_tries,
                                      log=context.log.info)
    differences = paired_differences(results)
    vs_baseline = trained_vs_baseline(results)
    metrics = graph_repair_metrics(results, differences, tuning, vs_baseline)
    # the relabel thresholds are knobs chosen on dev (in the report and the metadata), not measurements
    catalog.write_metrics(asset_key="graph_repair_eval", partition=language, run_id=context.run_id,
                          metrics={k: v for k, v in metrics.items() if not k.endswith("_relabel_threshold")})
    functions = split_counts(r["split"] for r in {r["unit_id"]: r for r in rows}.values())
    report = graph_repair_report(language, results, sizes, differences, tuning, functions, vs_baseline)
    plot = exact_plot({k: v for k, v in results.items() if k != "slot_frequency"})
    flat = result_rows(results)

    def build(tmp: Path) -> None:
        pq.write_table(to_table(flat, GRAPH_REPAIR_RESULTS), tmp / "rows.parquet", compression="zstd")
        pq.write_table(pa.Table.from_pylist(example_rows(results)), tmp / "examples.parquet", compression="zstd")
        (tmp / "report.md").write_text(report)
        (tmp / "exact_vs_noise.png").write_bytes(plot)
        write_metrics_files(tmp, metrics)

    path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=len(flat),
                          table="graph_repair_results", upstream=upstream).path
    headline = metadata_text({f"{m}_exact_{lv}": results[m][lv][HEADLINE]["exact"]
                              for m in results for lv in ("low", "mid", "high")})
    headline |= metadata_text({f"diff_graph_unet_vs_transformer_exact_{lv}": differences[(HEADLINE, lv)]
                               for lv in ("low", "mid", "high")})
    return dg.MaterializeResult(metadata={
        **headline, "valid_rate_masked": str(results["graph_unet"]["mid"][HEADLINE]["valid"]),
        **{f"{m}_relabel_threshold": float(t["threshold"]) for m, t in tuning.items()},
        "test_rows": len(test), "dev_rows": len(dev), "report": report_markdown(report, path),
        "exact_vs_noise": png_markdown(plot, "exact repair against noise"),
        "path": dg.MetadataValue.path(str(path / "report.md")),
    })


GRAPH_REPAIR_ASSETS = [asg_corpus, repair_dataset, graph_unet_model, transformer_baseline, graph_repair_eval]
