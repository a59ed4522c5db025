"""The autocomplete report: the M0 / M1 / M2 table per evaluation set (each rate or mean with its 95% interval and
n), the paired differences between the models with the claim they allow, a plot, and sample completions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ml.plots import grouped_bars
from ml.reports import markdown_table
from ml.stats import Estimate, verdict

MODEL_NAMES = {"m0": "M0 base", "m1": "M1 stage A", "m2": "M2 stage B"}
SETS = ("generic", "domain", "humaneval")  # the python sets; other slices add generic_{slice} / domain_{slice}
METRICS = ("exact_match", "edit_similarity", "syntax_valid_rate", "syntax_valid_rate_truncated", "pass_at_1",
           "latency_ms_p50", "latency_ms_p95", "tokens_per_s")
Metrics = Mapping[str, "float | Estimate"]


def _cell(value: float | Estimate | None) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, Estimate) else f"{value:.3f}"


def _value(value: float | Estimate | None, default: float = 0.0) -> float:
    if value is None:
        return default
    return value.value if isinstance(value, Estimate) else float(value)


def set_names(metrics: Metrics) -> list[str]:
    """The evaluation sets ``metrics`` hold (``{model}_{set}_exact_match``), the python sets first."""
    found = {name[len(k) + 1: -len("_exact_match")] for name in metrics for k in MODEL_NAMES
             if name.startswith(k + "_") and name.endswith("_exact_match")}
    return [s for s in SETS if s in found] + sorted(found - set(SETS))


def metrics_table(metrics: Metrics) -> str:
    rows = []
    for s in set_names(metrics):
        for m in METRICS:
            cells = {k: metrics.get(f"{k}_{s}_{m}") for k in MODEL_NAMES}
            if all(v is None for v in cells.values()):
                continue
            rows.append({"set": s, "metric": m, **{MODEL_NAMES[k]: _cell(v) for k, v in cells.items()}})
    return markdown_table(rows, ["set", "metric", *MODEL_NAMES.values()])


def differences_table(metrics: Metrics) -> str:
    """One row per ``diff_{a}_vs_{b}_{set}_{metric}`` estimate: the difference a − b and what it allows a report
    to say ("beats" only when the interval excludes 0)."""
    rows = []
    for name, diff in metrics.items():
        if not (name.startswith("diff_") and isinstance(diff, Estimate)):
            continue
        a, _, rest = name[len("diff_"):].partition("_vs_")
        b, _, rest = rest.partition("_")
        # the set's name may hold underscores (generic_javascript), the compared metric is a known one
        metric = next((m for m in METRICS if rest.endswith("_" + m)), rest.rsplit("_", 1)[-1])
        set_name = rest[: -len(metric) - 1]
        better, worse = MODEL_NAMES.get(a, a), MODEL_NAMES.get(b, b)
        rows.append({"set": set_name, "metric": metric, "comparison": f"{better} − {worse}", "difference": str(diff),
                     "verdict": verdict(diff, better, worse)})
    order = set_names(metrics)
    rows.sort(key=lambda r: order.index(r["set"]) if r["set"] in order else len(order))  # stable: comparisons in order
    if not rows:
        return "No paired comparison (fewer than two models evaluated on the same tasks)."
    return markdown_table(rows, ["set", "metric", "comparison", "difference", "verdict"])


def exact_match_plot(metrics: Metrics) -> bytes:
    values = {s: {MODEL_NAMES[k]: _value(metrics.get(f"{k}_{s}_exact_match")) for k in MODEL_NAMES}
              for s in set_names(metrics)}
    return grouped_bars(values, "single-line infilling: exact match", "exact match")


def autocomplete_report(metrics: Metrics, results: Sequence[Mapping], set_sizes: Mapping[str, int],
                        split: str = "test") -> str:
    first = next(iter(set_sizes), "generic")
    samples = [r for r in results if r["model"] == "m2" and r["set"] == first][:5]
    lines = [
        "# Autocomplete: base (M0) vs Stage A (M1) vs Stage B (M2)", "",
        "Single-line infilling, PSM prompts, greedy, batch 1 (an editor's request): "
        + ", ".join(f"{s} {n} tasks" for s, n in set_sizes.items())
        + f"; generic and domain tasks from the `{split}` split (groups never trained on), HumanEval a seeded "
        "sample of its problems (evaluation only). `_truncated`: after syntax-aware truncation (the shortest "
        "line-cut of the middle that parses). HumanEval pass@1 runs each problem's tests on the truncated middle in "
        "the sandbox. Rates and means print as `value [95% interval] n=tasks` (Wilson for rates, bootstrap for "
        "edit similarity); latencies and tokens/s are plain measurements.", "",
        metrics_table(metrics), "",
        "## Paired differences", "",
        "Each model's per-task score minus the other's on the same tasks, mean and paired-bootstrap 95% interval. "
        "A model beats another only where the interval excludes 0.", "",
        differences_table(metrics), "",
        "![exact match](exact_match.png)", "", f"## Samples (M2, {first})", "",
    ]
    for r in samples:
        outcome = "exact" if r["exact_match"] else f"edit similarity {r['edit_similarity']:.2f}"
        lines += [f"- `{r['id']}` expected `{r['expected'].strip()}` got `{r['truncated'].strip()}` ({outcome})"]
    return "\n".join(lines) + "\n"
