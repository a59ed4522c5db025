"""`make demo`: materialize the default asset graphs (AST-first per language slice, the DSL group, autocomplete,
srl and graph repair on the python slice), then summarize.

The screen gets a line per step (its time and the asset's key figure), a bar on long steps, then the summary. Runs
go to the Dagster instance in $DAGSTER_HOME (the Makefile sets `.dagster/`), so `make ui` shows them with their
logs, metadata and lineage; every log line, DEBUG included, also goes to a log file the demo names.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
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

if __name__ == "__main__":
    # glibc's malloc reads its tunables at start: restart once with the ones that keep training's resident memory
    # bounded (ml/memory.py; bench/memory_growth.py: SmolLM2 LoRA, 30 steps of varying shape, peak 3.8 -> 1.7 GB)
    from ml.memory import reexec_with_bounded_malloc

    reexec_with_bounded_malloc()

import dagster as dg  # noqa: E402

from definitions import defs  # noqa: E402
from jobs.console import StepLines  # noqa: E402
from ml.languages import SLICES  # noqa: E402
from resources import DuckDBCatalog  # noqa: E402
from resources.recovery import recover_dead_runs  # noqa: E402
from resources.settings import astforge_home  # noqa: E402

# The slices' datasets, whose rows per slice the summary tabulates (the others: their step lines, the UI).
DATASETS = ("source_files", "code_units", "ast_corpus", "nl_ast_pairs")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CHILD_FLAG]:
        return execute_job(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", nargs="*", default=SLICES, help="language slices (default: all)")
    parser.add_argument("--data-only", action="store_true", help="skip training and evaluation")
    parser.add_argument("--train-slices", nargs="*", default=["python"], choices=SLICES,
                        help="the slices the autocomplete, srl and graph_repair groups train and evaluate on "
                             "(default: python; the other slices of --slices get their datasets and leak checks)")
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


# Each job runs in a process of its own, which this one waits for: what a job's models and tensors leave in the
# allocator goes back to the OS when its process ends, so the demo's peak is its largest job's, not the sum of all
# (one process for everything: 6.2 GB by the fifth job; bench/memory_growth.py measures a single training's growth).
CHILD_FLAG = "--execute-job"
# Dagster's implicit job of every asset: a run of a selection of partitioned assets from several groups
ASSET_SELECTION_JOB = "__ASSET_JOB"
# Per group, the partitioned datasets (each with its blocking leak check) that the demo trains on the python slice
# only; made on the other slices too (see DemoRunner.main).
SLICE_DATASETS = {"autocomplete": ["fim_samples", "domain_corpus"], "srl": ["srl_tasks", "srl_teacher_traces"],
                  "graph_repair": ["asg_corpus", "repair_dataset"]}


def run_job_in_child(job_name: str, partition: str | None, assets: list[str] | None, run_id: str,
                     log_level: str, ops: dict | None = None) -> tuple[bool, float]:
    """Run ``job_name`` as run ``run_id`` of the shared Dagster instance in a child process; its success and peak
    resident memory in GiB. The child writes to this process's stdout/stderr (the log file when quiet)."""
    command = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, "--job", job_name, "--run-id", run_id,
               "--log-level", log_level, "--parent", str(os.getpid())]
    if partition:
        command += ["--partition", partition]
    if assets:
        command += ["--assets", *assets]
    if ops:
        command += ["--ops", json.dumps(ops)]
    sys.stdout.flush()
    sys.stderr.flush()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode == 0, usage.ru_maxrss / 2**20  # KiB on Linux


