"""The Markdown report of the DSL pipeline (SFT, then DPO): rates compared in a table (each figure with its 95%
interval and n when it is an :class:`~ml.stats.Estimate`), paired differences SFT − base and DPO − SFT with the
verdict they allow, per-language pass rates, training-curve and rate plots as PNG bytes (matplotlib ``Figure``
objects, Agg backend), pretty-printed samples.

Metric keys are ``[heldout_]<metric>[_constrained]`` (see ``ml.dsl.evaluation``): no prefix = requests held out
from the training domains ("seen domains"), ``heldout_`` = domains never trained on; ``_constrained`` =
schema-constrained decoding. Curves are ``(step, metric, value)`` triples.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ml.dsl.evaluation import METRICS
from ml.stats import Estimate, rate, verdict

GROUPS = (("seen", "", "seen domains"), ("heldout", "heldout_", "held-out domains"))
MODES = (("unconstrained", ""), ("constrained", "_constrained"))
TARGET_METRIC = "semantic_pass_rate_constrained"
DASH = "–"
METRIC_DEFINITIONS = (
    "**Metrics.** `parsed` = the output contains a JSON object; `schema_valid` = it validates against the domain's "
    "JSON Schema; `exact_match` = the same JSON as the teacher's AST; `semantic_pass` = schema-valid and selecting "
    "the same records as the teacher's AST (filters evaluated over a table of records built from the schema and "
    "both ASTs' constants; same sort and limit); `teacher_accept` = an LLM teacher's own verdict on the meaning "
    "(absent with the programmatic teacher, whose verdict would repeat the semantic judge). Each `*_rate` is the "
    "fraction of evaluation requests, with its Wilson 95% interval and n; `comparison_f1` = mean F1 of the "
    "(negation, operator, field, value) comparisons against the teacher's AST (bootstrap interval); "
    "`_constrained` = schema-constrained decoding, no suffix = unconstrained decoding. All on the `test` split: "
    "seen domains = test requests of the training domains; held-out domains = domains never trained on. "
    "Differences are paired over the same requests (bootstrap 95% interval); \"beats\" only when the interval "
    "excludes 0."
)
_PNG_SIZE = (7, 4)


# --------------------------------------------------------------------------------------------------- helpers


def _key(metric: str, prefix: str = "", suffix: str = "") -> str:
    return f"{prefix}{metric}{suffix}"


def _value(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    """``metrics[key]`` (a number or an Estimate's value) as a finite float, or None when missing / not a number."""
    if not metrics or key not in metrics:
        return None
    raw = metrics[key]
    try:
        v = float(raw.value if isinstance(raw, Estimate) else raw)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return DASH
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _cell(metrics: Mapping[str, Any] | None, key: str) -> str:
    """An Estimate as ``0.167 [0.047, 0.448] n=12``, a plain number with 3 decimals, "–" when missing."""
    raw = (metrics or {}).get(key)
    if isinstance(raw, Estimate):
        return str(raw) if raw.n else DASH
    return _fmt(_value(metrics, key))


def _has_heldout(*metric_dicts: Mapping[str, Any] | None) -> bool:
    return any(k.startswith("heldout_") for m in metric_dicts if m for k in m)


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = _PNG_SIZE):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _series(curve: Iterable[tuple[int, str, float]] | None, names: Iterable[str]) -> dict[str, list[tuple]]:
    """Sorted ``(step, value)`` points per wanted metric name; non-finite or malformed triples are dropped."""
    out: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for item in curve or ():
        try:
            step, metric, value = item
            point = (float(step), float(value))
        except (TypeError, ValueError):
            continue
        if metric in out and all(math.isfinite(x) for x in point):
            out[metric].append(point)
    return {n: sorted(pts) for n, pts in out.items()}


def _plot_lines(ax, series: Mapping[str, list[tuple]], styles: Mapping[str, str]) -> list:
    handles = []
    for name, pts in series.items():
        if pts:
            (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], styles.get(name, "-"), label=name,
                              markersize=3)
            handles.append(line)
    return handles


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _curve_png(fig, ax, handles: list, title: str) -> bytes:
    """A training-curve figure finished: the legend of ``handles`` below the axes (or "no data"), the title."""
    if handles:
        ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=8, ncols=2,
                  loc="upper center", bbox_to_anchor=(0.5, -0.15))
    else:
        _no_data(ax)
    ax.set_title(title)
    return _png(fig)


