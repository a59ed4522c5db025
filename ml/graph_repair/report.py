"""The graph_repair report: both denoisers (and the slot-frequency baseline) per noise level and procedure, the
sizes and training times, the Z3 rejections, and a plot of exact repair against noise."""

from __future__ import annotations

from collections.abc import Mapping

from ml.graph_repair.corrupt import NOISE_LEVELS
from ml.plots import _png, plt
from ml.reports import markdown_table

PROCEDURES = ("one_shot", "one_shot_grammar", "one_shot_grammar_z3", "iterative_grammar")
HEADLINE = "one_shot_grammar"  # the bench's and the summary's procedure


def result_rows(results: Mapping[str, Mapping]) -> list[dict]:
    """Flat rows (model, noise, procedure, node_accuracy, exact, valid, n) from {model: evaluate(...)}."""
    return [{"model": model, "noise": level, "procedure": proc, **summary}
            for model, by_level in results.items() for level in NOISE_LEVELS
            for proc, summary in by_level[level].items()]


def exact_plot(results: Mapping[str, Mapping]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = [NOISE_LEVELS[lv] for lv in NOISE_LEVELS]
    for model, by_level in results.items():
        for proc, style in (("one_shot_grammar", "-o"), ("iterative_grammar", "--s")):
            ax.plot(xs, [by_level[lv][proc]["exact"] for lv in NOISE_LEVELS], style, label=f"{model} {proc}")
    ax.set_xlabel("noise (fraction of nodes corrupted)")
    ax.set_ylabel("exact repair (held-out)")
    ax.set_title("exact repair against noise")
    ax.legend(fontsize=7)
    return _png(fig)


def graph_repair_report(language: str, results: Mapping[str, Mapping], sizes: Mapping[str, Mapping]) -> str:
    """``sizes``: {model: {"params": n, "train_s": s, "steps": k}}."""
    g, t = results["graph_unet"]["mid"][HEADLINE]["exact"], results["transformer"]["mid"][HEADLINE]["exact"]
    verdict = ("beats" if g > t else "does not beat") + f" the same-size Transformer at the middle noise level " \
        f"({g:.3f} vs {t:.3f} exact repair, one-shot with the grammar mask)"
    lines = [f"# graph_repair [{language}]", "", f"The Graph U-Net {verdict}.", "",
             markdown_table([{"model": m, **{k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in s.items()}}
                             for m, s in sizes.items()], ["model", "params", "steps", "train_s"]), ""]
    for level in NOISE_LEVELS:
        rows = [{"model": m, "procedure": p, **{k: f"{by[level][p][k]:.3f}" for k in ("node_accuracy", "exact",
                                                                                      "valid")}}
                for m, by in results.items() for p in PROCEDURES if p in by[level]]
        n = next(iter(results.values()))[level][HEADLINE]["n"]
        lines += [f"## noise {level} ({NOISE_LEVELS[level]:.0%} of nodes, {n} held-out functions)", "",
                  markdown_table(rows, ["model", "procedure", "node_accuracy", "exact", "valid"]), ""]
    z3_rows = [{"model": m, **{k: int(v) for k, v in by["z3"]["stats"].items()}} for m, by in results.items()
               if by.get("z3", {}).get("stats", {}).get("z3_checked")]
    lines += ["## Z3 (level 2)", "", "Candidates checked (one-shot with the grammar mask, some node changed), rejected "
              "by the constraints, rejected ones whose resample passed, and the clean held-out functions the "
              "constraints flag (false alarms):", "",
              markdown_table(z3_rows, ["model", "z3_checked", "z3_rejected", "z3_resampled_ok", "z3_clean_flagged",
                                       "z3_clean_checked"]), ""]
    dead = {m: int(by["grammar"]["dead_ends"]) for m, by in results.items() if by.get("grammar", {}).get("dead_ends")}
    if dead:
        lines += [f"Grammar dead ends (no label allowed; decoded without the mask): {dead}", ""]
    return "\n".join(lines)
