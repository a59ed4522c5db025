"""Schema-constrained DSL decoding benchmark: wall time of greedy generation with and without the llguidance
JSON-Schema constraint (ml.dsl.constrained), and the per-step cost of the mask.

    python bench/dsl_eval.py [--samples 32] [--max-new-tokens 96] [--batch-size 8] [--repeats 1]
                             [--model DIR [--adapter DIR] | --train-steps 300] [--threads N] [--schema-view digest|json]

Without ``--model``: a byte-level BPE tokenizer is trained on prompt+completion texts of every domain and a tiny
Gemma 3 (random init, seed 0) is built from config, then gets ``--train-steps`` (default 300, ≈ 2 min on 2 CPU
cores) steps of LoRA SFT with the demo's settings, so that the timings are those of a student that writes JSON-like
answers, as the evaluation assets decode. ``--train-steps 0`` times the random-init model, the worst case: it writes
noise, and the length budget must steer nearly every row to a close (``budget_closed``). ``--model DIR`` loads a
saved HF model folder (and its tokenizer); ``--adapter DIR`` puts a PEFT adapter over it. ``--samples`` prompts are
spread over the domains (seeded domain specs and requests from the programmatic teacher).

Fair ratio: an untrained model writes until ``max_new_tokens`` while the constraint would stop it at the first
complete object, so both runs use ``fixed_length``: every batch runs exactly ``max_new_tokens`` steps (EOS does not
stop generation; a constrained row whose object is complete keeps being masked to EOS, and the length budget closes
rows that run long). Both runs therefore pay the same forward passes and ``overhead = constrained_s /
unconstrained_s`` is the cost of the constraint alone. A warm-up pass (both modes, 2 new tokens, same prompts)
comes first, so torch start-up and llguidance's per-schema work (schema → grammar, ``grammar_s``; the template
matcher, both cached per schema) are not in the timings. With ``--repeats`` > 1 the runs alternate and the median
time of each mode is reported. On a shared CPU, ``--threads 1`` avoids oversubscribed torch threads, which make
every step several times slower and the ratio meaningless.

``mask_us_*`` are per step for the whole batch: consuming the newest tokens and filling the token bitmask
(``JsonSchemaLogitsProcessor.mask_us``); ``call_us_p50`` is the whole processor call (incl. the length-budget
check and applying the mask). ``valid_*`` = the fraction of outputs that parse and validate (jsonschema).
Last line: {"samples", "unconstrained_s", "constrained_s", "overhead", "mask_us_p50", ...}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from _common import emit

from ml.dsl import DOMAIN_NAMES, build_domain, build_schema, generate_examples, is_valid
from ml.dsl.constrained import generate_json
from ml.dsl.format import ast_to_text, build_prompt, parse_completion, prompt_text
from ml.dsl.schema_grammar import grammar_for


def load(args):
    """(model, tokenizer): a saved folder (+ adapter) or the tiny Gemma 3 on a tokenizer trained here."""
    if args.model:
        from transformers import AutoModelForCausalLM

        from ml.models.loading import load_tokenizer

        tok = load_tokenizer(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model)
        if args.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, args.adapter)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        from ml.training.ast_tokenizer import build_ast_tokenizer
        from ml.training.base_model import build_base_model

        texts = []
        for name in DOMAIN_NAMES:
            domain = build_domain(name, 0)
            schema = build_schema(domain)
            texts += [prompt_text(schema, e.text, args.schema_view) + ast_to_text(e.ast)
                      for e in generate_examples(domain, 30, seed=0)]
        tok = build_ast_tokenizer("tiny:gemma3_text", texts, [], args.vocab_size, split="wordpunct")
        model = build_base_model("tiny:gemma3_text", tok, seed=0)
        if args.train_steps:
            model = train_student(model, tok, args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tok


def train_student(model, tok, args):
    """The tiny model after ``args.train_steps`` steps of LoRA SFT (the demo's settings) on requests of every domain
    (request seed 0; the timed requests use ``args.seed``), merged: a student that writes JSON-like answers, as
    the evaluation assets decode with, instead of a random model's noise."""
    import tempfile

    from ml.compute import resolve_compute
    from ml.models.loading import load_merged
    from ml.training.base_model import save_base_model
    from ml.training.lora_sft import train_lora_sft
    from ml.training.sft_trainer import PhaseConfig

    pairs = []
    for name in DOMAIN_NAMES:
        domain = build_domain(name, 0)
        schema = build_schema(domain)
        pairs += [(prompt_text(schema, e.text, args.schema_view), ast_to_text(e.ast) + tok.eos_token)
                  for e in generate_examples(domain, 200, seed=0)]
    plan = resolve_compute(device="auto")
    cfg = PhaseConfig(
        max_steps=args.train_steps, learning_rate=3e-3, per_device_train_batch_size=8, warmup_steps=10,
        weight_decay=0.01, max_length=1024, logging_steps=max(1, args.train_steps // 4), eval_steps=10**9,
        save_steps=10**9, lora_r=64, lora_alpha=128, lora_dropout=0.05, separator="", add_eos=False,
        trainable_embeddings="all", lr_scheduler_type="linear",
    )
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        save_base_model(model, tok, base)
        t0 = time.perf_counter()
        train_lora_sft(base, tok, pairs, [], Path(tmp) / "out", Path(tmp) / "work", cfg, plan,
                       on_log=lambda step, logs: print("train", step, logs.get("loss"), flush=True))
        print(f"trained {args.train_steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
        return load_merged(base, Path(tmp) / "out", plan)


def requests(tok, n: int, seed: int, schema_view: str) -> tuple[list[str], list[dict]]:
    """``n`` prompts spread over the domains (domain spec seed 0, request seed ``seed``), interleaved so that a
    batch mixes schemas."""
    per = [[] for _ in DOMAIN_NAMES]
    k = -(-n // len(DOMAIN_NAMES))
    for j, name in enumerate(DOMAIN_NAMES):
        domain = build_domain(name, 0)
        schema = build_schema(domain)
        examples = generate_examples(domain, k, seed=seed)
        per[j] = [(build_prompt(tok, schema, e.text, schema_view), schema) for e in examples]
    mixed = [row[i] for i in range(k) for row in per if i < len(row)][:n]
    return [p for p, _ in mixed], [s for _, s in mixed]


def valid_fraction(texts: list[str], schemas: list[dict]) -> float:
    ok = 0
    for text, schema in zip(texts, schemas):
        ast, _ = parse_completion(text)
        ok += ast is not None and is_valid(ast, schema)
    return round(ok / len(texts), 4)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(len(s) * q))], 1) if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--model", default=None, help="saved HF model folder (default: tiny Gemma 3, random init)")
    ap.add_argument("--adapter", default=None, help="PEFT adapter folder over --model")
    ap.add_argument("--vocab-size", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=300, help="without --model: LoRA SFT steps on the tiny model "
                    "before timing (0 = random init, the worst case: the length budget steers most rows)")
    ap.add_argument("--schema-view", default="digest", help="prompt's view of the schema (json | digest), as the "
                    "demo profile's dsl_training_corpus")
    args = ap.parse_args()
    if args.adapter and not args.model:
        ap.error("--adapter needs --model")
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load(args)
    prompts, schemas = requests(tok, args.samples, args.seed, args.schema_view)
    t0 = time.perf_counter()
    for s in schemas:
        grammar_for(s)
    grammar_s = time.perf_counter() - t0

    common = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, fixed_length=True)
    generate_json(model, tok, prompts, schemas, **{**common, "max_new_tokens": 2}, constrained=False)  # warm-up
    generate_json(model, tok, prompts, schemas, **{**common, "max_new_tokens": 2}, constrained=True)
    free_s, cons_s = [], []
    for _ in range(args.repeats):
        free = generate_json(model, tok, prompts, schemas, **common, constrained=False)
        cons = generate_json(model, tok, prompts, schemas, **common, constrained=True)
        free_s.append(free.seconds)
        cons_s.append(cons.seconds)
    unconstrained_s, constrained_s = statistics.median(free_s), statistics.median(cons_s)

    for text in cons.texts[:2]:
        print("sample:", text[:300])
    emit({
        "samples": len(prompts),
        "unconstrained_s": round(unconstrained_s, 2),
        "constrained_s": round(constrained_s, 2),
        "overhead": round(constrained_s / unconstrained_s, 3),
        "mask_us_p50": pct(cons.mask_us, 0.5),
        "mask_us_p99": pct(cons.mask_us, 0.99),
        "call_us_p50": pct(cons.call_us, 0.5),
        "steps": len(cons.mask_us),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "valid_constrained": valid_fraction(cons.texts, schemas),
        "valid_unconstrained": valid_fraction(free.texts, schemas),
        "budget_closed": sum(cons.closed),
        "grammar_s": round(grammar_s, 2),
        "threads": torch.get_num_threads(),
        "schema_view": args.schema_view,
        "device": str(next(model.parameters()).device),
        "model": args.model or (f"tiny:gemma3_text ({args.train_steps} SFT steps)" if args.train_steps
                                else "tiny:gemma3_text (random init)"),
    })


if __name__ == "__main__":
    main()
