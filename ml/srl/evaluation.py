"""srl_eval's recipe: base, warm-up-only student and student (warm-up + GRPO) on the same tasks, the paired
differences between them, and the teacher's reference steps scored alongside (its rates are true by construction on
kept traces: the report labels them so)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ml.srl.recipe import COMPARISONS, EvalInputs, evaluate_policy, metric_rows, paired_differences, score_steps
from ml.srl.reward import Embed


def evaluate_policies(policies: list[tuple[str, Any]], tokenizer, inputs: EvalInputs, embed: Embed,
                      execute: Callable[[list[dict]], list[Any]], *, split: str, max_new_tokens: int,
                      batch_size: int, constrained: bool, log: Callable[[str], None] = print
                      ) -> tuple[dict, list[dict]]:
    """(metrics, rows): each ``(name, model)`` of ``policies`` (``base`` first: it is the KL reference) scored on
    ``inputs``, ``{better}_minus_{worse}_*`` for each of :data:`COMPARISONS` whose policies were given, and the
    teacher's steps as policy ``teacher``. ``constrained`` also decodes the student under the step grammar."""
    reference = dict(policies).get("base")
    metrics: dict = {}
    rows: list[dict] = []
    for policy, model in policies:
        scored = evaluate_policy(policy, model, tokenizer, inputs, embed, execute,
                                 reference=reference if policy != "base" else None, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, constrained=constrained and policy == "student")
        metrics |= metric_rows(policy, scored.metrics)
        rows += scored.rows
        log(f"{policy}: " + ", ".join(f"{k}={v}" for k, v in scored.metrics.items()))
    given = {p for p, _ in policies}
    for better, worse in COMPARISONS:
        if {better, worse} <= given:
            metrics |= paired_differences(rows, better, worse, split)
    teacher = score_steps("teacher", inputs, inputs.teacher_steps, embed, tokenizer, execute)
    metrics |= metric_rows("teacher", teacher.metrics)
    rows += teacher.rows
    return metrics, rows