def execute_job(argv: list[str]) -> int:
    """The child's side of :func:`run_job_in_child`."""
    parser = argparse.ArgumentParser(prog=f"demo.py {CHILD_FLAG}")
    parser.add_argument("--job", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--assets", nargs="*", default=None)
    parser.add_argument("--parent", type=int, default=None)
    parser.add_argument("--ops", default=None, help="the run config's ops, as JSON")
    args = parser.parse_args(argv)
    end_with_parent(args.parent)
    quiet_progress_bars()
    run_config = {"loggers": {"console": {"config": {"log_level": args.log_level}}}}
    if args.ops:
        run_config["ops"] = json.loads(args.ops)
    job = (defs.resolve_implicit_global_asset_job_def() if args.job == ASSET_SELECTION_JOB
           else defs.resolve_job_def(args.job))
    result = job.execute_in_process(
        partition_key=args.partition, instance=dg.DagsterInstance.get(), raise_on_error=False, run_config=run_config,
        asset_selection=[dg.AssetKey(a) for a in args.assets] if args.assets else None, run_id=args.run_id,
    )
    return 0 if result.success else 1


def end_with_parent(parent: int | None) -> None:
    """A job's process ends when the demo does, however the demo ends (Ctrl-C reaches both; a kill of the demo alone
    would leave the job training on): Linux's parent-death signal."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if parent is not None and os.getppid() != parent:  # the demo ended before the signal was armed
        sys.exit(1)


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
        self.job_peaks: dict[str, float] = {}  # GiB, each job's process
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        self.screen.write(text + "\n")
        self.screen.flush()

    def run(self, job_name: str, language: str | None, assets: list[str] | None = None,
            ops: dict | None = None) -> bool:
        start = time.monotonic()
        name = "data and split checks" if job_name == ASSET_SELECTION_JOB else job_name
        label = f"{name} [{language or ', '.join(assets or [])}]" if language or assets else name
        run_id = str(uuid.uuid4())
        quiet = self.log_file is not None
        self.say(f"[astforge] {label}" + ("" if quiet else " ..."))
        lines = StepLines(self.instance, run_id, self.screen) if quiet else nullcontext()
        with lines:
            success, job_peak = run_job_in_child(job_name, language, assets, run_id, "DEBUG" if quiet else "INFO",
                                                 ops)
        self.job_peaks[label] = job_peak
        took = time.monotonic() - start
        if not quiet:
            self.say(f"[astforge] {label} {'ok' if success else 'FAILED'} in {took:.0f}s, peak memory "
                     f"{job_peak:.1f} GiB (run {run_id})")
        elif success:
            # On a terminal a finished job keeps one line (its steps were shown while it ran): the screen ends
            # with the summary, not with a scroll of steps. A pipe or a CI log keeps every step line.
            last = next(((step, figures) for step, figures in reversed(lines.done) if figures), None)
            shown = f"  {last[0]}: {last[1]}" if last else ""
            steps = f"{len(lines.done)} step{'s' if len(lines.done) != 1 else ''}"
            lines.fold(f"[astforge] ✓ {label:<30} {took:>4.0f}s {job_peak:>4.1f} GiB {steps:>8}{shown}",
                       rows_above=1)
        else:
            self.say(f"[astforge] {label} FAILED in {took:.0f}s (run {run_id}; its log: the UI, or {self.log_file})")
        if not success:
            self.failed.append(label)
        return success

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

        trained = [s for s in args.slices if s in args.train_slices]
        if "autocomplete" in args.groups:
            # Stage A trains on the FIM rows of the trained slices (the demo: python), Stage B on their domain slices
            # (AWS CDK's examples in the slice's language); the evaluation reports each slice's two sets
            languages = {"config": {"languages": trained}}
            ops = {op: languages for op in ("autocomplete_base_model", "autocomplete_stage_a_adapter",
                                            "autocomplete_eval")}
            for language in trained if "ast_first" not in args.groups else []:
                run("ast_data_job", language)
            data = [run("autocomplete_data_job", language) for language in trained]
            if trained and all(data) and not args.data_only and run("autocomplete_job", None, ops=ops):
                # M2 as GGUF for llama.cpp / Ollama (gguf_export_job also exports M1 and the DSL student)
                run("gguf_export_job", None, ["autocomplete_stage_b_gguf"])

        for language in trained if {"srl", "graph_repair"} & set(args.groups) else []:
            # both read the slice's code units (the corpus job above made them)
            if not {"ast_first", "autocomplete"} & set(args.groups):
                run("ast_data_job", language)
            if "srl" in args.groups and not args.data_only:
                run("srl_job", language)  # ast-grep rewrites of the slice's code
            if "graph_repair" in args.groups and not args.data_only:
                run("graph_repair_job", language)  # the Graph U-Net against a Transformer of its size

        # The groups above train on the trained slices (python by default); their datasets (and the blocking leak
        # checks that run with them) are made on every other slice too, so a split that lets a test item's
        # near-duplicate into train fails the demo on any slice. About 1 min per slice.
        slice_data = [a for group, assets in SLICE_DATASETS.items() if group in args.groups for a in assets]
        for language in [s for s in args.slices if s not in trained] if slice_data else []:
            if "ast_first" in args.groups and catalog.latest_artifact("code_units", language):
                run(ASSET_SELECTION_JOB, language, slice_data)

        with redirect_stdout(self.screen):  # the summary is the demo's own output, on the screen either way
            return self.summary(instance, catalog)

    def summary(self, instance: dg.DagsterInstance, catalog: DuckDBCatalog) -> int:
        """Each group's base against its trained models on a few headline metrics (every metric: the reports, the
        UI, ``eval_metrics``), the datasets' rows per slice, and where everything is: about half a screen."""
        latest = """SELECT asset_key, partition, metric, arg_max(value, created_at) AS value FROM eval_metrics
                    WHERE asset_key IN ({}) GROUP BY ALL"""
        metrics: dict[tuple[str, str, str], float] = {}
        assets = {a for _, columns, _ in HEADLINES.values() for a, _ in columns.values()} | {"ast_eval"}
        for r in catalog.query(latest.format(", ".join(f"'{a}'" for a in sorted(assets)))):
            metrics[(r["asset_key"], r["partition"], r["metric"])] = r["value"]
        print("\nSummary (headline metrics; every metric: each evaluation's report, the UI, eval_metrics)")
        print_ast_eval(metrics)
        for title, (partition, columns, rows) in HEADLINES.items():
            table = {label: [metrics.get((asset, partition, f"{prefix}{metric}")) for asset, prefix in columns.values()]
                     for label, metric in rows.items()}
            if any(v is not None for values in table.values() for v in values):
                print_table(title, list(columns), table)
        print_graph_repair(catalog)
        print_comparisons(catalog)
        print_gguf(catalog)
        datasets = catalog.query(
            """SELECT asset_key, partition, arg_max(rows, created_at) AS rows FROM artifacts
               WHERE partition <> 'all' GROUP BY ALL ORDER BY asset_key, partition""")
        datasets = [(d["asset_key"], d["partition"], d["rows"]) for d in datasets if d["asset_key"] in DATASETS]
        if datasets:
            print_pivot("Datasets (rows per slice)", datasets)
        [skips] = catalog.query("SELECT coalesce(sum(count), 0) AS n, count(DISTINCT asset_key) AS assets "
                                "FROM skipped_inputs WHERE count > 0")
        if skips["n"]:
            print(f"  skipped inputs: {int(skips['n']):,} in {skips['assets']} assets (SELECT * FROM skipped_inputs)")
        reports = catalog.query(
            """SELECT asset_key, partition, arg_max(path, created_at) AS path FROM artifacts
               WHERE asset_key IN ('ast_eval', 'dsl_report', 'autocomplete_eval', 'srl_eval', 'graph_repair_eval')
               GROUP BY ALL ORDER BY asset_key, partition""")
        if reports:
            print(f"Reports (report.md in each folder; in the UI, each asset's `report`): "
                  f"{astforge_home() / 'artifacts'}/<asset>/<slice>/<version>/ for "
                  + ", ".join(sorted({r["asset_key"] for r in reports})))
        print(f"Catalog: {catalog.location}")
        if catalog.backend == "duckdb":
            print(f"  query it: .venv/bin/python -c \"import duckdb; print(duckdb.connect('{catalog.db_path}', "
                  "read_only=True).sql('SELECT * FROM artifacts'))\"")
        else:
            print("  query it with psql, or with DuckDB after: .venv/bin/python -m resources.catalog_export --to "
                  "catalog.duckdb")
        print(f"Dagster instance: {instance.root_directory}; open the UI with: make ui   (http://127.0.0.1:3000)")
        largest = max(self.job_peaks, key=self.job_peaks.get, default=None)
        print(f"Took {(time.monotonic() - self.started) / 60:.1f} min, peak memory {peak_memory_gib():.1f} GiB"
              + (f" (largest job: {largest}, {self.job_peaks[largest]:.1f} GiB)" if largest else "")
              + (f"; the full log: {self.log_file}" if self.log_file else ""))
        if self.failed:
            print(f"\nFailed: {', '.join(self.failed)}")
            return 1
        return 0


