"""How many SFT steps the DSL student needs: semantic_pass_rate (schema-constrained, seen domains) against steps.

Materializes the `dsl` assets themselves (the data, `dsl_base_model`, `dsl_sft_adapter`) with the programmatic
teacher in a temporary ASTFORGE_HOME, so the curve measures the asset's recipe, not a copy of it. The probe is the
asset's own: ``--probe-samples`` validation requests of the training domains, generated with schema-constrained
decoding at every evaluation (``--probe-every`` steps).

    python bench/dsl_learning_curve.py --base smollm2-135m --steps 120 --probe-every 20
    python bench/dsl_learning_curve.py --base tiny:gemma3_text --steps 1500 --probe-every 100

Last line: ``{"base", "device", "steps", "tokens_per_s", "step_seconds", "curve": [[step, rate], ...],
"steps_to_target", "target", "seconds"}`` (``steps_to_target`` is null when the target was not reached).
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
    ap.add_argument("--base", default="smollm2-135m", help="dsl_base_model.base_model (smollm2-135m, tiny:gemma3_text)")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--probe-every", type=int, default=20)
    ap.add_argument("--probe-samples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=0, help="0: the profile's")
    ap.add_argument("--learning-rate", type=float, default=0.0, help="0: the profile's")
    ap.add_argument("--lora-r", type=int, default=0, help="0: the profile's")
    ap.add_argument("--lora-top-layers", type=int, default=-1, help="-1: the profile's")
    ap.add_argument("--precision", default="auto", help="compute resource precision (auto | bf16 | fp32)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--home", default="", help="ASTFORGE_HOME to use (default: a temporary folder)")
    args = ap.parse_args()

    home = args.home or tempfile.mkdtemp(prefix="dsl-curve-")
    os.environ["ASTFORGE_HOME"] = home
    import dagster as dg

    from assets.dsl import DSL_ASSETS
    from assets.models import pretrained_base
    from definitions import build_resources
    from resources.compute import ComputeResource

    sft = {"max_steps": args.steps, "eval_steps": args.probe_every, "save_steps": args.steps,
           "probe_samples": args.probe_samples, "eval_max_samples": max(args.probe_samples, 8),
           "early_stopping_patience": 0}
    for key, value in (("per_device_train_batch_size", args.batch_size), ("learning_rate", args.learning_rate),
                       ("lora_r", args.lora_r)):
        if value:
            sft[key] = value
    if args.lora_r:
        sft["lora_alpha"] = 2 * args.lora_r
    if args.lora_top_layers >= 0:
        sft["lora_top_layers"] = args.lora_top_layers
    selection = [a for a in DSL_ASSETS if a.key.to_user_string() in {
        "dsl_domain_specs", "dsl_schemas", "dsl_queries", "dsl_dataset", "dsl_training_corpus", "dsl_base_model",
        "dsl_sft_adapter"}]
    if not args.base.startswith("tiny:"):
        selection = [pretrained_base, *selection]
    resources = build_resources(compute=ComputeResource(device=args.device, precision=args.precision))
    started = time.perf_counter()
    result = dg.materialize(selection, resources=resources, run_config={"ops": {
        "dsl_base_model": {"config": {"base_model": args.base}}, "dsl_sft_adapter": {"config": sft}}})
    if not result.success:
        raise SystemExit("materialization failed")
    meta = result.asset_materializations_for_node("dsl_sft_adapter")[0].metadata
    catalog = resources["catalog"]
    points = catalog.query("SELECT step, value FROM training_metrics WHERE asset_key = 'dsl_sft_adapter' AND "
                           "metric = 'probe_semantic_pass_rate_constrained' ORDER BY step")
    curve = sorted({int(p["step"]): round(float(p["value"]), 3) for p in points}.items())
    reached = [s for s, v in curve if v >= args.target]
    steps = meta["steps"].value
    print(json.dumps({
        "base": args.base, "device": meta["device"].value, "steps": steps,
        "tokens_per_s": meta["tokens_per_s"].value, "train_rows": meta["train_rows"].value,
        "step_seconds": meta["step_seconds"].value, "precision": meta["precision"].value,
        "curve": [list(p) for p in curve], "steps_to_target": reached[0] if reached else None,
        "eval_loss_final": meta["eval_loss_final"].value, "target": args.target,
        "seconds": round(time.perf_counter() - started, 1), "home": home,
    }))


if __name__ == "__main__":
    main()