# ------------------------------------------------------------------------------------------------------ plots


def rates_plot(metrics_by_model: Mapping[str, Mapping[str, float]] | None,
               title: str = "DSL student — rates per model and decoding mode") -> bytes:
    """Grouped bar chart PNG: for each of the five metrics, one bar per (model, mode) ("SFT", "SFT constrained",
    ...). One subplot for seen domains, a second for held-out domains when any ``heldout_`` key exists.
    Missing keys leave a gap instead of failing."""
    metrics_by_model = metrics_by_model or {}
    groups = [g for g in GROUPS if g[1] == "" or _has_heldout(*metrics_by_model.values())]
    fig, axes = _figure(len(groups), 1, size=(9, 3.6 * len(groups)))
    series = [(f"{model}" + (" constrained" if suffix else ""), model, suffix)
              for model in metrics_by_model for _, suffix in MODES]
    colors = ["#4C72B0", "#8FAADC", "#C44E52", "#E8A0A2", "#55A868", "#A5D6A7", "#8172B2", "#C3B8E0"]
    width = 0.8 / max(1, len(series))
    xs = range(len(METRICS))
    for ax, (_, prefix, label) in zip(axes, groups):
        drawn = False
        for i, (name, model, suffix) in enumerate(series):
            points = [(x + (i - (len(series) - 1) / 2) * width, v) for x, metric in zip(xs, METRICS)
                      if (v := _value(metrics_by_model[model], _key(metric, prefix, suffix))) is not None]
            if points:
                drawn = True
                bars = ax.bar([p[0] for p in points], [p[1] for p in points], width, label=name,
                              color=colors[i % len(colors)])
                ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([m.removesuffix("_rate") for m in METRICS])
        ax.set_xlim(-0.5, len(METRICS) - 0.5)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("rate")
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
        if drawn:
            ax.legend(fontsize=8, ncols=min(4, len(series)), loc="upper center", bbox_to_anchor=(0.5, -0.12))
        else:
            _no_data(ax, "no metrics")
    fig.suptitle(title)
    return _png(fig)


def sft_curve_plot(curve: Iterable[tuple[int, str, float]] | None, title: str = "SFT training") -> bytes:
    """PNG: ``loss`` and ``eval_loss`` versus step (left axis); the probe task metrics
    (``probe_semantic_pass_rate_constrained``, ``probe_schema_valid_rate_constrained``) on a right axis in [0, 1]:
    semantic pass rate against training steps."""
    losses = ("loss", "eval_loss")
    probes = ("probe_semantic_pass_rate_constrained", "probe_schema_valid_rate_constrained")
    s = _series(curve, losses + probes)
    fig, (ax,) = _figure()
    handles = _plot_lines(ax, {n: s[n] for n in losses}, {"loss": "-", "eval_loss": "o-"})
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if any(s[n] for n in probes):
        right = ax.twinx()
        styles = {probes[0]: "s--", probes[1]: "^:"}
        colors = {probes[0]: "#55A868", probes[1]: "#8172B2"}
        for name in probes:
            if s[name]:
                (line,) = right.plot([p[0] for p in s[name]], [p[1] for p in s[name]], styles[name],
                                     color=colors[name], label=name.removeprefix("probe_"), markersize=4)
                handles.append(line)
        right.set_ylim(0, 1.05)
        right.set_ylabel("probe rate (constrained)")
    return _curve_png(fig, ax, handles, title)