# title -> (partition, {column: (eval asset, metric prefix)}, {row label: metric}): the base and the trained models
HEADLINES: dict[str, tuple[str, dict[str, tuple[str, str]], dict[str, str]]] = {
    "DSL student (dsl_*_eval; schema-constrained decoding; held-out = domains never trained on)": (
        "all", {"base": ("dsl_base_eval", ""), "SFT": ("dsl_sft_eval", ""), "DPO": ("dsl_dpo_eval", "")}, {
            "semantic pass rate": "semantic_pass_rate_constrained",
            "comparison F1": "comparison_f1_constrained",
            "held-out semantic pass rate": "heldout_semantic_pass_rate_constrained",
            "held-out comparison F1": "heldout_comparison_f1_constrained"}),
    "Autocomplete (autocomplete_eval; M0 base, M1 stage A, M2 stage B; single-line infilling)": (
        "all", {m.upper(): ("autocomplete_eval", f"{m}_") for m in ("m0", "m1", "m2")}, {
            "generic edit similarity": "generic_edit_similarity",
            "domain (AWS CDK) exact match": "domain_exact_match",
            "domain edit similarity": "domain_edit_similarity",
            "HumanEval edit similarity": "humaneval_edit_similarity",
            "HumanEval pass@1": "humaneval_pass_at_1"}),
    "SRL ast-grep rewrites (srl_eval, python; test rewrite families)": (
        "python", {p: ("srl_eval", f"{p}_") for p in ("base", "warmup", "student")}, {
            "trace parse rate": "trace_parse_rate", "action fidelity": "action_fidelity",
            "execution success": "execution_success", "reward": "reward"}),
}
# Each group's trained model against its base (or the comparison the group exists for): the paired difference on
# the test split with its 95% interval, and the verdict it allows. (asset, partition or None for every slice, metric,
# label, better, worse, higher_is_better)
COMPARISONS = [
    ("ast_eval", None, "heldout_loss_reduction", "AST Phase 1 vs base: test loss reduction", "Phase 1", "base",
     True),
    ("dsl_report", "all", "sft_vs_base_semantic_pass_rate_constrained", "DSL SFT - base: semantic pass rate", "SFT",
     "base", True),
    ("dsl_report", "all", "dpo_vs_sft_semantic_pass_rate_constrained", "DSL DPO - SFT: semantic pass rate", "DPO",
     "SFT", True),
    ("autocomplete_eval", "all", "diff_m1_vs_m0_generic_edit_similarity", "autocomplete M1 - M0: generic edit sim.",
     "M1", "M0", True),
    ("autocomplete_eval", "all", "diff_m2_vs_m0_domain_edit_similarity", "autocomplete M2 - M0: domain edit sim.",
     "M2", "M0", True),
    ("autocomplete_eval", "all", "diff_m2_vs_m1_generic_edit_similarity", "autocomplete M2 - M1: generic edit sim.",
     "M2", "M1", True),
    # the other slices' sets, where the stages trained on them (demo.py --train-slices)
    *[("autocomplete_eval", "all", f"diff_{a}_vs_{b}_{kind}_{language}_edit_similarity",
       f"autocomplete {a.upper()} - {b.upper()}: {kind} {language}", a.upper(), b.upper(), True)
      for language in ("javascript", "java") for kind, a, b in (("generic", "m1", "m0"), ("domain", "m2", "m0"))],
    ("srl_eval", None, "student_minus_base_reward", "SRL student - base: reward", "student", "base", True),
    ("srl_eval", None, "student_minus_warmup_reward", "SRL GRPO - warm-up only: reward", "GRPO", "warm-up",
     True),
    ("graph_repair_eval", None, "diff_graph_unet_vs_slot_frequency_one_shot_grammar_exact_mid",
     "graph repair G-U-Net - slot freq.: exact, mid", "Graph U-Net", "slot frequency", True),
    ("graph_repair_eval", None, "diff_graph_unet_vs_transformer_one_shot_grammar_exact_mid",
     "graph repair G-U-Net - Transformer: exact, mid", "Graph U-Net", "Transformer", True),
]


