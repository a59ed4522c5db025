"""Scoring a DSL student: parse the output, validate it against the schema, compare it with the target, judge its
meaning by the records it selects (ml/dsl/semantics.py), and ask an LLM teacher for its own verdict where one is
used. Metric names are the issue's, exactly; constrained runs add ``_constrained``.

Figures are :class:`~ml.stats.Estimate` s computed from the per-request result rows (:func:`metrics_from_results`):
rates with their Wilson interval, ``comparison_f1`` with a bootstrap one, each with its n, on the ``test`` split.
Comparisons of two models are paired differences over the same requests (:func:`paired_differences`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ml.dsl.domains import DomainSpec, schema_errors
from ml.dsl.format import ast_to_text, parse_completion
from ml.dsl.semantics import equivalent
from ml.stats import Estimate, mean, paired_difference, rate

METRICS = ("parsed_rate", "schema_valid_rate", "exact_match_rate", "teacher_accept_rate", "semantic_pass_rate")
# Result-row flag of each metric (comparison_f1 is a mean of a float column).
FLAGS = {"parsed_rate": "parsed", "schema_valid_rate": "schema_valid", "exact_match_rate": "exact_match",
         "teacher_accept_rate": "teacher_accept", "semantic_pass_rate": "semantic_pass",
         "comparison_f1": "comparison_f1"}
# Groups of evaluation rows: requests held out from the training domains, and domains never trained on.
GROUP_PREFIX = {"seen": "", "heldout": "heldout_"}
MODE_SUFFIX = {"unconstrained": "", "constrained": "_constrained"}
EVAL_SPLIT = "test"

Judge = Callable[[dict], bool | None]  # candidate AST -> accept / reject / no verdict


@dataclass
class SampleScore:
    parsed: bool
    schema_valid: bool
    exact_match: bool
    teacher_accept: bool | None  # an LLM teacher's own verdict; None when no such teacher judged (programmatic)
    semantic_pass: bool  # schema-valid and selects the same records as the target
    error: str | None
    prediction: dict | None
    comparison_f1: float = 0.0  # partial credit, see comparison_f1()

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["prediction"] = ast_to_text(self.prediction) if self.prediction is not None else None
        return row


def score_sample(text: str, schema: dict, target: dict, spec: DomainSpec,
                 teacher_judge: Judge | None = None) -> SampleScore:
    """One generated text against its target. ``semantic_pass`` = schema-valid and the same selection as the
    target (:func:`ml.dsl.semantics.equivalent`). ``teacher_judge`` (an LLM teacher's verdict on meaning) fills
    ``teacher_accept``; a judge that gives no verdict counts as not accepted; no judge leaves it None."""
    value, why = parse_completion(text)
    if value is None:
        return SampleScore(False, False, False, False if teacher_judge else None, False, why, None)
    errors = schema_errors(value, schema)
    exact = ast_to_text(value) == ast_to_text(target)
    same = equivalent(value, target, spec)
    accept = bool(teacher_judge(value)) if teacher_judge is not None else None
    error = f"schema: {errors[0]}" if errors else (None if same else f"meaning: {same.reason}")
    return SampleScore(True, not errors, exact, accept, bool(same) and not errors, error, value,
                       comparison_f1(value, target))


def _metric_name(metric: str, group: str, mode: str) -> str:
    return f"{GROUP_PREFIX[group]}{metric}{MODE_SUFFIX[mode]}"


def _estimate(metric: str, rows: Sequence[Mapping[str, Any]]) -> Estimate | None:
    flag = FLAGS[metric]
    if metric == "comparison_f1":
        return mean([float(r[flag] or 0.0) for r in rows], split=EVAL_SPLIT, seed=0)
    outcomes = [bool(r[flag]) for r in rows if r.get(flag) is not None]
    return rate(outcomes, split=EVAL_SPLIT) if outcomes else None


def metrics_from_results(results: Iterable[Mapping[str, Any]]) -> dict[str, Estimate]:
    """``[heldout_]<metric>[_constrained]`` -> Estimate over the result rows of that group and decoding mode (rows
    carry ``group``, ``mode`` and the flags). ``teacher_accept_rate`` only where a teacher gave verdicts."""
    by_cell: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in results:
        by_cell.setdefault((r["group"], r["mode"]), []).append(r)
    out: dict[str, Estimate] = {}
    for mode in MODE_SUFFIX:
        for group in GROUP_PREFIX:
            rows = by_cell.get((group, mode))
            if not rows:
                continue
            for metric in FLAGS:
                estimate = _estimate(metric, rows)
                if estimate is not None:
                    out[_metric_name(metric, group, mode)] = estimate
    return out


def paired_differences(better: Iterable[Mapping[str, Any]], worse: Iterable[Mapping[str, Any]],
                       metrics: Sequence[str] = tuple(FLAGS)) -> dict[str, Estimate]:
    """``better - worse`` per metric, group and mode over the requests both evaluated (rows aligned on ``(id,
    mode)``), as paired-bootstrap Estimates named like the metrics. Cells without common requests are left out."""
    theirs = {(r["id"], r["mode"]): r for r in worse}
    pairs: dict[tuple[str, str], list[tuple[Mapping, Mapping]]] = {}
    for r in better:
        other = theirs.get((r["id"], r["mode"]))
        if other is not None:
            pairs.setdefault((r["group"], r["mode"]), []).append((r, other))
    out: dict[str, Estimate] = {}
    for mode in MODE_SUFFIX:
        for group in GROUP_PREFIX:
            cell = pairs.get((group, mode))
            if not cell:
                continue
            for metric in metrics:
                flag = FLAGS[metric]
                both = [(a, b) for a, b in cell if a.get(flag) is not None and b.get(flag) is not None]
                if both:
                    out[_metric_name(metric, group, mode)] = paired_difference(
                        [float(a[flag]) for a, _ in both], [float(b[flag]) for _, b in both], split=EVAL_SPLIT)
    return out


def _comparisons(node: Any) -> list[str]:
    if not isinstance(node, dict):
        return []
    op = node.get("op")
    if op in ("and", "or"):
        return [c for a in node.get("args") or [] for c in _comparisons(a)]
    if op == "not":
        return ["not " + c for c in _comparisons(node.get("arg"))]
    return [ast_to_text({"op": op, "field": node.get("field"), "value": node.get("value")})]


def comparison_f1(prediction: dict | None, target: dict) -> float:
    """Partial credit: F1 of the multisets of (negation, operator, field, value) comparisons in the two filters.
    1.0 for the same comparisons however they are grouped; 0.0 for an unparsed output."""
    if not isinstance(prediction, dict):
        return 0.0
    from collections import Counter

    pred, gold = Counter(_comparisons(prediction.get("filter"))), Counter(_comparisons(target.get("filter")))
    common = sum((pred & gold).values())
    if not common:
        return 0.0
    precision, recall = common / sum(pred.values()), common / sum(gold.values())
    return 2 * precision * recall / (precision + recall)
