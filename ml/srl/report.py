"""The srl report: base / student / teacher per metric on held-out rewrite families, plots of the policies and of
the GRPO reward components, per-family execution success and sample steps."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

from ml.plots import _png, grouped_bars, plt
from ml.reports import markdown_table
from ml.srl.recipe import METRICS, POLICIES

PLOTTED = ("trace_parse_rate", "execution_success", "action_fidelity", "state_faithfulness", "think_similarity")


def metrics_table(metrics: Mapping[str, float]) -> str:
    rows = []
    for m in METRICS:
        cells = {p: metrics.get(f"{p}_{m}") for p in POLICIES}
        if all(v is None for v in cells.values()):
            continue
        rows.append({"metric": m, **{p: "–" if v is None else f"{v:.3f}" for p, v in cells.items()}})
    return markdown_table(rows, ["metric", *POLICIES])


def policy_plot(metrics: Mapping[str, float]) -> bytes:
    values = {m.replace("_", " "): {p: metrics.get(f"{p}_{m}", 0.0) for p in POLICIES if f"{p}_{m}" in metrics}
              for m in PLOTTED}
    return grouped_bars(values, "held-out rewrite families", "score")


def reward_histograms(components: Mapping[str, Sequence[float]]) -> bytes:
    """One histogram per reward component over every completion GRPO sampled."""
    names = [n for n in ("total", "action", "state", "think") if n in components]
    fig, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 2.6))
    for ax, name in zip(axes if len(names) > 1 else [axes], names, strict=True):
        values = list(components[name])
        if values:
            ax.hist(values, bins=20, range=(-0.2, 1.0) if name == "total" else (-0.4, 1.0), color="#4C72B0")
        ax.set_title(f"{name} ({len(values)})")
    fig.suptitle("GRPO samples: reward components")
    return _png(fig)


def family_table(rows: Sequence[Mapping]) -> str:
    by: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r["family"]][r["policy"]].append(bool(r["executed"]))
    table = []
    for family in sorted(by):
        cells = {p: f"{sum(v)}/{len(v)}" if (v := by[family].get(p)) else "–" for p in POLICIES}
        table.append({"family": family, **cells})
    return markdown_table(table, ["family", *POLICIES])


def srl_report(language: str, metrics: Mapping[str, float], rows: Sequence[Mapping], tasks: int) -> str:
    gain = metrics.get("student_execution_success", math.nan) - metrics.get("base_execution_success", math.nan)
    samples = [r for r in rows if r["policy"] == "student"][:3]
    lines = [
        f"# SRL ({language}): base vs student vs teacher on held-out rewrite families", "",
        f"{tasks} held-out tasks (rewrite families never trained on), greedy steps. The teacher is the upper bound "
        "(its steps were kept only when they executed); its similarity to itself is not reported. "
        "`execution_success`: the policy's own action, run in the sandbox, produces the expected code "
        "(and, for Python, the same behaviour). `kl_per_token`: the student against the base, on its own steps.", "",
        metrics_table(metrics), "",
        f"Student execution success minus base: **{gain:+.3f}**.", "",
        "![policies](policies.png)", "", "## Execution success per family", "", family_table(rows), "",
        "## Student samples", "",
    ]
    for r in samples:
        verdict = "executed" if r["executed"] else (r["parse_error"] or r["env_status"] or "wrong result")
        lines += [f"- `{r['family']}` ({verdict}, reward {r['reward']:.2f}):", "", "  ```",
                  f"  {r['completion'].strip()[:600]}", "  ```"]
    return "\n".join(lines) + "\n"


ABLATION_COLUMNS = ("variant", "beta", "malformed_penalty", "weights", "execution_success", "trace_parse_rate",
                    "action_fidelity", "reward", "train_kl_last", "grpo_seconds")


def ablation_table(results: Sequence[Mapping]) -> str:
    rows = [{k: (f"{r[k]:.3f}" if isinstance(r.get(k), float) else r.get(k, "–")) for k in ABLATION_COLUMNS}
            for r in results]
    return markdown_table(rows, list(ABLATION_COLUMNS))


def ablation_plot(results: Sequence[Mapping]) -> bytes:
    values = {r["variant"]: {m: r.get(m, 0.0) for m in ("execution_success", "trace_parse_rate", "action_fidelity")}
              for r in results}
    return grouped_bars(values, "GRPO ablations, held-out families", "score")
