"""The DSL pipeline's recipe, called by the `dsl` assets and by bench/dsl_learning_curve.py alike: training rows
from the labelled dataset, the validation split, the (prompt, completion) pairs a trainer sees, the evaluation rows,
and one evaluation of a model in both decoding modes."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ml.dsl.format import completion_text, prompt_text, wrap_prompt


def training_rows(data: Sequence[Mapping[str, Any]], schemas: Mapping[str, dict], *, schema_view: str,
                  include_invalid: bool = False, max_samples: int = 0, seed: int = 0) -> tuple[list[dict], int]:
    """Prompt/completion rows from labelled dataset rows (``id domain split lang query ast_json valid``); with
    ``max_samples`` the training split is capped by a seeded sample. Returns the rows and how many were capped."""
    rows = []
    for r in data:
        if not r["valid"] and not include_invalid:
            continue
        rows.append({"id": r["id"], "domain": r["domain"], "split": r["split"],
                     "group": "heldout" if r["split"] == "heldout_domain" else "seen", "lang": r["lang"],
                     "query": r["query"], "prompt": prompt_text(schemas[r["domain"]], r["query"], schema_view),
                     "completion": r["ast_json"], "valid": r["valid"]})
    train = [r for r in rows if r["split"] == "train"]
    if not max_samples or len(train) <= max_samples:
        return rows, 0
    drop = {r["id"] for r in random.Random(f"max_samples:{seed}").sample(train, len(train) - max_samples)}
    return [r for r in rows if r["id"] not in drop], len(drop)


def split_validation(rows: Sequence[dict], fraction: float, cap: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): a seeded shuffle, ``fraction`` of the rows (at most ``cap``, at least 1) held out."""
    shuffled = random.Random(seed).sample(list(rows), len(rows))
    n_val = min(cap, max(1, round(len(rows) * fraction))) if fraction > 0 else 0
    return shuffled[n_val:], shuffled[:n_val]


def model_inputs(tokenizer, rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(prompt in the tokenizer's chat template, completion + end token) pairs: what SFT trains on and what
    generation is prompted with."""
    return [(wrap_prompt(tokenizer, r["prompt"]), completion_text(tokenizer, r["completion"])) for r in rows]


def evaluation_rows(rows: Sequence[Mapping[str, Any]], samples: int, seed: int) -> list[dict]:
    """Up to ``samples`` valid requests of each group: test requests of the training domains, held-out domains."""
    out = []
    for split in ("test", "heldout_domain"):
        mine = [dict(r) for r in rows if r["split"] == split and r["valid"]]
        out += random.Random(f"{seed}:{split}").sample(mine, min(samples, len(mine)))
    return out


def evaluate_both_modes(model, tokenizer, rows: Sequence[Mapping[str, Any]], schemas: Mapping[str, dict],
                        specs: Mapping[str, Any], teacher, *, batch_size: int = 16, label: str = "",
                        modes: Sequence[bool] = (False, True),
                        on_log: Callable[[str], None] | None = None) -> tuple[dict[str, float], list[dict]]:
    """Metrics of ``model`` on ``rows`` unconstrained and schema-constrained (``[heldout_]<metric>[_constrained]``)
    and one result row per request and mode (``mode`` = unconstrained | constrained)."""
    from ml.dsl.probe import evaluate_student

    metrics: dict[str, float] = {}
    results: list[dict] = []
    for constrained in modes:
        mode = "constrained" if constrained else "unconstrained"
        started = time.monotonic()
        m, scored = evaluate_student(model, tokenizer, rows, schemas, specs, teacher, constrained=constrained,
                                     batch_size=batch_size)
        metrics.update(m)
        results += [{"mode": mode, **row} for row in scored]
        if on_log is not None:
            on_log(f"{label} {mode}: {len(rows)} requests in {time.monotonic() - started:.0f}s: "
                   + ", ".join(f"{k}={v:.3f}" for k, v in m.items()))
    return {k: round(float(v), 4) for k, v in metrics.items()}, results
