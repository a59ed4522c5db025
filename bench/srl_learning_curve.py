"""What the SRL student reaches with more training: held-out execution success against warm-up steps, and what the
GRPO steps add on top, against the base measured in the same run.

Materializes the `srl` assets themselves (python slice, programmatic teacher) in a temporary ASTFORGE_HOME, once per
warm-up length, so the curve measures the assets' recipe, not a copy of it: for each N in ``--warmup-steps``,
``srl_adapter`` with ``sft_steps=N`` and ``--grpo-steps`` GRPO steps, then ``srl_eval``. ``--grpo-steps 0`` is not
allowed by the asset (GRPO always runs), so "warm-up only" is read off a 1-step GRPO at a learning rate of 1e-9.

    python bench/srl_learning_curve.py --warmup-steps 24 48 96 --grpo-steps 4
    python bench/srl_learning_curve.py --base tiny:qwen2 --warmup-steps 2 4 --grpo-steps 1 --max-files 20

Last line: ``{"base", "points": [{"warmup_steps", "grpo_steps", "student_execution_success",
"student_trace_parse_rate", "student_action_fidelity", "student_reward", "student_kl_per_token", "seconds"}, ...],
"base_execution_success", "teacher_execution_success", "heldout_tasks", "seconds"}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m", help="srl_base_model.base_model")
    ap.add_argument("--warmup-steps", type=int, nargs="+", default=[24, 48, 96])
    ap.add_argument("--grpo-steps", type=int, default=4)
    ap.add_argument("--warmup-only", action="store_true", help="also each point without GRPO (a 1e-9 LR step)")
    ap.add_argument("--eval-tasks", type=int, default=32)
    ap.add_argument("--max-code-chars", type=int, default=500)
    ap.add_argument("--max-files", type=int, default=300, help="python files read from the standard library")
    ap.add_argument("--home", default="", help="ASTFORGE_HOME to use (default: a temporary folder)")
    args = ap.parse_args()

    home = args.home or tempfile.mkdtemp(prefix="srl-curve-")
    os.environ["ASTFORGE_HOME"] = home
    import dagster as dg

    from assets import DATA_ASSETS, SRL_ASSETS
    from assets.models import pretrained_base
    from definitions import build_resources
    from resources import CorpusResource

    started = time.perf_counter()
    resources = build_resources(corpus=CorpusResource(max_files=args.max_files))
    corpus = [a for a in DATA_ASSETS if a.key.to_user_string() in ("source_files", "code_units")]
    if not dg.materialize(corpus, resources=resources, partition_key="python").success:
        raise SystemExit("corpus (the python standard library) failed")
    srl = {a.key.to_user_string(): a for a in SRL_ASSETS}
    first = [srl["srl_tasks"], srl["srl_teacher_traces"], srl["srl_base_model"]]
    if not args.base.startswith("tiny:"):
        first = [pretrained_base, *first]
    run_config = {"ops": {"srl_tasks": {"config": {"max_code_chars": args.max_code_chars}},
                          "srl_base_model": {"config": {"base_model": args.base}}}}
    if not dg.materialize(first, resources=resources, partition_key="python", run_config=run_config).success:
        raise SystemExit("tasks, traces or base failed")

    points, metrics = [], {}
    variants = [(n, args.grpo_steps, 5e-5) for n in args.warmup_steps]
    if args.warmup_only:
        variants += [(n, 1, 1e-9) for n in args.warmup_steps]
    for warmup, grpo, lr in variants:
        t0 = time.perf_counter()
        config = {"ops": {
            "srl_adapter": {"config": {"sft_steps": warmup, "max_steps": max(grpo, 1), "learning_rate": lr}},
            "srl_eval": {"config": {"eval_tasks": args.eval_tasks}},
        }}
        result = dg.materialize([srl["srl_adapter"], srl["srl_eval"]], resources=resources, partition_key="python",
                                run_config=config)
        if not result.success:
            raise SystemExit(f"warm-up {warmup}: training or evaluation failed")
        meta = result.asset_materializations_for_node("srl_eval")[-1].metadata
        metrics = {k: v.value for k, v in meta.items() if isinstance(getattr(v, "value", None), float)}
        points.append({"warmup_steps": warmup, "grpo_steps": grpo if lr > 1e-8 else 0,
                       **{k: round(metrics[k], 3) for k in (
                           "student_execution_success", "student_trace_parse_rate", "student_action_fidelity",
                           "student_reward", "student_kl_per_token") if k in metrics},
                       "seconds": round(time.perf_counter() - t0, 1)})
        print(points[-1], flush=True)
    emit({"base": args.base, "points": points,
          "base_execution_success": metrics.get("base_execution_success"),
          "teacher_execution_success": metrics.get("teacher_execution_success"),
          "heldout_tasks": int(meta["heldout_tasks"].value), "seconds": round(time.perf_counter() - started, 1),
          "home": home})


if __name__ == "__main__":
    main()
