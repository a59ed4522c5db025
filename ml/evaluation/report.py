"""The Markdown report of an AST-first evaluation: metrics, generated examples shown as code, plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

_FENCE = {"python": "python", "javascript": "javascript", "java": "java"}


def _code(language: str, source: str | None, limit: int = 1200) -> str:
    text = (source or "").strip()
    if len(text) > limit:
        text = text[:limit] + "\n..."
    return f"```{_FENCE.get(language, '')}\n{text}\n```"


def ast_eval_report(
    language: str,
    metrics: Mapping[str, float],
    samples: Mapping[str, Sequence[tuple[str, object]]],
    pairs: Sequence[Mapping],
    predictions: Sequence[str],
    scores: Sequence[object],
    curve_files: Mapping[str, str],
    examples: int = 3,
) -> str:
    lines = [f"# AST-first evaluation — `{language}`", "", "| metric | value |", "|---|---|"]
    lines += [f"| `{k}` | {v:.4f} |" for k, v in metrics.items()]
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
    lines.append("## Docstring → AST (held-out)")
    for pair, pred, score in list(zip(pairs, predictions, scores))[:examples]:
        lines += [f"**Docstring:** {pair['nl'][:300]}", "", "Reference:", _code(language, pair.get("target_code")),
                  f"Generated (valid={score.valid}, exact={score.exact}, similarity={score.similarity:.2f}):",
                  _code(language, score.prediction_source) if score.valid else f"`{pred[:300]}`", ""]
    if curve_files:
        lines.append("## Training curves")
        lines += [f"![{name}]({fname})" for name, fname in curve_files.items()]
    return "\n".join(lines) + "\n"
