"""How many SFT steps the DSL student needs: semantic_pass_rate (schema-constrained, seen domains) against steps.

Builds the demo data with the programmatic teacher (the same ml/ code the `dsl` assets call), a tiny Gemma 3
student with a BPE tokenizer trained on the training prompts, trains LoRA SFT and probes held-out requests of the
training domains every ``--probe-every`` steps. Runs on CUDA when present (``--device``).

    python bench/dsl_learning_curve.py --steps 1500 --probe-every 100

Last line: ``{"device", "steps", "tokens_per_s", "curve": [[step, semantic_pass_rate_constrained], ...],
"steps_to_target", "target", "seconds"}`` (``steps_to_target`` is null when the target was not reached).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.compute import resolve_compute  # noqa: E402
from ml.dsl.domains import build_schema  # noqa: E402
from ml.dsl.evaluation import comparison_f1  # noqa: E402
from ml.dsl.format import ast_to_text, prompt_text  # noqa: E402
from ml.dsl.probe import make_probe_callback  # noqa: E402
from ml.dsl.teachers import ProgrammaticTeacher  # noqa: E402
from ml.training.ast_tokenizer import build_ast_tokenizer  # noqa: E402
from ml.training.base_model import build_base_model, save_base_model  # noqa: E402
from ml.training.sft import PhaseConfig, load_adapter, train_lora_sft  # noqa: E402

TRAIN_DOMAINS = ("library", "movies", "orders", "flights")


def build_rows(queries_per_domain: int, seed: int, schema_view: str = "json") -> tuple[list[dict], dict, dict]:
    teacher = ProgrammaticTeacher()
    rows, schemas, specs = [], {}, {}
    for name in TRAIN_DOMAINS:
        spec, _ = teacher.domain_spec(name, seed=seed, examples=0)
        schema = build_schema(spec)
        specs[name], schemas[name] = spec, schema
        for q in teacher.queries(spec, schema, queries_per_domain, seed=seed):
            rows.append({"id": f"{name}:{len(rows)}", "domain": name, "lang": q.lang, "query": q.text,
                         "group": "seen", "prompt": prompt_text(schema, q.text, schema_view),
                         "completion": ast_to_text(q.ast)})
    return rows, schemas, specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--probe-every", type=int, default=100)
    ap.add_argument("--probe-samples", type=int, default=48)
    ap.add_argument("--queries", type=int, default=600, help="requests per training domain (EN + FR)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--learning-rate", type=float, default=3e-3)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--split", default="wordpunct", help="BPE pre-tokenization: whitespace | words | wordpunct")
    ap.add_argument("--max-token-length", type=int, default=0, help="longest BPE token (0 = no limit)")
    ap.add_argument("--schema-view", default="digest", help="what the prompt shows of the schema: json | digest")
    ap.add_argument("--lora-r", type=int, default=64)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    rows, schemas, specs = build_rows(args.queries, args.seed, args.schema_view)
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    probe, train = rows[: args.probe_samples], rows[args.probe_samples :]
    tok = build_ast_tokenizer("tiny:gemma3_text", [r["prompt"] + r["completion"] for r in train], [], 4000,
                              split=args.split, max_token_length=args.max_token_length or None)
    plan = resolve_compute(device=args.device)
    teacher = ProgrammaticTeacher()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        save_base_model(build_base_model("tiny:gemma3_text", tok, seed=0), tok, base)
        cfg = PhaseConfig(
            max_steps=args.steps, learning_rate=args.learning_rate, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size, warmup_steps=10, weight_decay=0.01, max_length=1024,
            logging_steps=50, eval_steps=args.probe_every, save_steps=args.steps,
            lora_r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=args.lora_dropout,
            separator="", add_eos=False, trainable_embeddings="all", lr_scheduler_type="linear",
        )
        pairs = [(r["prompt"], r["completion"] + tok.eos_token) for r in train]
        eval_pairs = [(r["prompt"], r["completion"] + tok.eos_token) for r in probe[:16]]
        callback = make_probe_callback(tok, probe, schemas, specs, teacher,
                                       on_result=lambda step, e: print("probe", step, e, flush=True))
        result = train_lora_sft(base, tok, pairs, eval_pairs, Path(tmp) / "out", Path(tmp) / "work", cfg, plan,
                                on_log=lambda step, logs: print(step, logs, flush=True), callbacks=[callback])
        # Partial credit on the probe requests: how many comparisons the final student gets right.
        from ml.dsl.format import parse_completion
        from ml.dsl.probe import generate

        model = load_adapter(base, Path(tmp) / "out", plan).merge_and_unload()
        outputs = generate(model, tok, probe, schemas, constrained=True)
        f1 = [comparison_f1(parse_completion(o)[0], json.loads(r["completion"])) for o, r in zip(outputs, probe)]
    curve = sorted({s: v for s, m, v in result.curve if m == "probe_semantic_pass_rate_constrained"}.items())
    reached = [s for s, v in curve if v >= args.target]
    print(json.dumps({
        "device": plan.device, "steps": result.steps, "batch_size": args.batch_size,
        "tokens_per_s": round(result.tokens_per_s, 1), "curve": [[s, round(v, 3)] for s, v in curve],
        "steps_to_target": reached[0] if reached else None, "comparison_f1": round(sum(f1) / len(f1), 4),
        "eval_loss_final": round(result.eval_loss_final, 4), "split": args.split, "schema_view": args.schema_view,
        "lora_r": args.lora_r,
        "target": args.target,
        "seconds": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
