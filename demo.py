"""`make demo`: materialize the default asset graphs (AST-first per language slice, the DSL group, autocomplete,
srl and graph repair on the python slice), then summarize.

The screen gets a line per step (its time and the asset's key figure), a bar on long steps, then the summary. Runs
go to the Dagster instance in $DAGSTER_HOME (the Makefile sets `.dagster/`), so `make ui` shows them with their
logs, metadata and lineage; every log line, DEBUG included, also goes to a log file the demo names.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, redirect_stdout
from pathlib import Path
from typing import TextIO

# No per-row progress bars from datasets / transformers, even in the log file: the run logs keep the progress lines
# each asset writes.
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import dagster as dg  # noqa: E402

from definitions import defs  # noqa: E402
from jobs.console import StepLines  # noqa: E402
from ml.languages import SLICES  # noqa: E402
from resources import DuckDBCatalog  # noqa: E402
from resources.recovery import recover_dead_runs  # noqa: E402
from resources.settings import astforge_home  # noqa: E402

# The per-row datasets, whose row counts per slice the summary tabulates (models and reports have their step lines).
DATASETS = ("source_files", "code_units", "ast_corpus", "nl_ast_pairs", "fim_samples", "domain_corpus", "dsl_queries",
            "dsl_dataset", "dsl_training_corpus", "srl_tasks", "srl_teacher_traces", "asg_corpus", "repair_dataset")
DSL_HEADLINE = ("schema_valid_rate", "semantic_pass_rate", "exact_match_rate_constrained", "comparison_f1_constrained",
                "semantic_pass_rate_constrained", "heldout_schema_valid_rate", "heldout_comparison_f1_constrained",
                "heldout_semantic_pass_rate_constrained")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", nargs="*", default=SLICES, help="language slices (default: all)")
    parser.add_argument("--data-only", action="store_true", help="skip training and evaluation")
    groups = ["ast_first", "dsl", "autocomplete", "srl", "graph_repair"]
    parser.add_argument("--groups", nargs="*", default=groups, choices=groups,
                        help="asset groups to run (default: all)")
    parser.add_argument("--verbose", action="store_true",
                        help="Dagster's INFO log on the console instead of a line per step (the log file and the "
                             "UI have every line either way)")
    parser.add_argument("--log-file", type=Path, default=None,
                        help="where the full log goes (default: $ASTFORGE_HOME/logs/demo-<time>.log)")
    args = parser.parse_args(argv)
    log_file = args.log_file or astforge_home() / "logs" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.log"
    if args.verbose:
        return Demo(args, sys.stdout, None).main()
    with quiet_console(log_file) as screen:
        return Demo(args, screen, log_file).main()


@contextmanager
def quiet_console(log_file: Path) -> Iterator[TextIO]:
    """Everything written to file descriptors 1 and 2 (Dagster's console logger, libraries' warnings and bars,
    subprocesses such as llama.cpp's converter) goes to ``log_file``; the stream returned is the terminal."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "a", buffering=1, encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        screen = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8")
        try:
            yield screen
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            screen.close()


class Demo:
    def __init__(self, args: argparse.Namespace, screen: TextIO, log_file: Path | None) -> None:
        self.args, self.screen, self.log_file = args, screen, log_file
        self.failed: list[str] = []
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        self.screen.write(text + "\n")
        self.screen.flush()

    def run(self, job_name: str, language: str | None, assets: list[str] | None = None) -> bool:
        start = time.monotonic()
        label = f"{job_name} [{language or ', '.join(assets or [])}]" if language or assets else job_name
        run_id = str(uuid.uuid4())
        quiet = self.log_file is not None
        self.say(f"[astforge] {label}" + ("" if quiet else " ..."))
        job = defs.resolve_job_def(job_name)
        # Quiet: Dagster's console logger writes every event, DEBUG included, into the log file.
        run_config = {"loggers": {"console": {"config": {"log_level": "DEBUG" if quiet else "INFO"}}}}
        lines = StepLines(self.instance, run_id, self.screen) if quiet else nullcontext()
        with lines:
            result = job.execute_in_process(
                partition_key=language, instance=self.instance, raise_on_error=False, run_config=run_config,
                asset_selection=[dg.AssetKey(a) for a in assets] if assets else None, run_id=run_id,
            )
        took = time.monotonic() - start
        if not quiet:
            self.say(f"[astforge] {label} {'ok' if result.success else 'FAILED'} in {took:.0f}s, peak memory so "
                     f"far {peak_memory_gib():.1f} GiB (run {run_id})")
        elif not result.success:
            self.say(f"[astforge] {label} FAILED in {took:.0f}s (run {run_id}; its log: the UI, or {self.log_file})")
        if not result.success:
            self.failed.append(label)
        return result.success

    def main(self) -> int:
        args, run = self.args, self.run
        quiet_progress_bars()
        self.instance = instance = dg.DagsterInstance.get()
        # execute_in_process skips the Definitions' executor, so its dead-run check runs here: a demo killed
        # earlier (Ctrl-C, out of memory) must not hold the gpu pool's slot.
        for dead in recover_dead_runs(instance):
            self.say(f"[astforge] {dead.message()}")
        if self.log_file:
            self.say(f"[astforge] a line per step; the full log: {self.log_file}")
        catalog = DuckDBCatalog()

        if not args.data_only:
            # The packaged pretrained base (smollm2-135m), converted once; later runs find it done in a second.
            run("models_job", None)

        for language in args.slices if "ast_first" in args.groups else []:
            if not run("ast_data_job", language) or args.data_only:
                continue
            entry = catalog.latest_artifact("ast_corpus", language)
            if not entry or not entry["rows"]:
                print(f"[astforge] {language}: no AST rows, so no training for this slice", flush=True)
                continue
            run("ast_model_job", language)

        if "dsl" in args.groups and not args.data_only:
            run("dsl_job", None)

        if "autocomplete" in args.groups:
            # Stage A trains on the python slice's FIM rows (its default `languages`); the domain is AWS CDK (Python).
            if "ast_first" not in args.groups:
                run("ast_data_job", "python")
            if run("autocomplete_data_job", "python") and not args.data_only and run("autocomplete_job", None):
                # M2 as GGUF for llama.cpp / Ollama (gguf_export_job also exports M1 and the DSL student)
                run("gguf_export_job", None, ["autocomplete_stage_b_gguf"])

        if "srl" in args.groups:
            # ast-grep rewrites on the python slice's code units (the corpus job above made them)
            if "ast_first" not in args.groups and "autocomplete" not in args.groups:
                run("ast_data_job", "python")
            if not args.data_only:
                run("srl_job", "python")

        if "graph_repair" in args.groups and not args.data_only:
            # graphs of the python slice's code units; the Graph U-Net against a Transformer of its size
            if not {"ast_first", "autocomplete", "srl"} & set(args.groups):
                run("ast_data_job", "python")
            run("graph_repair_job", "python")

        with redirect_stdout(self.screen):  # the summary is the demo's own output, on the screen either way
            return self.summary(instance, catalog)

    def summary(self, instance: dg.DagsterInstance, catalog: DuckDBCatalog) -> int:
        rows = catalog.query(
            """SELECT asset_key, partition, arg_max(rows, created_at) AS rows
               FROM artifacts GROUP BY ALL ORDER BY asset_key, partition"""
        )
        if any(r["asset_key"] == "ast_eval" for r in rows):
            evals = catalog.query(
                """SELECT metric, partition, arg_max(value, created_at) AS value FROM eval_metrics
                   WHERE asset_key = 'ast_eval' GROUP BY ALL ORDER BY metric"""
            )
            print_pivot("Evaluation (ast_eval, latest per slice)",
                        [(e["metric"], e["partition"], e["value"]) for e in evals])
        dsl_metrics = catalog.query(
            """SELECT asset_key, metric, arg_max(value, created_at) AS value FROM eval_metrics
               WHERE asset_key IN ('dsl_base_eval', 'dsl_sft_eval', 'dsl_dpo_eval')
               GROUP BY ALL ORDER BY metric, asset_key"""
        )
        if dsl_metrics:
            print("\nDSL student (seen domains; heldout_ = domains never trained on; every metric in the report):")
            table: dict[str, dict[str, float]] = {}
            for m in (m for m in dsl_metrics if m["metric"] in DSL_HEADLINE):
                table.setdefault(m["metric"], {})[m["asset_key"]] = m["value"]
            print(f"  {'metric':<44} {'base':>7} {'SFT':>7} {'DPO':>7}")
            for metric, v in table.items():
                cells = [f"{v[a]:>7.3f}" if a in v else f"{'–':>7}"
                         for a in ("dsl_base_eval", "dsl_sft_eval", "dsl_dpo_eval")]
                print(f"  {metric:<44} {' '.join(cells)}")
            report = catalog.latest_artifact("dsl_report", "all")
            if report:
                print(f"  report: {report['path']}/report.md")
        autocomplete = catalog.latest_artifact("autocomplete_eval", "all")
        if autocomplete:
            print_autocomplete(catalog, autocomplete["path"])
        gguf = catalog.latest_artifact("autocomplete_stage_b_gguf", "all")
        if gguf:
            print_gguf(gguf["path"])
        print_srl(catalog)
        print_graph_repair(catalog)
        datasets = [(r["asset_key"], r["partition"], r["rows"]) for r in rows if r["asset_key"] in DATASETS]
        if datasets:
            print_pivot("Datasets (rows from the catalog; one column per slice, `all` = unpartitioned)", datasets)
        [skips] = catalog.query("SELECT coalesce(sum(count), 0) AS n, count(DISTINCT asset_key) AS assets "
                                "FROM skipped_inputs WHERE count > 0")
        if skips["n"]:
            print(f"  skipped inputs: {int(skips['n']):,} in {skips['assets']} assets, by reason: "
                  "SELECT * FROM skipped_inputs")
        print(f"\nCatalog: {catalog.location}")
        if catalog.backend == "duckdb":
            print(f"  query it: .venv/bin/python -c \"import duckdb; print(duckdb.connect('{catalog.db_path}', "
                  "read_only=True).sql('SELECT * FROM artifacts'))\"")
        else:
            print("  query it with psql, or with DuckDB after: .venv/bin/python -m resources.catalog_export --to "
                  "catalog.duckdb")
        print(f"Dagster instance: {instance.root_directory}")
        print("Open the UI with: make ui   (http://127.0.0.1:3000)")
        print(f"Took {(time.monotonic() - self.started) / 60:.1f} min, peak memory {peak_memory_gib():.1f} GiB"
              + (f"; the full log: {self.log_file}" if self.log_file else ""))
        if self.failed:
            print(f"\nFailed: {', '.join(self.failed)}")
            return 1
        return 0


def peak_memory_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def print_pivot(title: str, cells: list[tuple[str, str, float]]) -> None:
    """One line per row key, one column per slice: a summary that fits a screen."""
    columns = [c for c in (*SLICES, "all") if any(p == c for _, p, _ in cells)]
    table: dict[str, dict[str, int]] = {}
    for key, partition, n in cells:
        table.setdefault(key, {})[partition] = n
    width = max((len(k) for k in table), default=10)
    print(f"\n{title}:")
    print(f"  {'':<{width}} " + " ".join(f"{c:>10}" for c in columns))
    for key, values in table.items():
        print(f"  {key:<{width}} " + " ".join(_cell(values.get(c)) for c in columns))


def _cell(value: float | None) -> str:
    if value is None:
        return f"{'':>10}"
    return f"{value:>10}" if isinstance(value, int) else f"{value:>10.4f}"


def quiet_progress_bars() -> None:
    """Row-by-row bars (datasets' map, transformers' weight loading, the GGUF conversion) scroll the screen away;
    the assets log their own progress lines."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


def print_autocomplete(catalog: DuckDBCatalog, report_path: str) -> None:
    values = {m["metric"]: m["value"] for m in catalog.query(
        """SELECT metric, arg_max(value, created_at) AS value FROM eval_metrics
           WHERE asset_key = 'autocomplete_eval' GROUP BY ALL""")}
    print("\nAutocomplete (single-line infilling; M0 base, M1 stage A, M2 stage B):")
    print(f"  {'set / metric':<40} {'M0':>8} {'M1':>8} {'M2':>8}")
    for s in ("generic", "domain", "humaneval"):
        for metric in ("exact_match", "edit_similarity", "syntax_valid_rate_truncated", "pass_at_1", "latency_ms_p50"):
            cells = [values.get(f"{m}_{s}_{metric}") for m in ("m0", "m1", "m2")]
            if all(c is None for c in cells):
                continue
            shown = " ".join(f"{c:>8.3f}" if c is not None else f"{'–':>8}" for c in cells)
            print(f"  {s + ' ' + metric:<40} {shown}")
    print(f"  report: {report_path}/report.md")


def print_srl(catalog: DuckDBCatalog) -> None:
    from ml.srl.recipe import METRICS, POLICIES

    rows = catalog.query(
        """SELECT partition, metric, arg_max(value, created_at) AS value FROM eval_metrics
           WHERE asset_key = 'srl_eval' GROUP BY ALL""")
    for language in sorted({r["partition"] for r in rows}):
        values = {r["metric"]: r["value"] for r in rows if r["partition"] == language}
        print(f"\nSRL ast-grep rewrites ({language}; held-out rewrite families, never trained on):")
        print(f"  {'metric':<28} " + " ".join(f"{p:>8}" for p in POLICIES))
        for metric in METRICS:
            cells = [values.get(f"{p}_{metric}") for p in POLICIES]
            if all(c is None for c in cells):
                continue
            print(f"  {metric:<28} " + " ".join(f"{c:>8.3f}" if c is not None else f"{'–':>8}" for c in cells))
        report = catalog.latest_artifact("srl_eval", language)
        if report:
            print(f"  report: {report['path']}/report.md")


def print_graph_repair(catalog: DuckDBCatalog) -> None:
    rows = catalog.query(
        """SELECT partition, model, noise, procedure, exact, valid FROM graph_repair_results
           WHERE procedure IN ('one_shot_grammar', 'iterative_grammar')""") if catalog.query(
        "SELECT 1 FROM information_schema.tables WHERE table_name = 'graph_repair_results'") else []
    for language in sorted({r["partition"] for r in rows}):
        cell = {(r["model"], r["noise"], r["procedure"]): r for r in rows if r["partition"] == language}
        print(f"\nGraph repair ({language}; exact repair of held-out functions, grammar mask; valid = compiles):")
        print(f"  {'model':<30} {'low':>7} {'mid':>7} {'high':>7} {'valid':>7}")
        for model in ("slot_frequency", "transformer", "graph_unet"):
            for proc, tag in (("one_shot_grammar", "one-shot"), ("iterative_grammar", "iterative")):
                got = [cell.get((model, lv, proc)) for lv in ("low", "mid", "high")]
                if all(g is None for g in got):
                    continue
                shown = " ".join(f"{g['exact']:>7.3f}" if g else f"{'–':>7}" for g in got)
                print(f"  {model + ' ' + tag:<30} {shown} {min(g['valid'] for g in got if g):>7.3f}")
        report = catalog.latest_artifact("graph_repair_eval", language)
        if report:
            print(f"  report: {report['path']}/report.md")


def print_gguf(path: str) -> None:
    from ml.models.gguf_export import GgufExport

    export = GgufExport.load(path)
    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey("autocomplete_stage_b_gguf"))
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    print("\nM2 exported as GGUF (llama.cpp, Ollama). agreement: the check's prompts answered as transformers does;\n"
          "  speed: transformers' time / llama.cpp's on them (cold, prefill-bound; bench/serve.py: decode, typing)")
    for variant, file in export.files.items():
        agree, speed = meta.get(f"{variant}_agreement"), meta.get(f"{variant}_speedup_vs_hf")
        print(f"  {file:<22} {export.sizes_mb[variant]:>7.1f} MB   agreement {agree.value if agree else '–'}   "
              f"speed {speed.value if speed else '–'}x")
    print(f"  serve: .venv/bin/astforge-serve --backend llama_cpp   ollama: cd {path} && ollama create "
          "astforge-autocomplete -f Modelfile")


if __name__ == "__main__":
    sys.exit(main())
