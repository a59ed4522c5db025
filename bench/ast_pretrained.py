"""AST-first on two bases, same data and step budget: the tiny from-config Qwen2 and the packaged SmolLM2-135M.

Materializes the `ast_first` assets themselves (corpus → AST corpus → tokenizer → base → Phase 1 → Phase 2 →
ast_eval) for one slice in a temporary ASTFORGE_HOME, once per base, and prints ast_eval's metrics side by side.

    python bench/ast_pretrained.py --lang python --steps 40 --bases tiny:qwen2 smollm2-135m

Last line: ``{"lang", "steps", "files", "bases": {base: {metric: value, ..., "seconds": s}}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lang", default="python")
    ap.add_argument("--bases", nargs="+", default=["tiny:qwen2", "smollm2-135m"])
    ap.add_argument("--steps", type=int, default=40, help="Phase 1 and Phase 2 steps each")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--files", type=int, default=120, help="source files read from the slice's default source")
    ap.add_argument("--samples", type=int, default=8, help="ast_eval samples per metric")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--pretrained-lr", type=float, default=1e-3, help="learning rate for non-tiny bases")
    args = ap.parse_args()

    os.environ["ASTFORGE_HOME"] = tempfile.mkdtemp(prefix="ast-bases-")
    import dagster as dg

    from assets import AST_ASSETS
    from assets.models import pretrained_base
    from definitions import build_resources
    from resources import CorpusResource

    resources = build_resources(corpus=CorpusResource(max_files=args.files))
    out = {}
    for base in args.bases:
        tiny = base.startswith("tiny:")
        phase = {"max_steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
                 "eval_steps": args.steps, "save_steps": args.steps, "logging_steps": 10}
        if not tiny:  # the r=16 adapter and learning rate a pretrained base wants (the tiny one keeps its defaults)
            phase.update({"lora_r": 16, "lora_alpha": 32, "learning_rate": args.pretrained_lr})
        run_config = {"ops": {
            "ast_tokenizer": {"config": {"base_model": base}},
            "ast_phase1_adapter": {"config": phase}, "ast_phase2_adapter": {"config": phase},
            "ast_eval": {"config": {"samples": args.samples, "max_new_tokens": args.max_new_tokens,
                                    "max_length": args.max_length}},
        }}
        started = time.perf_counter()
        if not tiny:  # unpartitioned: converted once, before the slice's run
            dg.materialize([pretrained_base], resources=resources)
        result = dg.materialize(AST_ASSETS, resources=resources, partition_key=args.lang, run_config=run_config)
        if not result.success:
            raise SystemExit(f"materialization failed for {base}")
        metrics = {r["metric"]: round(r["value"], 4) for r in resources["catalog"].query(
            "SELECT metric, arg_max(value, created_at) AS value FROM eval_metrics "
            "WHERE asset_key = 'ast_eval' AND partition = ? GROUP BY metric", [args.lang])}
        steps = {m.asset_key.to_user_string(): m.materialization.metadata
                 for m in result.get_asset_materialization_events()}
        p1 = steps["ast_phase1_adapter"]
        out[base] = {**metrics, "phase1_tokens_per_s": p1["tokens_per_s"].value if "tokens_per_s" in p1 else None,
                     "seconds": round(time.perf_counter() - started, 1)}
        print(base, json.dumps(out[base]), flush=True)
    print(json.dumps({"lang": args.lang, "steps": args.steps, "files": args.files, "bases": out}))


if __name__ == "__main__":
    main()
