"""The Markdown report of an AST-first evaluation: metrics, generated examples shown as code, plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ml.stats import Estimate

_FENCE = {"python": "python", "javascript": "javascript", "java": "java"}


def _code(language: str, source: str | None, limit: int = 1200) -> str:
    text = (source or "").strip()
    if len(text) > limit:
        text = text[:limit] + "\n..."
    return f"```{_FENCE.get(language, '')}\n{text}\n```"


def ast_eval_report(
    language: str,
    metrics: Mapping[str, Estimate],
    samples: Mapping[str, Sequence[tuple[str, object]]],
    pairs: Sequence[Mapping],
    predictions: Sequence[str],
    scores: Sequence[object],
    curve_files: Mapping[str, str],
    examples: int = 3,
    verdicts: Mapping[str, str] | None = None,
    by_construction: Sequence[str] = (),
) -> str:
    """``metrics`` are estimates (``value [ci_low, ci_high] n=…``); ``verdicts`` names the comparisons among them
    (paired differences) and what may be claimed of each; ``by_construction`` the metrics the grammar guarantees."""
    verdicts = verdicts or {}
    split = {m.split for m in metrics.values()}
    lines = [f"# AST-first evaluation — `{language}`", "",
             f"Split: {', '.join(sorted(split))} (rows no training step read); each figure is the value, its 95% "
             "interval and n (Wilson for rates, bootstrap for means).", "",
             "| metric | value [95% interval] n |", "|---|---|"]
    for name, value in metrics.items():
        if name in verdicts:
            continue
        note = " (by construction: the grammar admits only valid trees; a check, not a result)" \
            if name in by_construction else ""
        lines.append(f"| `{name}` | {value}{note} |")
    if verdicts:
        lines += ["", "## Comparisons (paired over the same test items)", "",
                  "| difference | value [95% interval] n | verdict |", "|---|---|---|"]
        lines += [f"| `{name}` | {metrics[name]} | {claim} |" for name, claim in verdicts.items()]
        lines += ["", "`heldout_loss_reduction`: base loss minus Phase 1 loss, function by function (> 0: Phase 1 "
                  "models the test functions better). \"Beats\" only where the interval excludes 0."]
    lines += ["", "Validity: the sampled sequence decodes to a tree the language accepts (Python: `compile()`).",
              "Exact match: equal trees after alpha-renaming both sides. Tree similarity: Dice coefficient",
              "of the multisets of depth-one productions (`parent -> child types`).", ""]
    for label, rows in samples.items():
        lines.append(f"## Sampled functions ({label})")
        shown = [j for _, j in rows if j.valid][:examples]
        if not shown:
            lines.append("_no valid sample_")
        for j in shown:
            lines.append(_code(language, j.source))
        lines.append("")
    lines.append("## Docstring → AST (test split)")
    for pair, pred, score in list(zip(pairs, predictions, scores))[:examples]:
        lines += [f"**Docstring:** {pair['nl'][:300]}", "", "Reference:", _code(language, pair.get("target_code")),
                  f"Generated (valid={score.valid}, exact={score.exact}, similarity={score.similarity:.2f}):",
                  _code(language, score.prediction_source) if score.valid else f"`{pred[:300]}`", ""]
    if curve_files:
        lines.append("## Training curves")
        lines += [f"![{name}]({fname})" for name, fname in curve_files.items()]
    return "\n".join(lines) + "\n"
