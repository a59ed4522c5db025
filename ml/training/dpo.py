"""Direct preference optimisation (TRL ``DPOTrainer``) that continues a LoRA adapter.

The policy starts as base + the SFT adapter (trainable); the reference is the same SFT model merged and frozen,
so the KL anchor is the SFT student, not the bare base. The saved adapter loads onto the same base with
``PeftModel.from_pretrained``, like the SFT adapter it continues.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ml.compute import ComputePlan
from ml.models.loading import expose_lm_head_bias, load_adapter, load_merged
from ml.training.glue import OnLog, curve, last_checkpoint, log_callback, quiet_printer
from ml.training.trainer_config import trl_config
from ml.training.unsloth_backend import require_hf_backend


@dataclass
class DPOSettings:
    beta: float = 0.1
    max_steps: int = 500
    learning_rate: float = 5e-6
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 8
    warmup_steps: int = 50
    logging_steps: int = 10
    save_steps: int = 100
    save_total_limit: int = 2
    max_length: int = 1024
    max_grad_norm: float = 1.0
    # > 0 adds the chosen answers' NLL (TRL loss_type "sft") with this weight to the sigmoid DPO loss (RPO): pushing
    # the rejected answer down then cannot drag the chosen one and the JSON format with it. 0 = plain DPO.
    sft_weight: float = 0.0
    seed: int = 0


@dataclass
class DPOResult:
    out_dir: str
    steps: int
    train_loss: float
    pairs: int
    dropped_too_long: int
    curve: list[tuple[int, str, float]]
    resumed_from: str | None
    seconds: float


DPO_CURVE = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "learning_rate")


def dpo_config(cfg: DPOSettings, plan: ComputePlan, work_dir):
    """TRL's ``DPOConfig`` for ``cfg``: ``sft_weight`` > 0 adds the chosen answers' NLL with that weight (RPO)."""
    from trl import DPOConfig

    return trl_config(
        DPOConfig, cfg, plan, work_dir,
        ("beta", "max_steps", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
         "warmup_steps", "logging_steps", "save_steps", "save_total_limit", "max_length", "max_grad_norm"),
        save_strategy="steps",
        loss_type=["sigmoid", "sft"] if cfg.sft_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight > 0 else None,
        gradient_checkpointing=False,
    )


def _fits(tokenizer, row: dict, max_length: int) -> bool:
    n_prompt = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
    longest = max(len(tokenizer(row[k], add_special_tokens=False)["input_ids"]) for k in ("chosen", "rejected"))
    return n_prompt + longest <= max_length


def train_dpo(
    base_dir,
    sft_adapter_dir,
    tokenizer,
    pairs: Sequence[dict],
    out_dir,
    work_dir,
    cfg: DPOSettings,
    plan: ComputePlan,
    on_log: OnLog | None = None,
) -> DPOResult:
    """DPO on ``{"prompt", "chosen", "rejected"}`` rows (completions end with EOS). Pairs longer than
    ``cfg.max_length`` are dropped, never truncated. Checkpoints in ``work_dir``; a re-run resumes."""
    from datasets import Dataset
    from trl import DPOTrainer

    require_hf_backend(plan, "DPO")
    rows = [r for r in pairs if _fits(tokenizer, r, cfg.max_length)]
    dropped = len(pairs) - len(rows)
    if not rows:
        raise ValueError(f"DPO: no preference pairs left ({dropped} longer than {cfg.max_length} tokens dropped)")
    policy = load_adapter(base_dir, sft_adapter_dir, plan=plan, is_trainable=True)
    reference = load_merged(base_dir, sft_adapter_dir, plan).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    args = dpo_config(cfg, plan, work_dir)

    trainer = DPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer, callbacks=[log_callback(on_log)] if on_log is not None else [],
    )
    expose_lm_head_bias(trainer.model)
    if on_log is not None:
        quiet_printer(trainer)
    resume = last_checkpoint(work_dir, trainer.args)
    started = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    result = DPOResult(
        out_dir=str(out_dir), steps=int(trainer.state.global_step), train_loss=float(out.training_loss),
        pairs=len(rows), dropped_too_long=dropped, curve=curve(trainer.state.log_history, DPO_CURVE),
        resumed_from=resume,
        seconds=time.perf_counter() - started,
    )
    (out_dir / "train_result.json").write_text(json.dumps(result.__dict__, indent=1))
    return result
