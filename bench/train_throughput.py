"""Training throughput: naive padded random batches vs the project's length-grouped batching.

    python bench/train_throughput.py [--steps 30] [--batch-size 16] [--parquet PATH [--column ast_text]]

Same tiny model (``tiny:qwen2``, same seed), same data (AST-like texts of widely varying length,
synthesized, or the ``ast_text``/``text`` column of a Phase 1/2 parquet), same number of steps,
both through the real Phase 1 trainer (TRL ``SFTTrainer``); only the train sampler differs.
``tokens_per_s`` counts real (non-pad) tokens over the time spent in training steps.
Last line: {"tokens_per_s", "baseline_tokens_per_s", "speedup", "real_token_fraction", "peak_rss_mb", ...}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import os
import random
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import emit, peak_rss_mb

from ml.codec.python_ast import structural_vocabulary

# The real compact-codec vocabulary; the synthetic texts below use a few of its tokens.
STRUCT = structural_vocabulary()


def synth_texts(n: int, seed: int = 0) -> list[str]:
    """AST-like functions whose lengths span ~20 to ~1000 tokens (log-uniform statement counts)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        stmts = round(2 ** rng.uniform(0, 6.3))  # 1 .. ~80 statements
        body = []
        for _ in range(stmts):
            kind = rng.random()
            def v():
                return f"var_{rng.randint(0, 9)}"

            if kind < 0.4:
                body.append(f"<Assign>{v()}<BinOp>{v()}<op:{rng.choice(['Add', 'Mult'])}>{v()}<close>")
            elif kind < 0.7:
                body.append(
                    f"<Expr><Call>{v()}<arg>{v()}<close><arg><const>{rng.randint(0, 999)}<close><close>"
                )
            else:
                body.append(f"<If><Compare>{v()}<op:Lt>{v()}<close><indent><Return>{v()}<dedent>")
        out.append(
            f"<FunctionDef>var_0<arguments><arg>var_1<close><end><close><indent>{''.join(body)}"
            f"<Return>var_1<dedent>"
        )
    return out


def read_texts(path: str, column: str | None, limit: int) -> list[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    col = column or next(c for c in ("ast_text", "text") if c in table.column_names)
    texts = [t for t in table.column(col).to_pylist() if t]
    random.Random(0).shuffle(texts)
    return texts[:limit]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--parquet", default=None)
    ap.add_argument("--column", default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from ml.compute import resolve_compute
    from ml.training import PhaseConfig, build_ast_tokenizer, build_base_model, save_base_model, train_phase1
    from ml.training.batching import length_grouped_batches, random_batches, real_token_fraction

    n = args.steps * args.batch_size
    texts = read_texts(args.parquet, args.column, n) if args.parquet else synth_texts(n)
    if args.parquet:
        from ml.codec.tokens import STRUCT_RE

        vocab = sorted({m for t in texts for m in STRUCT_RE.findall(t)})
    else:
        vocab = STRUCT
    tok = build_ast_tokenizer("tiny:qwen2", texts, vocab, vocab_size=2000)
    plan = resolve_compute()
    torch.manual_seed(0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        save_base_model(build_base_model("tiny:qwen2", tok, seed=0, plan=plan), tok, base)
        for name, grouped in (("baseline", False), ("grouped", True)):
            cfg = PhaseConfig(
                max_steps=args.steps,
                per_device_train_batch_size=args.batch_size,
                max_length=args.max_length,
                group_by_length=grouped,
                logging_steps=args.steps,
                eval_steps=10 * args.steps,
                save_steps=10 * args.steps,
                warmup_steps=0,
            )
            r = train_phase1(
                base,
                tok,
                texts,
                [],
                Path(tmp) / name / "out",
                Path(tmp) / name / "work",
                cfg,
                plan,
                on_log=lambda *_: None,
            )
            results[name] = r
            print(
                f"{name}: {r.tokens_per_s:.0f} real tokens/s, real_token_fraction {r.real_token_fraction:.3f}",
                file=sys.stderr,
            )
    lengths = [len(x) + 1 for x in tok(texts, add_special_tokens=False)["input_ids"]]
    lengths = [min(x, args.max_length) for x in lengths]
    emit(
        {
            "tokens_per_s": round(results["grouped"].tokens_per_s, 1),
            "baseline_tokens_per_s": round(results["baseline"].tokens_per_s, 1),
            "speedup": round(results["grouped"].tokens_per_s / results["baseline"].tokens_per_s, 3),
            "real_token_fraction": round(results["grouped"].real_token_fraction, 4),
            "baseline_real_token_fraction": round(results["baseline"].real_token_fraction, 4),
            "planned_real_token_fraction": round(
                real_token_fraction(length_grouped_batches(lengths, args.batch_size), lengths), 4
            ),
            "planned_baseline_fraction": round(
                real_token_fraction(random_batches(lengths, args.batch_size), lengths), 4
            ),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "texts": len(texts),
            "device": plan.device,
            "threads": torch.get_num_threads(),
            "peak_rss_mb": peak_rss_mb(),
        }
    )


if __name__ == "__main__":
    main()
