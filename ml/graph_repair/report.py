"""The graph_repair report: both denoisers (and the slot-frequency baseline) per noise level and procedure on the
test split, every figure with its n and 95% interval; the Graph U-Net against the Transformer as paired
differences over the same test examples; the relabel threshold each model got on dev; the sizes and training
times, the Z3 rejections, and a plot of exact repair against noise."""

from __future__ import annotations

from collections.abc import Mapping

from ml.graph_repair.corrupt import NOISE_LEVELS
from ml.plots import _png, plt
from ml.reports import markdown_table
from ml.stats import Estimate, verdict

PROCEDURES = ("one_shot", "one_shot_grammar", "one_shot_grammar_z3", "iterative_grammar")
HEADLINE = "one_shot_grammar"  # the bench's and the summary's procedure
METRICS = ("node_accuracy", "exact", "valid")


def result_rows(results: Mapping[str, Mapping]) -> list[dict]:
    """Flat rows (model, noise, procedure, split, n, and each metric with its ci_low and ci_high) from
    {model: evaluate(...)}."""
    rows = []
    for model, by_level in results.items():
        for level in NOISE_LEVELS:
            for proc, summary in by_level[level].items():
                first: Estimate = summary["exact"]
                row = {"model": model, "noise": level, "procedure": proc, "split": first.split, "n": summary["n"]}
                for k in METRICS:
                    e: Estimate = summary[k]
                    row |= {k: e.value, f"{k}_ci_low": e.ci_low, f"{k}_ci_high": e.ci_high}
                rows.append(row)
    return rows


def exact_plot(results: Mapping[str, Mapping]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = [NOISE_LEVELS[lv] for lv in NOISE_LEVELS]
    for k, (model, by_level) in enumerate(results.items()):
        for proc, style in (("one_shot_grammar", "-o"), ("iterative_grammar", "--s")):
            est = [by_level[lv][proc]["exact"] for lv in NOISE_LEVELS]
            shift = [x + 0.002 * (2 * k + (proc != HEADLINE)) for x in xs]  # the intervals side by side
            ax.errorbar(shift, [e.value for e in est], yerr=[[e.value - e.ci_low for e in est],
                                                             [e.ci_high - e.value for e in est]],
                        fmt=style, capsize=2, label=f"{model} {proc}")
    ax.set_xlabel("noise (fraction of nodes corrupted)")
    ax.set_ylabel("exact repair (test, 95% interval)")
    ax.set_title("exact repair against noise")
    ax.legend(fontsize=7)
    return _png(fig)


def headline_sentence(results: Mapping[str, Mapping], differences: Mapping[tuple[str, str], Estimate]) -> str:
    diff = differences[(HEADLINE, "mid")]
    g, t = results["graph_unet"]["mid"][HEADLINE]["exact"], results["transformer"]["mid"][HEADLINE]["exact"]
    return (f"Graph U-Net vs. the same-size Transformer at the middle noise level (exact repair, one-shot with the "
            f"grammar mask, test): {g} vs {t}; paired difference {diff}: "
            f"{verdict(diff, 'the Graph U-Net', 'the Transformer')}.")


def graph_repair_report(language: str, results: Mapping[str, Mapping], sizes: Mapping[str, Mapping],
                        differences: Mapping[tuple[str, str], Estimate] | None = None,
                        tuning: Mapping[str, Mapping] | None = None,
                        split_counts: Mapping[str, int] | None = None,
                        vs_baseline: Mapping[str, Mapping[tuple[str, str], Estimate]] | None = None) -> str:
    """``sizes``: {model: {"params": n, "train_s": s, "steps": k}}; ``differences``: ``paired_differences``;
    ``tuning``: ``evaluate_models``' second value; ``split_counts``: functions per split; ``vs_baseline``:
    ``trained_vs_baseline``."""
    differences = differences or {}
    lines = [f"# graph_repair [{language}]", ""]
    if split_counts:
        lines += ["Functions per split (by the group key of their alpha-renamed code; renamed copies share a "
                  "split): " + ", ".join(f"{s} {n}" for s, n in split_counts.items()) + ". Figures are on test; "
                  "the relabel threshold is chosen on dev.", ""]
    if (HEADLINE, "mid") in differences:
        lines += [headline_sentence(results, differences), ""]
    lines += [markdown_table([{"model": m, **{k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in s.items()}}
                              for m, s in sizes.items()], ["model", "params", "steps", "train_s"]), ""]
    for level in NOISE_LEVELS:
        rows = [{"model": m, "procedure": p, **{k: str(by[level][p][k]) for k in METRICS}}
                for m, by in results.items() for p in PROCEDURES if p in by[level]]
        n = next(iter(results.values()))[level][HEADLINE]["n"]
        lines += [f"## noise {level} ({NOISE_LEVELS[level]:.0%} of nodes, {n} test functions)", "",
                  markdown_table(rows, ["model", "procedure", *METRICS]), ""]
    if differences:
        lines += ["## Graph U-Net minus Transformer (exact repair, paired over the same test examples)", "",
                  "\"beats\" only where the 95% interval of the difference excludes 0.", "",
                  markdown_table([{"procedure": p, "noise": lv, "difference": str(d),
                                   "verdict": verdict(d, "graph_unet", "transformer")}
                                  for (p, lv), d in differences.items()],
                                 ["procedure", "noise", "difference", "verdict"]), ""]
    if vs_baseline:
        lines += ["## Trained models minus the slot-frequency baseline (exact repair, paired)", "",
                  markdown_table([{"model": m, "procedure": p, "noise": lv, "difference": str(d),
                                   "verdict": verdict(d, m, "slot_frequency")}
                                  for m, by in vs_baseline.items() for (p, lv), d in by.items()],
                                 ["model", "procedure", "noise", "difference", "verdict"]), ""]
    if tuning:
        lines += ["## Relabel threshold (chosen on dev, exact repair one-shot with the grammar mask)", "",
                  markdown_table([{"model": m, "chosen": t["threshold"],
                                   **{f"dev {c}": str(e) for c, e in t["dev_exact"].items()}}
                                  for m, t in tuning.items()],
                                 ["model", "chosen", *dict.fromkeys(f"dev {c}" for t in tuning.values()
                                                                    for c in t["dev_exact"])]), ""]
    z3_rows = [{"model": m, **{k: int(v) for k, v in by["z3"]["stats"].items()}} for m, by in results.items()
               if by.get("z3", {}).get("stats", {}).get("z3_checked")]
    if language != "python":  # the constraints are Python's (``ml.graph_repair.logic``)
        lines += ["## Z3 (level 2)", "",
                  f"No Z3 check for {language} (the constraints are Python's): no one_shot_grammar_z3 procedure.", ""]
        return _dead_ends(lines, results)
    lines += ["## Z3 (level 2)", "", "Candidates checked (one-shot with the grammar mask, some node changed), rejected "
              "by the constraints, rejected ones whose resample passed, and the clean test functions the "
              "constraints flag (false alarms):", "",
              markdown_table(z3_rows, ["model", "z3_checked", "z3_rejected", "z3_resampled_ok", "z3_clean_flagged",
                                       "z3_clean_checked"]), ""]
    return _dead_ends(lines, results)


def _dead_ends(lines: list[str], results: Mapping[str, Mapping]) -> str:
    dead = {m: int(by["grammar"]["dead_ends"]) for m, by in results.items() if by.get("grammar", {}).get("dead_ends")}
    if dead:
        lines += [f"Grammar dead ends (no label allowed; decoded without the mask): {dead}", ""]
    return "\n".join(lines)
