"""Running the student on requests and scoring it (the semantic judge of ml/dsl/semantics.py, and an LLM teacher's
own verdict where one is used): evaluation, preference pairs for DPO, and a training callback that measures
``semantic_pass_rate`` while SFT runs."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ml.dsl.evaluation import SampleScore, metrics_from_results, score_sample
from ml.dsl.format import ast_to_text, wrap_prompt

# Room above the longest target completion: a good answer fits, a runaway one is cut off early.
NEW_TOKEN_MARGIN = 24


def max_new_tokens_for(tokenizer, rows: Sequence[Mapping[str, Any]]) -> int:
    longest = max((len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in rows), default=0)
    return longest + NEW_TOKEN_MARGIN


def _judge(teacher, spec, schema, row: Mapping[str, Any], target: dict):
    """The teacher's own verdict, for an LLM teacher; None for the programmatic one, whose verdict would only
    repeat the semantic judge (it knows no more than the reference AST)."""
    from ml.dsl.teachers.base import TeacherQuery
    from ml.dsl.teachers.programmatic import ProgrammaticTeacher

    if teacher is None or isinstance(teacher, ProgrammaticTeacher):
        return None

    query = TeacherQuery(domain=row["domain"], lang=row["lang"], text=row["query"], ast=target)

    def judge(candidate: dict) -> bool | None:
        verdict = teacher.judge(spec, schema, query, candidate, target)
        return None if verdict is None else verdict.accept

    return judge


def generate(model, tokenizer, rows: Sequence[Mapping[str, Any]], schemas: Mapping[str, dict], *,
             constrained: bool, batch_size: int = 16, max_new_tokens: int | None = None) -> list[str]:
    """Greedy outputs of the student for ``rows`` (``prompt`` plain text, ``domain``)."""
    from ml.dsl.constrained import generate_json

    prompts = [wrap_prompt(tokenizer, r["prompt"]) for r in rows]
    result = generate_json(
        model, tokenizer, prompts, [schemas[r["domain"]] for r in rows] if constrained else None,
        max_new_tokens=max_new_tokens or max_new_tokens_for(tokenizer, rows), batch_size=batch_size,
        constrained=constrained,
    )
    return list(result.texts)


def score_rows(outputs: Sequence[str], rows: Sequence[Mapping[str, Any]], schemas: Mapping[str, dict],
               specs: Mapping[str, Any], teacher) -> list[SampleScore]:
    out = []
    for text, row in zip(outputs, rows):
        target = json.loads(row["completion"])
        judge = _judge(teacher, specs[row["domain"]], schemas[row["domain"]], row, target)
        out.append(score_sample(text, schemas[row["domain"]], target, specs[row["domain"]], judge))
    return out


def evaluate_student(model, tokenizer, rows: Sequence[Mapping[str, Any]], schemas: Mapping[str, dict],
                     specs: Mapping[str, Any], teacher, *, constrained: bool,
                     batch_size: int = 16) -> tuple[dict, list[dict]]:
    """Metrics (``[heldout_]<metric>[_constrained]`` -> ``Estimate``) and one result row per request."""
    outputs = generate(model, tokenizer, rows, schemas, constrained=constrained, batch_size=batch_size)
    scores = score_rows(outputs, rows, schemas, specs, teacher)
    mode = "constrained" if constrained else "unconstrained"
    results = [
        {"id": r["id"], "domain": r["domain"], "group": r["group"], "lang": r["lang"], "mode": mode,
         "query": r["query"], "target": r["completion"], "output": text, **s.as_row()}
        for r, text, s in zip(rows, outputs, scores)
    ]
    return metrics_from_results(results), results


def preference_pairs(model, tokenizer, rows: Sequence[Mapping[str, Any]], schemas: Mapping[str, dict],
                     specs: Mapping[str, Any], teacher, *, only_rejected: bool = True,
                     batch_size: int = 16) -> tuple[list[dict], dict[str, int]]:
    """DPO rows from the student's unconstrained outputs: chosen = the teacher's AST, rejected = the student's
    answer, for the outputs that do not pass (schema-invalid, or selecting other records than the teacher's AST;
    ``only_rejected=False``: also passing outputs written differently from the teacher's AST). Empty outputs are
    skipped (nothing to reject)."""
    outputs = generate(model, tokenizer, rows, schemas, constrained=False, batch_size=batch_size)
    scores = score_rows(outputs, rows, schemas, specs, teacher)
    pairs, stats = [], {"accepted": 0, "rejected": 0, "unparsed": 0, "empty": 0}
    for row, text, s in zip(rows, outputs, scores):
        stats["accepted" if s.semantic_pass else "rejected"] += 1
        stats["unparsed"] += not s.parsed
        rejected = ast_to_text(s.prediction) if s.prediction is not None else text.strip()
        if not rejected:
            stats["empty"] += 1
            continue
        if s.semantic_pass and (only_rejected or rejected == row["completion"]):
            continue
        pairs.append({"id": row["id"], "domain": row["domain"], "prompt": row["prompt"],
                      "chosen": row["completion"], "rejected": rejected, "reason": s.error or "differs"})
    return pairs, stats


def make_probe_callback(tokenizer, rows, schemas, specs, teacher, max_new_tokens: int | None = None,
                        on_result=None, at_step_zero: bool = True):
    """A ``transformers.TrainerCallback`` that, after each evaluation, generates (schema-constrained) answers to
    ``rows`` and logs ``probe_semantic_pass_rate_constrained`` / ``probe_schema_valid_rate_constrained`` (into the
    trainer's log history, and to ``on_result(step, entry)`` when given). ``at_step_zero=False`` skips the
    evaluation before training: an untrained pretrained base writes to the token cap on every request, which costs
    minutes on a CPU, and ``dsl_base_eval`` measures that model anyway."""
    from transformers import TrainerCallback

    new_tokens = max_new_tokens or max_new_tokens_for(tokenizer, rows)

    class SemanticProbeCallback(TrainerCallback):
        def __init__(self):
            self.probed: set[int] = set()

        def on_evaluate(self, args, state, control, model=None, **kwargs):
            if model is None or not rows or (state.global_step == 0 and not at_step_zero):
                return
            if state.global_step in self.probed:  # the trainer's last evaluation and the final one share a step
                return
            self.probed.add(state.global_step)
            was_training = model.training
            model.eval()
            try:
                outputs = generate(model, tokenizer, rows, schemas, constrained=True, max_new_tokens=new_tokens)
            finally:
                model.train(was_training)
            scores = score_rows(outputs, rows, schemas, specs, teacher)
            entry = {
                "step": state.global_step,
                "probe_semantic_pass_rate_constrained": sum(s.semantic_pass for s in scores) / len(scores),
                "probe_schema_valid_rate_constrained": sum(s.schema_valid for s in scores) / len(scores),
            }
            state.log_history.append(entry)
            if on_result is not None:
                on_result(state.global_step, entry)

    return SemanticProbeCallback()