def print_comparisons(catalog: DuckDBCatalog) -> None:
    from ml.stats import Estimate, verdict

    rows = catalog.query(
        """SELECT asset_key, partition, metric, arg_max(value, created_at) AS value, arg_max(n, created_at) AS n,
                  arg_max(ci_low, created_at) AS lo, arg_max(ci_high, created_at) AS hi
           FROM eval_metrics WHERE metric IN ({}) GROUP BY ALL ORDER BY partition""".format(
            ", ".join(f"'{c[2]}'" for c in COMPARISONS)))
    lines = []
    for asset, partition, metric, label, better, worse, higher in COMPARISONS:
        for r in rows:
            if r["asset_key"] != asset or r["metric"] != metric or (partition and r["partition"] != partition):
                continue
            if r["n"] is None or r["lo"] is None:
                continue
            diff = Estimate(r["value"], int(r["n"]), r["lo"], r["hi"], method="paired_bootstrap")
            where = f" ({r['partition']})" if partition is None else ""
            lines.append(f"  {label + where:<52} {r['value']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}] n={r['n']:<4} "
                         f"{verdict(diff, better, worse, higher_is_better=higher)}")
    if lines:
        print("Trained vs base (paired difference on the test split, 95% interval; 'beats' only when it excludes 0):")
        print("\n".join(lines))


