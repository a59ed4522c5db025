"""The markdown report and the learning-curve plot of the AST-vs-text experiment."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ml.plots import line_plot
from ml.stats import Estimate

if TYPE_CHECKING:  # pragma: no cover
    from ml.ast_vs_text.recipe import ExperimentResult

ROWS = (  # (label, metric suffix); the arms are the columns
    ("held-out bits per source char, code only (after Phase 1)", "bits_per_char"),
    ("held-out bits per source char, code given docstring (after Phase 2)", "nl2code_bits_per_char"),
    ("docstring → code: valid", "valid_rate"),
    ("docstring → code: exact match (alpha-renamed)", "exact_match"),
    ("docstring → code: tree similarity", "tree_similarity"),
    ("HumanEval pass@1", "humaneval_pass_at_1"),
)


def curve_png(result: ExperimentResult) -> bytes:
    """Both arms' held-out bits per character over training steps on one plot (Phase 2 after the Phase 1 steps)."""
    series = {}
    for run in result.runs:
        for name, label in (("bits_per_char", "code"), ("nl2code_bits_per_char", "code | docstring")):
            series[f"{run.arm}: {label}"] = [(step, v) for step, n, v in run.curve if n == name]
    return line_plot(series, "held-out bits per source character (test)", "training step (Phase 1, then Phase 2)",
                     "bits / char")


def _cell(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return str(value) if isinstance(value, Estimate) else "—"


def experiment_report(result: ExperimentResult, curve_file: str | None = None) -> str:
    s, m = result.settings, result.metrics
    columns = [r.arm for r in result.runs] + (["ast_constrained"] if any(
        "constrained" in r.answers for r in result.runs) else [])
    language = s.language
    lines = [
        f"# AST-first vs plain text ({language}, test split)", "",
        f"Same base, same {len(result.data.phase1_rows)} code-only and {len(result.data.phase2_rows)} docstring → "
        f"code train functions (alpha-renamed; functions too long in either form left out of both: "
        f"{result.data.dropped}), LoRA r={s.lora_r} alpha={s.lora_alpha}, learning rate {s.learning_rate}, "
        f"batch {s.batch_size}, {s.phase1_steps} + {s.phase2_steps} steps per arm. Figures: value [95% interval] n.",
        "", "| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns),
    ]
    for label, suffix in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(m, f"{c}_{suffix}") for c in columns) + " |")
    for run in result.runs:
        lines.append(f"| {run.arm}: tokens seen (Phase 1 + Phase 2), train wall time | {run.phase_tokens} "
                     f"{run.train_s:.0f}s |" + " |" * (len(columns) - 1))
    if "ast_constrained_valid_rate" in result.by_construction:
        lines += ["", "`ast_constrained_valid_rate` is 1 by construction (the grammar admits only valid trees): a "
                  "check of the automaton, not a result."]
    elif "ast_constrained" in columns:
        lines += ["", f"`ast_constrained_valid_rate` is measured: the {language} automaton guarantees that decoding "
                  "finishes a tree, and the re-parse judges it."]
    if not result.tasks:
        lines += ["", f"No HumanEval on the {language} slice: the benchmark is Python."]
    lines += ["", "## Paired differences (same test items)", ""]
    for key, text in result.verdicts.items():
        lines.append(f"- `{key}` = {m[key]}: {text}")
    if curve_file:
        lines += ["", "## Learning curves", "", f"![learning curves]({curve_file})"]
    lines += ["", "## Docstring → code, side by side (test)", ""]
    answers = {r.arm: r.answers.get("unconstrained") for r in result.runs}
    for i, pair in enumerate(result.data.test_pairs[:3]):
        lines += [f"### {pair['name']}", "", "> " + pair["nl"].replace("\n", "\n> "), "",
                  "reference:", f"```{language}", pair["target_code"].rstrip(), "```"]
        for arm, a in answers.items():
            if a is not None:
                shown = a.nl2code[i] or "(does not decode)"
                lines += [f"{arm}:", f"```{language}", shown.rstrip(), "```"]
    return "\n".join(lines) + "\n"
