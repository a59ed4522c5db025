"""How close the DSL student's SFT step comes to this machine's matmul limit, and what each training lever gains.

    python bench/train_efficiency.py --home /path/to/ASTFORGE_HOME [--steps 3] [--repeats 2] [--profile]
    python bench/train_efficiency.py --corpus rows.parquet --base FOLDER

Times a large fp32 GEMM (``torch.matmul``, the threads training uses) → ``gemm_gflops``, then the first ``--steps``
batches of the demo's own DSL SFT run (``dsl_sft_adapter``'s trainer: the `dsl` demo profile's batch, length, LoRA
layers and precision, the real ``dsl_training_corpus`` rows, the length-grouped sampler's first batches) through the
trainer's ``training_step`` (forward + backward; the LoRA optimizer update is negligible) under each variant, the
variants interleaved so that the shared machine's load falls on all alike:

- ``baseline``: the model's own loss, the LM head over every position (the path before ml.training.completion_loss);
- ``completion_head``: the LM head on the supervised (completion) positions only (the trainer's default now).

Model FLOPs per step are counted from the modules (ml.training.flops: the backward stops at the lowest LoRA layer,
frozen weights get no weight gradient; not 6·N·T). ``ratio`` = achieved GFLOP/s of the step / the GEMM's.
``--home``: an ASTFORGE_HOME where ``dsl_training_corpus`` and ``dsl_base_model`` are materialized (any `make demo`
run's). Last line: ``{"gemm_gflops", "threads", "tokens_per_step": {"real", "padded", "supervised"}, "variants":
{name: {"sft_step_s", "sft_gflops", "ratio", "gflop_per_step"}}, "speedup"}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import torch
from _common import emit, peak_rss_mb

VARIANTS = {"baseline": False, "completion_head": True}  # -> the trainer's logits_where_loss


def gemm_gflops(n: int, repeats: int = 3) -> float:
    """GFLOP/s of an ``n × n`` fp32 matmul on torch's current threads (best of ``repeats``, after a warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _latest(home: Path, asset: str) -> Path:
    """The newest materialized folder of ``asset`` under ``home`` (artifacts/<asset>/all/<version>)."""
    found = sorted((home / "artifacts" / asset / "all").glob("*/_manifest.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no materialized {asset} under {home}: run the dsl data assets first (make demo)")
    return found[-1].parent


def build_trainer(corpus: Path, base: Path, work: Path):
    """The demo's ``dsl_sft_adapter`` trainer (its config's defaults), on the rows of ``corpus``."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from assets.dsl_models import DslSftConfig
    from ml.compute import resolve_compute
    from ml.dsl.recipe import model_inputs, sft_phase_config, sft_rows
    from ml.training.lora_sft import build_lora_sft_trainer

    config = DslSftConfig()
    rows = pq.read_table(corpus).to_pylist()
    tok = AutoTokenizer.from_pretrained(str(base))
    train, val = sft_rows(rows, config.eval_max_samples, config.seed)
    cfg = sft_phase_config(config.model_dump(), tiny_base=False)
    plan = resolve_compute(device="cpu", precision=config.precision)
    trainer, _ = build_lora_sft_trainer(base, tok, model_inputs(tok, train), model_inputs(tok, val), work, cfg, plan)
    return trainer, cfg, plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default=os.environ.get("ASTFORGE_HOME", ".astforge"))
    ap.add_argument("--corpus", default="", help="dsl_training_corpus rows.parquet (default: the newest in --home)")
    ap.add_argument("--base", default="", help="dsl_base_model folder (default: the newest in --home)")
    ap.add_argument("--steps", type=int, default=3, help="batches timed per variant and repeat")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gemm-size", type=int, default=2048)
    ap.add_argument("--variant", choices=["all", *VARIANTS], default="all")
    ap.add_argument("--profile", action="store_true", help="torch.profiler table of one step per variant (stderr)")
    args = ap.parse_args()

    from ml.training.flops import sft_step_flops

    home = Path(args.home)
    corpus = Path(args.corpus) if args.corpus else _latest(home, "dsl_training_corpus") / "rows.parquet"
    base = Path(args.base) if args.base else _latest(home, "dsl_base_model")
    trainer, cfg, plan = build_trainer(corpus, base, Path(tempfile.mkdtemp(prefix="train-eff-")))
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop, which this bench does not run
    loader = iter(trainer.get_train_dataloader())
    batches = [next(loader) for _ in range(args.steps + 1)]  # the run's first batches; the first is the warm-up
    warm, batches = batches[0], batches[1:]
    variants = list(VARIANTS) if args.variant == "all" else [args.variant]

    def step(batch, where: bool) -> float:
        trainer.logits_where_loss = where
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        trainer.training_step(model, batch)
        return time.perf_counter() - t0

    for name in variants:
        step(warm, VARIANTS[name])
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name in variants:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(batches[0], VARIANTS[name])
            print(f"--- {name}\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14),
                  file=sys.stderr)

    def flops(batch, where: bool) -> float:
        b, length = batch["input_ids"].shape
        rows = int((batch["labels"][:, 1:] != -100).sum()) if where else b * length
        return sft_step_flops(model, b, length, rows)["total"]

    times: dict[str, list[float]] = {n: [] for n in variants}
    gemms: list[float] = []
    for _ in range(args.repeats):
        gemms.append(gemm_gflops(args.gemm_size))
        for name in variants:
            times[name].append(sum(step(b, VARIANTS[name]) for b in batches) / len(batches))
    gemm = statistics.median(gemms)
    result_variants = {}
    for name in variants:
        work = sum(flops(b, VARIANTS[name]) for b in batches) / len(batches)
        seconds = statistics.median(times[name])
        result_variants[name] = {"sft_step_s": round(seconds, 3), "sft_step_s_runs": [round(t, 3) for t in times[name]],
                                 "gflop_per_step": round(work / 1e9, 1), "sft_gflops": round(work / seconds / 1e9, 2),
                                 "ratio": round(work / seconds / 1e9 / gemm, 3)}
    real = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
    padded = sum(b["attention_mask"].numel() for b in batches) / len(batches)
    supervised = sum(int((b["labels"] != -100).sum()) for b in batches) / len(batches)
    out = {"bench": "train_efficiency", "device": plan.device, "precision": plan.dtype,
           "threads": torch.get_num_threads(), "gemm_size": args.gemm_size, "gemm_gflops": round(gemm, 2),
           "gemm_gflops_runs": [round(g, 2) for g in gemms], "steps": args.steps, "repeats": args.repeats,
           "batch_size": cfg.per_device_train_batch_size, "lora_top_layers": cfg.lora_top_layers,
           "tokens_per_step": {"real": round(real), "padded": round(padded), "supervised": round(supervised)},
           "flop_count": "per-module (ml.training.flops), not 6NT", "variants": result_variants,
           "peak_rss_mb": peak_rss_mb()}
    if len(variants) == 2:
        out["speedup"] = round(result_variants["baseline"]["sft_step_s"]
                               / result_variants["completion_head"]["sft_step_s"], 3)
    emit(out)


if __name__ == "__main__":
    main()
