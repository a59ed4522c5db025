"""Scoring a DSL student: parse the output, validate it against the schema, compare it with the target, ask the
teacher for a semantic verdict. Metric names are the issue's, exactly; constrained runs add ``_constrained``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ml.dsl.domains import schema_errors
from ml.dsl.format import ast_to_text, parse_completion

METRICS = ("parsed_rate", "schema_valid_rate", "exact_match_rate", "teacher_accept_rate", "semantic_pass_rate")
# Groups of evaluation rows: requests held out from the training domains, and domains never trained on.
GROUP_PREFIX = {"seen": "", "heldout": "heldout_"}

Judge = Callable[[dict], bool | None]  # candidate AST -> accept / reject / no verdict


@dataclass
class SampleScore:
    parsed: bool
    schema_valid: bool
    exact_match: bool
    teacher_accept: bool
    semantic_pass: bool
    error: str | None
    prediction: dict | None
    comparison_f1: float = 0.0  # partial credit, see comparison_f1()

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["prediction"] = ast_to_text(self.prediction) if self.prediction is not None else None
        return row


def score_sample(text: str, schema: dict, target: dict, judge: Judge) -> SampleScore:
    """One generated text against its target. The teacher judges every parsed output (a schema-invalid AST can
    still be rejected or accepted on meaning); ``semantic_pass`` needs both schema validity and acceptance.
    A judge that gives no verdict counts as not accepted."""
    value, why = parse_completion(text)
    if value is None:
        return SampleScore(False, False, False, False, False, why, None)
    errors = schema_errors(value, schema)
    exact = ast_to_text(value) == ast_to_text(target)
    verdict = judge(value)
    accept = bool(verdict)
    error = f"schema: {errors[0]}" if errors else (None if accept else "teacher rejected")
    return SampleScore(True, not errors, exact, accept, accept and not errors, error, value,
                       comparison_f1(value, target))


def rates(scores: Sequence[SampleScore], suffix: str = "", prefix: str = "") -> dict[str, float]:
    """The five rates over ``scores``, plus the mean ``comparison_f1`` (an empty group gives no metrics)."""
    if not scores:
        return {}
    n = len(scores)
    fields = ("parsed", "schema_valid", "exact_match", "teacher_accept", "semantic_pass", "comparison_f1")
    names = (*METRICS, "comparison_f1")
    return {f"{prefix}{name}{suffix}": sum(getattr(s, f) for s in scores) / n for name, f in zip(names, fields)}


def grouped_rates(rows: Iterable[Mapping[str, Any]], scores: Sequence[SampleScore], constrained: bool) -> dict:
    """Rates per evaluation group (``row["group"]``: seen | heldout), named ``[heldout_]<metric>[_constrained]``."""
    suffix = "_constrained" if constrained else ""
    by_group: dict[str, list[SampleScore]] = {}
    for row, s in zip(rows, scores):
        by_group.setdefault(row["group"], []).append(s)
    out: dict[str, float] = {}
    for group, prefix in GROUP_PREFIX.items():
        out.update(rates(by_group.get(group, []), suffix=suffix, prefix=prefix))
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