def dpo_curve_plot(curve: Iterable[tuple[int, str, float]] | None, title: str = "DPO training") -> bytes:
    """PNG: ``loss`` and ``rewards/margins`` versus step (left axis), ``rewards/accuracies`` on a right axis
    in [0, 1]."""
    left_names = ("loss", "rewards/margins")
    acc = "rewards/accuracies"
    s = _series(curve, left_names + (acc,))
    fig, (ax,) = _figure()
    handles = _plot_lines(ax, {n: s[n] for n in left_names}, {"loss": "-", "rewards/margins": "-"})
    ax.set_xlabel("step")
    ax.set_ylabel("loss / reward margin")
    ax.grid(alpha=0.3)
    if s[acc]:
        right = ax.twinx()
        (line,) = right.plot([p[0] for p in s[acc]], [p[1] for p in s[acc]], ":", color="#55A868", label=acc)
        handles.append(line)
        right.set_ylim(0, 1.05)
        right.set_ylabel("reward accuracy")
    return _curve_png(fig, ax, handles, title)


# ------------------------------------------------------------------------------------------------ markdown


def comparison_table(sft: Mapping[str, Any] | None, dpo: Mapping[str, Any] | None,
                     base: Mapping[str, Any] | None = None) -> str:
    """Markdown table: one row per metric (seen domains, then held-out domains when any ``heldout_`` key exists),
    columns [base (M0), base constrained,] SFT, SFT constrained, DPO, DPO constrained: an Estimate as its value,
    interval and n, a number with 3 decimals, "–" when missing. Differences are in :func:`paired_table`."""
    models = ([("base", base)] if base is not None else []) + [("SFT", sft), ("DPO", dpo)]
    columns = ["domains", "metric", *[f"{name}{label}" for name, _ in models for label in ("", " constrained")]]
    lines = ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]
    groups = [g for g in GROUPS if g[1] == "" or _has_heldout(sft, dpo, base)]
    for _, prefix, label in groups:
        # comparison_f1: partial credit (matching comparisons), shown when the evaluation reports it
        extra = (("comparison_f1",) if any(_key("comparison_f1", prefix, "") in (m or {}) for _, m in models)
                 else ())
        for metric in (*METRICS, *extra):
            cells = [_cell(m, _key(metric, prefix, suffix)) for _, m in models for _, suffix in MODES]
            lines.append(f"| {label} | `{metric}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


COMPARISONS = (("sft_vs_base", "SFT", "base"), ("dpo_vs_sft", "DPO", "SFT"))


def paired_table(differences: Mapping[str, Mapping[str, Estimate]] | None) -> str:
    """Markdown table of the paired differences (``differences["sft_vs_base"|"dpo_vs_sft"][metric key]``): per
    group, decoding mode and metric, each difference with its interval and n and the verdict it allows."""
    differences = differences or {}
    keys = list(dict.fromkeys(k for d in differences.values() for k in d))
    if not keys:
        return "_no paired requests_"
    header = ["domains", "decoding", "metric"]
    for _, better, worse in COMPARISONS:
        header += [f"{better} − {worse}", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|---|" * len(COMPARISONS)]
    for _, prefix, label in GROUPS:
        for mode, suffix in MODES:
            for metric in (*METRICS, "comparison_f1"):
                key = _key(metric, prefix, suffix)
                if key not in keys:
                    continue
                cells = [label, mode, f"`{metric}`"]
                for name, better, worse in COMPARISONS:
                    diff = differences.get(name, {}).get(key)
                    cells += [str(diff), verdict(diff, better, worse)] if diff is not None else [DASH, DASH]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def language_rates(rows: Iterable[Mapping[str, Any]] | None, mode: str = "constrained",
                   flag: str = "semantic_pass") -> dict[str, tuple[float, int]]:
    """``lang -> (rate of flag, number of rows)`` over the rows of one decoding mode; en and fr first."""
    counts: dict[str, list[int]] = {}
    for row in rows or ():
        if row.get("mode") != mode:
            continue
        c = counts.setdefault(str(row.get("lang") or "?"), [0, 0])
        c[0] += bool(row.get(flag))
        c[1] += 1
    order = sorted(counts, key=lambda lang: ({"en": 0, "fr": 1}.get(lang, 2), lang))
    return {lang: (counts[lang][0] / counts[lang][1], counts[lang][1]) for lang in order}


def language_table(sft_rows: Iterable[Mapping[str, Any]] | None, dpo_rows: Iterable[Mapping[str, Any]] | None,
                   mode: str = "constrained") -> str:
    """Markdown table of per-language ``semantic_pass`` rates (Wilson interval, n) for SFT and DPO (one decoding
    mode)."""
    sft, dpo = language_rates(sft_rows, mode), language_rates(dpo_rows, mode)
    langs = list(dict.fromkeys([*sft, *dpo]))
    if not langs:
        return "_no evaluation rows_"

    def cell(rates: dict[str, tuple[float, int]], lang: str) -> str:
        if lang not in rates:
            return DASH
        share, n = rates[lang]
        return str(rate([1] * round(share * n) + [0] * (n - round(share * n))))

    lines = ["| lang | SFT | DPO |", "|---|---:|---:|"]
    lines += [f"| {lang} | {cell(sft, lang)} | {cell(dpo, lang)} |" for lang in langs]
    return "\n".join(lines)


def _fence(text: str, lang: str = "") -> str:
    """A fenced block longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    tick = "`" * max(3, longest + 1)
    return f"{tick}{lang}\n{text}\n{tick}"


def _pretty_json(text: Any, limit: int = 2000) -> tuple[str, bool]:
    """``(pretty text, is_json)``: JSON text re-indented (indent=2), anything else as is (truncated)."""
    if text is None:
        return "", False
    if not isinstance(text, str):
        return json.dumps(text, indent=2, ensure_ascii=False), True
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False), True
    except (json.JSONDecodeError, ValueError):
        body = text.strip()
        return (body[:limit] + "\n...") if len(body) > limit else body, False


SAMPLE_CATEGORIES = (
    ("semantic passes", lambda r: bool(r.get("semantic_pass"))),
    ("schema-invalid outputs", lambda r: bool(r.get("parsed")) and not r.get("schema_valid")),
    ("schema-valid, other records selected", lambda r: bool(r.get("schema_valid")) and not r.get("semantic_pass")),
    ("unparsed outputs", lambda r: not r.get("parsed")),
)


def _sample(row: Mapping[str, Any]) -> str:
    flags = ", ".join(f"{f}={'✓' if row.get(f) else '✗'}"
                      for f in ("parsed", "schema_valid", "exact_match", "teacher_accept", "semantic_pass")
                      if f in row and row[f] is not None)
    head = " · ".join(str(row[k]) for k in ("id", "domain", "group", "lang") if row.get(k) is not None)
    query = str(row.get("query") or "").strip().replace("\n", "\n> ")
    target, _ = _pretty_json(row.get("target"))
    if row.get("prediction") is not None:
        prediction, is_json = _pretty_json(row.get("prediction"))
        label = "Prediction"
    else:
        prediction, is_json = _pretty_json(row.get("output"))
        label = "Prediction (raw output, not parsed as JSON)" if not is_json else "Prediction (raw output)"
    lines = [f"**{head or 'sample'}** — {flags}" + (f" — error: `{row['error']}`" if row.get("error") else ""),
             "", f"> {query}", "", "Target:", _fence(target, "json"), f"{label}:",
             _fence(prediction, "json" if is_json else "text"), ""]
    return "\n".join(lines)


def pretty_samples(rows: Iterable[Mapping[str, Any]] | None, k: int = 3,
                   modes: Sequence[str] = ("constrained", "unconstrained")) -> str:
    """Markdown with up to ``k`` examples per category (semantic passes, schema-invalid outputs, schema-valid but
    selecting other records, unparsed) for each decoding mode: the request, then target and prediction as ```json
    blocks (indent=2); the prediction falls back to the raw output text when it did not parse."""
    rows = list(rows or ())
    out: list[str] = []
    for mode in modes:
        in_mode = [r for r in rows if r.get("mode") == mode]
        if not in_mode:
            continue
        out.append(f"### {mode.capitalize()} decoding ({len(in_mode)} requests)")
        out.append("")
        for name, test in SAMPLE_CATEGORIES:
            picked = [r for r in in_mode if test(r)]
            if not picked:
                continue
            out.append(f"#### {name.capitalize()} — {len(picked)} of {len(in_mode)}, showing {min(k, len(picked))}")
            out.append("")
            out += [_sample(r) for r in picked[:k]]
    return "\n".join(out).rstrip() + "\n" if out else "_no samples_\n"


_SUMMARY_LABELS = {
    "teacher": "teacher backend",
    "teacher_backend": "teacher backend",
    "base_model": "base model",
    "train_domains": "training domains",
    "heldout_domains": "held-out domains",
    "dataset_sizes": "dataset sizes",
    "sft_steps": "SFT steps",
    "dpo_steps": "DPO steps",
}


def _summary_value(value: object) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_summary_value(v)}" for k, v in value.items()) or DASH
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(str(v) for v in value) or DASH
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def target_statement(sft_metrics: Mapping[str, Any] | None, target: float = 0.5) -> str:
    """"target: SFT semantic_pass_rate_constrained ≥ 0.5 on seen domains — reached (…)". With an Estimate:
    "reached" only when its whole interval is at or above the target, "not reached" when it is wholly below,
    otherwise "not established at n=…"; a plain number is compared as it is."""
    raw = (sft_metrics or {}).get(TARGET_METRIC)
    value = _value(sft_metrics, TARGET_METRIC)
    head = f"target: SFT `{TARGET_METRIC}` ≥ {target:g} on seen domains — "
    if value is None:
        return head + "not measured"
    if isinstance(raw, Estimate):
        if raw.ci_low >= target:
            return head + f"reached ({raw})"
        if raw.ci_high < target:
            return head + f"not reached ({raw})"
        return head + f"not established at n={raw.n} ({raw})"
    return head + ("reached" if value >= target else "not reached") + f" ({value:.3f})"


def dpo_verdict(differences: Mapping[str, Mapping[str, Estimate]] | None) -> str:
    """One sentence per comparison and domain group on ``semantic_pass_rate_constrained``: the paired difference
    and the verdict it allows ("beats" only when its interval excludes 0)."""
    parts = []
    for name, better, worse in COMPARISONS:
        for _, prefix, label in GROUPS:
            diff = (differences or {}).get(name, {}).get(prefix + TARGET_METRIC)
            if diff is None:
                if prefix == "":
                    parts.append(f"{better} vs {worse} on {label}: not measured on common requests.")
                continue
            parts.append(f"{better} − {worse} on {label}, `{prefix}{TARGET_METRIC}`: {diff} — "
                         f"{verdict(diff, better, worse)}.")
    return " ".join(parts)


def dsl_report_markdown(*, sft_metrics: Mapping[str, Any], dpo_metrics: Mapping[str, Any],
                        sft_rows: Sequence[Mapping[str, Any]], dpo_rows: Sequence[Mapping[str, Any]],
                        images: Mapping[str, str], summary: Mapping[str, object], target: float = 0.5,
                        samples: int = 3, base_metrics: Mapping[str, Any] | None = None,
                        differences: Mapping[str, Mapping[str, Estimate]] | None = None) -> str:
    """The whole report: summary list (with the target statement), comparison table, paired differences
    (``differences["sft_vs_base"|"dpo_vs_sft"]``) with their verdicts, per-language semantic pass rates
    (constrained), metric definitions, plots (``name -> file name``) and pretty-printed samples (DPO rows; SFT rows
    when there are no DPO rows)."""
    title = "base vs SFT vs DPO" if base_metrics is not None else "SFT vs DPO"
    lines = [f"# DSL student — {title}", "", "## Summary", ""]
    lines += [f"- **{_SUMMARY_LABELS.get(k, k.replace('_', ' '))}**: {_summary_value(v)}"
              for k, v in (summary or {}).items()]
    lines += [f"- **{target_statement(sft_metrics, target)}**", "", "## Rates", "",
              comparison_table(sft_metrics, dpo_metrics, base_metrics), "", "## Paired differences (test split)", "",
              dpo_verdict(differences), "", paired_table(differences), "", METRIC_DEFINITIONS, "",
              "## Semantic pass rate per language (constrained decoding)", "",
              language_table(sft_rows, dpo_rows, "constrained"), ""]
    if images:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({fname})\n" for name, fname in images.items()]
    which, rows = ("DPO", dpo_rows) if dpo_rows else ("SFT", sft_rows)
    lines += [f"## Samples ({which})", "", pretty_samples(rows, k=samples)]
    return "\n".join(lines).rstrip() + "\n"
