"""The AST-first phases with TRL: Phase 1 (causal LM over AST text) and Phase 2 (docstring → AST).

Phase 1 trains LoRA adapters on the attention/MLP projections plus the rows of the embedding
matrix that belong to the AST tokens (peft ``trainable_token_indices``; the tied ``lm_head`` follows
the same delta). Phase 2 continues the Phase 1 LoRA with the AST rows frozen, on a
prompt–completion dataset, so TRL masks the prompt from the loss (:func:`ml.training.lora_sft.continue_lora_sft`).
"""

from __future__ import annotations

from pathlib import Path

from ml.compute import ComputePlan
from ml.models.loading import load_base
from ml.training.glue import OnLog
from ml.training.lora_sft import build_continue_lora_trainer, continue_lora_sft
from ml.training.sft_trainer import (
    PhaseConfig,
    TrainResult,
    lora_config,
    make_trainer_class,
    run_trainer,
    sft_config,
    trainable_token_ids,
    trainer_callbacks,
)
from ml.training.unsloth_backend import require_hf_backend


def train_phase1(
    base_dir,
    tokenizer,
    texts: list[str],
    eval_texts: list[str],
    out_dir,
    work_dir,
    cfg: PhaseConfig,
    plan: ComputePlan,
    on_log: OnLog | None = None,
) -> TrainResult:
    """LoRA + trainable AST embedding rows on a causal-LM dataset ``{"text": ...}``. Checkpoints go to
    ``work_dir``; a later call resumes from its last checkpoint. The adapter and tokenizer go to
    ``out_dir``. Texts longer than ``cfg.max_length`` are truncated by TRL (``dropped_truncated`` = 0)."""
    trainer = build_phase1_trainer(base_dir, tokenizer, texts, eval_texts, work_dir, cfg, plan, on_log)
    return run_trainer(trainer, Path(work_dir), Path(out_dir), tokenizer, dropped=0)


def build_phase1_trainer(
    base_dir,
    tokenizer,
    texts: list[str],
    eval_texts: list[str],
    work_dir,
    cfg: PhaseConfig,
    plan: ComputePlan,
    on_log: OnLog | None = None,
):
    """The Phase 1 trainer (not yet trained)."""
    from datasets import Dataset

    require_hf_backend(plan, "AST phase 1 (LoRA + trainable AST embedding rows)")
    Trainer, LogCb = make_trainer_class()
    if not texts:
        raise ValueError("train_phase1: no training texts")
    model = load_base(base_dir, plan, cfg.gradient_checkpointing)
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    ids = trainable_token_ids(cfg, tokenizer, vocab_rows)
    if len(tokenizer) != vocab_rows:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the base model at {base_dir} has {vocab_rows}"
        )
    peft_cfg = lora_config(cfg, model, ids)
    train_ds = Dataset.from_dict({"text": list(texts)})
    eval_ds = Dataset.from_dict({"text": list(eval_texts)}) if eval_texts else None
    has_eval = eval_ds is not None
    return Trainer(
        model=model,
        args=sft_config(cfg, plan, Path(work_dir), has_eval),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_cfg,
        callbacks=trainer_callbacks(on_log, LogCb, cfg, has_eval),
        group_by_length=cfg.group_by_length,
        mega_batch_mult=cfg.mega_batch_mult,
    )



# --------------------------------------------------------------------------- Phase 2


def train_phase2(
    base_dir,
    phase1_adapter_dir,
    tokenizer,
    pairs: list[tuple[str, str]],
    eval_pairs: list[tuple[str, str]],
    out_dir,
    work_dir,
    cfg: PhaseConfig,
    plan: ComputePlan,
    on_log: OnLog | None = None,
) -> TrainResult:
    """Docstring → AST: continue the Phase 1 LoRA (base and AST embedding rows frozen) on
    ``{"prompt": nl + separator, "completion": ast + eos}``; TRL masks the prompt (labels -100)."""
    return continue_lora_sft(base_dir, phase1_adapter_dir, tokenizer, pairs, eval_pairs, out_dir, work_dir, cfg, plan,
                             on_log, what="phase 2")


def build_phase2_trainer(
    base_dir,
    phase1_adapter_dir,
    tokenizer,
    pairs,
    eval_pairs,
    work_dir,
    cfg: PhaseConfig,
    plan: ComputePlan,
    on_log: OnLog | None = None,
):
    """The Phase 2 trainer (not yet trained) and the number of dropped (truncated) pairs."""
    return build_continue_lora_trainer(base_dir, phase1_adapter_dir, tokenizer, pairs, eval_pairs, work_dir, cfg,
                                       plan, on_log, what="phase 2")
