"""Does AST-first help? The text arm and the AST arm on the same base (SmolLM2-135M), functions, LoRA and steps.

Materializes one slice's data and base (``--lang``, python by default: corpus → ast_corpus / nl_ast_pairs →
ast_tokenizer → ast_base_model) in a temporary ASTFORGE_HOME, then the ``ast_vs_text_eval`` asset (the recipe in
``ml/ast_vs_text/``), and prints its figures. On a fresh clone:

    python bench/ast_vs_text.py                       # the defaults: within 60 min on 2 CPU cores
    python bench/ast_vs_text.py --steps 10 --humaneval-n 10   # a quick check
    python bench/ast_vs_text.py --lang java                   # the same experiment on JDK sources (no HumanEval)

Last line: one JSON object with ``text_bits_per_char``, ``ast_bits_per_char``, ``*_valid_rate``,
``*_humaneval_pass_at_1``, ``steps``, ``*_tokens_seen``, ``*_train_s``, ``humaneval_n``, ``curve`` (per arm:
``[step, metric, mean bits per char on test]``), ``evidence`` (every figure with n and 95% interval),
``verdicts`` and ``seconds``.
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
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--lang", default="python", choices=("python", "javascript", "java"),
                    help="the slice (HumanEval runs on python only)")
    ap.add_argument("--steps", type=int, default=30, help="Phase 1 steps and Phase 2 steps, each, per arm")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--files", type=int, default=300, help="source files read from the slice's default source")
    ap.add_argument("--humaneval-n", type=int, default=164, help="seeded sample of HumanEval problems (164 = all)")
    ap.add_argument("--test-functions", type=int, default=32)
    ap.add_argument("--nl2code-samples", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--curve-points", type=int, default=3)
    ap.add_argument("--new-token-init", choices=("mean", "names"), default="names",
                    help="where the AST rows of the base start (ast_base_model's new_token_init)")
    args = ap.parse_args()

    started = time.perf_counter()
    os.environ.setdefault("ASTFORGE_HOME", tempfile.mkdtemp(prefix="ast-vs-text-"))
    import dagster as dg

    from assets import DATA_ASSETS
    from assets.ast_models import ast_base_model, ast_tokenizer
    from assets.ast_vs_text import ast_vs_text_eval
    from assets.models import pretrained_base
    from definitions import build_resources
    from resources import CorpusResource

    resources = build_resources(corpus=CorpusResource(max_files=args.files))
    if not args.base.startswith("tiny:"):  # unpartitioned: converted once, before the slice's run
        assert dg.materialize([pretrained_base], resources=resources).success
    upstream = [*DATA_ASSETS, ast_tokenizer, ast_base_model]
    config = {"phase1_steps": args.steps, "phase2_steps": args.steps, "batch_size": args.batch_size,
              "learning_rate": args.learning_rate, "max_length": args.max_length, "humaneval_n": args.humaneval_n,
              "max_test_functions": args.test_functions, "nl2code_samples": args.nl2code_samples,
              "max_new_tokens": args.max_new_tokens, "curve_points": args.curve_points}
    run_config = {"ops": {"ast_tokenizer": {"config": {"base_model": args.base}},
                          "ast_base_model": {"config": {"new_token_init": args.new_token_init}},
                          "ast_vs_text_eval": {"config": config}}}
    result = dg.materialize([*upstream, ast_vs_text_eval], resources=resources, partition_key=args.lang,
                            run_config=run_config)
    if not result.success:
        raise SystemExit("materialization failed")
    folder = Path(resources["catalog"].latest_artifact("ast_vs_text_eval", args.lang)["path"])
    summary = json.loads((folder / "summary.json").read_text())
    evidence = json.loads((folder / "metrics_evidence.json").read_text())
    values = json.loads((folder / "metrics.json").read_text())
    meta = next(m.materialization.metadata for m in result.get_asset_materialization_events()
                if m.asset_key.to_user_string() == "ast_vs_text_eval")
    summary["evidence"] = {k: f"{values[k]:.4f} [{e['ci_low']:.4f}, {e['ci_high']:.4f}] n={e['n']}"
                           for k, e in evidence.items()}
    summary["verdicts"] = {k[:-len("_verdict")]: v.value for k, v in meta.items() if k.endswith("_verdict")}
    summary["base"], summary["report"] = args.base, str(folder / "report.md")
    summary["new_token_init"], summary["language"] = args.new_token_init, args.lang
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
