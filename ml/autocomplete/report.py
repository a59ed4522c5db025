"""The autocomplete report: the M0 / M1 / M2 table per evaluation set, a plot, and sample completions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ml.plots import grouped_bars
from ml.reports import markdown_table

MODEL_NAMES = {"m0": "M0 base", "m1": "M1 stage A", "m2": "M2 stage B"}
SETS = ("generic", "domain", "humaneval")
METRICS = ("exact_match", "edit_similarity", "syntax_valid_rate", "syntax_valid_rate_truncated", "pass_at_1",
           "latency_ms_p50", "latency_ms_p95", "tokens_per_s")


def metrics_table(metrics: Mapping[str, float]) -> str:
    rows = []
    for s in SETS:
        for m in METRICS:
            cells = {k: metrics.get(f"{k}_{s}_{m}") for k in MODEL_NAMES}
            if all(v is None for v in cells.values()):
                continue
            rows.append({"set": s, "metric": m,
                         **{MODEL_NAMES[k]: "–" if v is None else f"{v:.3f}" for k, v in cells.items()}})
    return markdown_table(rows, ["set", "metric", *MODEL_NAMES.values()])


def exact_match_plot(metrics: Mapping[str, float]) -> bytes:
    values = {s: {MODEL_NAMES[k]: metrics.get(f"{k}_{s}_exact_match", 0.0) for k in MODEL_NAMES} for s in SETS}
    return grouped_bars(values, "single-line infilling: exact match", "exact match")


def autocomplete_report(metrics: Mapping[str, float], results: Sequence[Mapping], set_sizes: Mapping[str, int]) -> str:
    samples = [r for r in results if r["model"] == "m2" and r["set"] == "generic"][:5]
    lines = [
        "# Autocomplete: base (M0) vs Stage A (M1) vs Stage B (M2)", "",
        "Single-line infilling, PSM prompts, greedy, batch 1 (an editor's request): "
        + ", ".join(f"{s} {n} tasks" for s, n in set_sizes.items())
        + ". `_truncated`: after syntax-aware truncation (the shortest line-cut of the middle that parses). "
        "HumanEval pass@1 runs each problem's tests on the truncated middle in the sandbox.", "",
        metrics_table(metrics), "", "![exact match](exact_match.png)", "", "## Samples (M2, generic)", "",
    ]
    for r in samples:
        verdict = "exact" if r["exact_match"] else f"edit similarity {r['edit_similarity']:.2f}"
        lines += [f"- `{r['id']}` expected `{r['expected'].strip()}` got `{r['truncated'].strip()}` ({verdict})"]
    return "\n".join(lines) + "\n"