# ast_eval per slice: the held-out loss before and after training, and the Phase 2 model's docstring -> AST
AST_HEADLINE = {"test loss, base": "heldout_loss_initial", "test loss, trained": "heldout_loss_final",
                "docstring -> AST valid": "nl2ast_valid_rate", "docstring -> AST tree similarity":
                "nl2ast_tree_similarity"}


def peak_memory_gib() -> float:
    """The largest resident set of this process and of any job's process (KiB on Linux)."""
    return max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 2**20


def print_table(title: str, columns: list[str], table: dict[str, list[float | None]]) -> None:
    width = max(len(label) for label in table)
    print(f"{title}:")
    print(f"  {'':<{width}} " + " ".join(f"{c:>8}" for c in columns))
    for label, values in table.items():
        print(f"  {label:<{width}} " + " ".join(f"{v:>8.3f}" if v is not None else f"{'–':>8}" for v in values))


def print_ast_eval(metrics: dict[tuple[str, str, str], float]) -> None:
    slices = [s for s in SLICES if any(k[:2] == ("ast_eval", s) for k in metrics)]
    if slices:
        print_table("AST-first (ast_eval, per slice)", slices,
                    {label: [metrics.get(("ast_eval", s, m)) for s in slices] for label, m in AST_HEADLINE.items()})


def print_pivot(title: str, cells: list[tuple[str, str, float]]) -> None:
    """One line per row key, one column per slice."""
    columns = [c for c in (*SLICES, "all") if any(p == c for _, p, _ in cells)]
    table: dict[str, dict[str, int]] = {}
    for key, partition, n in cells:
        table.setdefault(key, {})[partition] = n
    width = max((len(k) for k in table), default=10)
    print(f"{title}:")
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


def print_graph_repair(catalog: DuckDBCatalog) -> None:
    rows = catalog.query(
        """SELECT partition, model, noise, exact, valid FROM graph_repair_results
           WHERE procedure = 'one_shot_grammar'""") if catalog.query(
        "SELECT 1 FROM information_schema.tables WHERE table_name = 'graph_repair_results'") else []
    for language in sorted({r["partition"] for r in rows}):
        cell = {(r["model"], r["noise"]): r for r in rows if r["partition"] == language}
        table = {f"exact repair, {lv} noise": [cell[(m, lv)]["exact"] if (m, lv) in cell else None
                                               for m in ("slot_frequency", "transformer", "graph_unet")]
                 for lv in ("low", "mid", "high")}
        table["valid (compiles)"] = [min((r["valid"] for (m, _), r in cell.items() if m == model), default=None)
                                     for model in ("slot_frequency", "transformer", "graph_unet")]
        print_table(f"Graph repair (graph_repair_eval, {language}; one-shot, grammar mask; same-size models)",
                    ["slotfreq", "transf.", "g-unet"], table)


def print_gguf(catalog: DuckDBCatalog) -> None:
    from ml.models.gguf_export import GgufExport

    entry = catalog.latest_artifact("autocomplete_stage_b_gguf", "all")
    if not entry:
        return
    export = GgufExport.load(entry["path"])
    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey("autocomplete_stage_b_gguf"))
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    shown = []
    for variant, file in export.files.items():
        agree = meta.get(f"{variant}_agreement")
        shown.append(f"{file} {export.sizes_mb[variant]:.0f} MB, agreement {agree.value if agree else '–'}")
    print(f"M2 as GGUF (llama.cpp, Ollama; agreement: the check's prompts answered as transformers does): "
          f"{'; '.join(shown)}")
    print(f"  serve: .venv/bin/astforge-serve --backend llama_cpp   ollama: cd {entry['path']} && ollama create "
          "astforge-autocomplete -f Modelfile")


if __name__ == "__main__":
    sys.exit(main())
