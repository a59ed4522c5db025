"""The srl report: base / warm-up only / student (warm-up + GRPO) / teacher per metric on the test families, each
figure with its n and 95% interval, the paired differences (student vs base, GRPO vs warm-up) with what they allow a
report to say, plots of the policies and of the GRPO reward components, per-family execution success and sample
steps; and the ablation table (on dev)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from ml.plots import _png, grouped_bars, plt
from ml.reports import markdown_table
from ml.srl.recipe import COMPARED_METRICS, COMPARISONS, METRICS, POLICIES
from ml.stats import Estimate, verdict

PLOTTED = ("trace_parse_rate", "execution_success", "action_fidelity", "state_faithfulness", "think_similarity")
NAMES = {"base": "the base", "warmup": "the warm-up-only student", "student": "the student (warm-up + GRPO)",
         "teacher": "the teacher"}


def _value(v: Estimate | float | None) -> float | None:
    return v.value if isinstance(v, Estimate) else v


def _cell(v: Estimate | float | None) -> str:
    if v is None:
        return "–"
    return str(v) if isinstance(v, Estimate) else f"{v:.3f}"


def metrics_table(metrics: Mapping[str, Estimate | float]) -> str:
    policies = [p for p in POLICIES if any(k.startswith(f"{p}_") for k in metrics)]
    rows = []
    for m in METRICS:
        cells = {p: metrics.get(f"{p}_{m}") for p in policies}
        if all(v is None for v in cells.values()):
            continue
        rows.append({"metric": m, **{p: _cell(v) for p, v in cells.items()}})
    return markdown_table(rows, ["metric", *policies])


def comparison_lines(metrics: Mapping[str, Estimate | float]) -> list[str]:
    """One line per paired difference present: ``- student − base, execution_success: 0.167 [0.05, 0.45] n=12:
    student beats base`` (or "no measurable difference at n=12")."""
    lines = []
    for better, worse in COMPARISONS:
        for m in COMPARED_METRICS:
            diff = metrics.get(f"{better}_minus_{worse}_{m}")
            if isinstance(diff, Estimate):
                lines.append(f"- {better} − {worse}, `{m}`: {diff}: {verdict(diff, better, worse)}")
    return lines


def policy_plot(metrics: Mapping[str, Estimate | float], split: str = "test") -> bytes:
    values = {m.replace("_", " "): {p: _value(metrics[f"{p}_{m}"]) for p in POLICIES if f"{p}_{m}" in metrics}
              for m in PLOTTED}
    return grouped_bars(values, f"{split} rewrite families", "score")


def reward_histograms(components: Mapping[str, Sequence[float]]) -> bytes:
    """One histogram per reward component over every completion GRPO sampled."""
    names = [n for n in ("total", "action", "state", "think", "execution") if n in components]
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
    policies = [p for p in POLICIES if any(r["policy"] == p for r in rows)]
    table = []
    for family in sorted(by):
        cells = {p: f"{sum(v)}/{len(v)}" if (v := by[family].get(p)) else "–" for p in policies}
        table.append({"family": family, **cells})
    return markdown_table(table, ["family", *policies])


def srl_report(language: str, metrics: Mapping[str, Estimate | float], rows: Sequence[Mapping], tasks: int,
               teacher_unfiltered: Mapping[str, Estimate] | None = None) -> str:
    families = len({r["family"] for r in rows})
    samples = [r for r in rows if r["policy"] == "student"][:3]
    teacher = ("The teacher's reference steps all parse and execute **by construction** (srl_teacher_traces keeps "
               "only those), so no rate of the teacher is reported here, nor offered as a bound")
    if teacher_unfiltered:
        teacher += ("; before that filter, on the test tasks, its steps parse "
                    f"{teacher_unfiltered['trace_parse_rate']} and execute {teacher_unfiltered['execution_success']}")
    lines = [
        f"# SRL ({language}): base, warm-up only and warm-up + GRPO on the test rewrite families", "",
        f"{tasks} test tasks from {families} rewrite families never trained on (nor tuned on: the ablation uses "
        "the dev families), greedy steps. Each figure is `value [95% interval] n=tasks` (rates: Wilson; means: "
        "bootstrap over tasks). `execution_success`: the policy's own action, run in the sandbox, produces the "
        "expected code (and, for Python, the same behaviour). `kl_per_token` (pooled over tokens; interval: bootstrap "
        f"over steps): the policy against the base, on its own steps. {teacher}.", "",
        metrics_table(metrics), "",
        "## Paired differences (same tasks; bootstrap over tasks)", "",
        *comparison_lines(metrics), "",
        "![policies](policies.png)", "", "## Execution success per family", "", family_table(rows), "",
        "## Student samples", "",
    ]
    for r in samples:
        outcome = "executed" if r["executed"] else (r["parse_error"] or r["env_status"] or "wrong result")
        lines += [f"- `{r['family']}` ({outcome}, reward {r['reward']:.2f}):", "", "  ```",
                  f"  {r['completion'].strip()[:600]}", "  ```"]
    return "\n".join(lines) + "\n"


ABLATION_COLUMNS = ("variant", "beta", "malformed_penalty", "weights", "execution_success", "trace_parse_rate",
                    "action_fidelity", "reward", "vs_reference_execution_success", "vs_reference_reward",
                    "train_kl_last", "grpo_seconds")


def ablation_table(results: Sequence[Mapping]) -> str:
    rows = [{k: (_cell(r[k]) if isinstance(r.get(k), (float, Estimate)) else r.get(k, "–"))
             for k in ABLATION_COLUMNS} for r in results]
    return markdown_table(rows, list(ABLATION_COLUMNS))


def ablation_plot(results: Sequence[Mapping]) -> bytes:
    values = {r["variant"]: {m: _value(r.get(m, 0.0)) for m in ("execution_success", "trace_parse_rate",
                                                               "action_fidelity")}
              for r in results}
    return grouped_bars(values, "GRPO ablations, dev families", "score")


def family_counts_table(counts: Mapping[str, int], extra: Mapping[str, Mapping[str, int]] | None = None) -> str:
    """Markdown: one row per family with its count, and a column per ``extra`` counter."""
    lines = ["| family | tasks |" + "".join(f" {k} |" for k in extra or {}),
             "|---|---|" + "---|" * len(extra or {})]
    for family, n in sorted(counts.items()):
        lines.append(f"| {family} | {n} |" + "".join(f" {c.get(family, 0)} |" for c in (extra or {}).values()))
    return "\n".join(lines)
