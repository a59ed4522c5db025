"""Unconstrained DSL evaluation with and without the stop at the answer's end (ml/dsl/stopping.py).

    python bench/dsl_eval_stop.py --home /path/to/ASTFORGE_HOME [--samples 8] [--adapter DIR] [--batch-size 16]

Generates the unconstrained answers of ``dsl_base_eval``'s own requests (``evaluation_rows`` of the newest
``dsl_training_corpus``: ``--samples`` test requests per group) with the model of ``dsl_base_model`` (plus
``--adapter``), as ``ml.dsl.probe.generate`` does (same batch size and token cap), once running every row to EOS or
the cap (before) and once stopping each row at its first complete JSON object (after, the default now). The scorer
reads the first JSON object of an output, so both must parse to the same objects (``same_parsed``); the timings are
interleaved when ``--repeats`` > 1. Last line: ``{"requests", "before_s_per_request", "after_s_per_request",
"speedup", "new_tokens_before", "new_tokens_after", "same_parsed"}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import emit
from train_efficiency import _latest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default=os.environ.get("ASTFORGE_HOME", ".astforge"))
    ap.add_argument("--samples", type=int, default=8, help="test requests per group (seen, held-out)")
    ap.add_argument("--adapter", default="")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from ml.dsl.constrained import generate_json
    from ml.dsl.format import parse_completion, wrap_prompt
    from ml.dsl.probe import max_new_tokens_for
    from ml.dsl.recipe import evaluation_rows
    from ml.models.loading import load_for_generation

    home = Path(args.home)
    rows = pq.read_table(_latest(home, "dsl_training_corpus") / "rows.parquet").to_pylist()
    rows = evaluation_rows(rows, args.samples, seed=0)
    model, tok = load_for_generation(_latest(home, "dsl_base_model"), args.adapter or None)
    prompts = [wrap_prompt(tok, r["prompt"]) for r in rows]
    cap = max_new_tokens_for(tok, rows)
    runs: dict[bool, list] = {False: [], True: []}
    for _ in range(args.repeats):
        for stop in (False, True):
            runs[stop].append(generate_json(model, tok, prompts, None, max_new_tokens=cap, batch_size=args.batch_size,
                                            constrained=False, stop_at_json_end=stop))
    before, after = runs[False][-1], runs[True][-1]
    same = [parse_completion(a)[0] == parse_completion(b)[0] for a, b in zip(before.texts, after.texts)]
    b_s = statistics.median(r.seconds for r in runs[False]) / len(rows)
    a_s = statistics.median(r.seconds for r in runs[True]) / len(rows)
    emit({"bench": "dsl_eval_stop", "requests": len(rows), "adapter": args.adapter or None, "max_new_tokens": cap,
          "batch_size": args.batch_size, "before_s_per_request": round(b_s, 3), "after_s_per_request": round(a_s, 3),
          "speedup": round(b_s / a_s, 3), "new_tokens_before": before.new_tokens, "new_tokens_after": after.new_tokens,
          "parsed_objects": sum(parse_completion(t)[0] is not None for t in after.texts),
          "same_parsed": all(same)})


if __name__ == "__main__":
    main()
