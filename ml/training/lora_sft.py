"""LoRA SFT on ``(prompt, completion)`` pairs with completion-only loss (TRL masks the prompt): a fresh LoRA
(:func:`train_lora_sft`: the DSL student, the srl warm-up, autocomplete's Stage A) or an adapter's LoRA continued
with everything else frozen (:func:`continue_lora_sft`: AST Phase 2, autocomplete's Stage B)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ml.compute import ComputePlan
from ml.models.loading import load_adapter, load_base
from ml.training.glue import OnLog
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
from ml.training.unsloth_backend import UNSLOTH, require_hf_backend, unsloth_lora_model
from ml.training.unsloth_backend import trainer_settings as unsloth_trainer_settings


def prompt_completion_rows(
    tokenizer, pairs: Sequence[tuple[str, str]], cfg: PhaseConfig
) -> tuple[list[dict], list[int], int]:
    """``{"prompt", "completion"}`` rows (``{"input_ids", "labels"}`` with ``cfg.tokenize_separately``), the
    supervised-token count of each kept row, and how many pairs were dropped because prompt + completion exceeds
    ``cfg.max_length`` (the completion would be truncated)."""
    eos = tokenizer.eos_token if cfg.add_eos else ""
    rows, supervised, dropped = [], [], 0
    for nl, ast_text in pairs:
        prompt = nl + cfg.separator
        completion = ast_text + eos
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if cfg.tokenize_separately:
            c = tokenizer(completion, add_special_tokens=False)["input_ids"]
            if len(p) + len(c) > cfg.max_length:
                dropped += 1
                continue
            # pre-tokenized rows with their labels: TRL trains on them as they are
            rows.append({"input_ids": p + c, "labels": [-100] * len(p) + c})
            supervised.append(len(c))
            continue
        full = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
        if len(full) > cfg.max_length:
            dropped += 1
            continue
        k = 0
        while k < min(len(p), len(full)) and p[k] == full[k]:
            k += 1
        rows.append({"prompt": prompt, "completion": completion})
        supervised.append(len(full) - k)
    return rows, supervised, dropped


def check_supervised_batches(supervised: Sequence[int], batch_size: int, what: str) -> None:
    """Raise ``ValueError`` if the data is empty or any batch of ``batch_size`` consecutive rows has no
    supervised token (its loss is 0/0: eval_loss NaN)."""
    if not supervised:
        raise ValueError(f"{what}: no examples left (all dropped as truncated, or none given)")
    batches = [supervised[i : i + batch_size] for i in range(0, len(supervised), batch_size)]
    empty = sum(1 for b in batches if sum(b) == 0)
    rows = sum(1 for s in supervised if s == 0)
    if empty or rows:
        raise ValueError(
            f"{what}: {empty} of {len(batches)} batches (batch size {batch_size}) and {rows} examples have zero "
            "supervised (completion) tokens; such batches give eval_loss NaN. Drop pairs with empty completions."
        )



def checked_rows(tokenizer, pairs, eval_pairs, cfg: PhaseConfig, what: str) -> tuple[list, list, int]:
    """Train and eval prompt–completion rows (too-long pairs dropped, counted together), each set checked for
    batches without supervised tokens before any training starts."""
    rows, sup, dropped = prompt_completion_rows(tokenizer, pairs, cfg)
    check_supervised_batches(sup, cfg.per_device_train_batch_size, f"{what} train set")
    eval_rows, eval_sup, eval_dropped = (
        prompt_completion_rows(tokenizer, eval_pairs, cfg) if eval_pairs else ([], [], 0)
    )
    if eval_pairs:
        check_supervised_batches(eval_sup, cfg.per_device_eval_batch_size, f"{what} eval set")
    return rows, eval_rows, dropped + eval_dropped


def continue_lora_sft(
    base_dir,
    adapter_dir,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    eval_pairs: Sequence[tuple[str, str]],
    out_dir,
    work_dir,
    cfg: PhaseConfig,
    plan: ComputePlan,
    on_log: OnLog | None = None,
    what: str = "continued SFT",
) -> TrainResult:
    """Continue the LoRA of ``adapter_dir`` (base and trained embedding rows frozen) on
    ``{"prompt": prompt + separator, "completion": completion + eos}``; TRL masks the prompt (labels -100)."""
    trainer, dropped = build_continue_lora_trainer(
        base_dir, adapter_dir, tokenizer, pairs, eval_pairs, work_dir, cfg, plan, on_log, what
    )
    return run_trainer(trainer, Path(work_dir), Path(out_dir), tokenizer, dropped=dropped)


def build_continue_lora_trainer(
    base_dir,
    adapter_dir,
    tokenizer,
    pairs,
    eval_pairs,
    work_dir,
    cfg: PhaseConfig,
    plan: ComputePlan,
    on_log: OnLog | None = None,
    what: str = "continued SFT",
):
    """The trainer of :func:`continue_lora_sft` (not yet trained) and the number of dropped (truncated) pairs;
    ``what`` names the data in errors."""
    from datasets import Dataset

    require_hf_backend(plan, what)
    Trainer, LogCb = make_trainer_class()
    rows, eval_rows, dropped = checked_rows(tokenizer, pairs, eval_pairs, cfg, what)
    model = load_adapter(
        base_dir,
        adapter_dir,
        plan=plan,
        is_trainable=True,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    for name, p in model.named_parameters():
        # LoRA continues; the base and the trained embedding rows (trainable_tokens_delta) stay frozen
        p.requires_grad = "lora_" in name
    has_eval = bool(eval_rows)
    trainer = Trainer(
        model=model,
        args=sft_config(cfg, plan, Path(work_dir), has_eval),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows) if has_eval else None,
        processing_class=tokenizer,
        callbacks=trainer_callbacks(on_log, LogCb, cfg, has_eval),
        group_by_length=cfg.group_by_length,
        mega_batch_mult=cfg.mega_batch_mult,
    )
    return trainer, dropped


def train_lora_sft(
    base_dir,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    eval_pairs: Sequence[tuple[str, str]],
    out_dir,
    work_dir,
    cfg: PhaseConfig,
    plan: ComputePlan,
    on_log: OnLog | None = None,
    callbacks: Sequence = (),
) -> TrainResult:
    """Train a fresh LoRA on ``(prompt, completion)`` pairs (see :func:`build_lora_sft_trainer`); checkpoints in
    ``work_dir`` (a re-run resumes), adapter and tokenizer in ``out_dir``."""
    trainer, dropped = build_lora_sft_trainer(
        base_dir, tokenizer, pairs, eval_pairs, work_dir, cfg, plan, on_log=on_log, callbacks=callbacks
    )
    return run_trainer(trainer, Path(work_dir), Path(out_dir), tokenizer, dropped=dropped)


def build_lora_sft_trainer(
    base_dir,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    eval_pairs: Sequence[tuple[str, str]],
    work_dir,
    cfg: PhaseConfig,
    plan: ComputePlan,
    on_log: OnLog | None = None,
    callbacks: Sequence = (),
):
    """The (untrained) trainer of a fresh LoRA on ``(prompt, completion)`` pairs with completion-only loss (TRL
    masks the prompt), and the number of pairs dropped as too long.

    Pairs whose prompt + completion exceed ``cfg.max_length`` are dropped (a cut completion would teach the
    model to stop mid-answer); the eval batches are checked for supervised tokens before training starts.
    ``cfg.trainable_embeddings``: "none" (LoRA only, for a pretrained base), "added" (plus the rows of the tokens
    appended after the base vocabulary, e.g. FIM tokens) or "all" (a random-init ``tiny:`` base also trains its
    embedding rows). Extra ``callbacks`` (``transformers.TrainerCallback``) are added. A plan with backend
    ``unsloth`` loads the base and adds the LoRA through unsloth (:mod:`ml.training.unsloth_backend`)."""
    from datasets import Dataset

    Trainer, LogCb = make_trainer_class()
    rows, eval_rows, dropped = checked_rows(tokenizer, pairs, eval_pairs, cfg, "SFT")
    if plan.backend == UNSLOTH:
        # FastLanguageModel loads the base and adds the same LoRA itself; the trainer below is the same
        model, peft_cfg = unsloth_lora_model(base_dir, tokenizer, cfg, plan), None
        cfg = unsloth_trainer_settings(cfg)
    else:
        model = load_base(base_dir, plan, cfg.gradient_checkpointing)
        ids = trainable_token_ids(cfg, tokenizer, model.get_input_embeddings().weight.shape[0])
        peft_cfg = lora_config(cfg, model, ids)
    has_eval = bool(eval_rows)
    trainer = Trainer(
        model=model,
        args=sft_config(cfg, plan, Path(work_dir), has_eval),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows) if has_eval else None,
        processing_class=tokenizer,
        peft_config=peft_cfg,
        callbacks=trainer_callbacks(on_log, LogCb, cfg, has_eval) + list(callbacks),
        group_by_length=cfg.group_by_length,
        mega_batch_mult=cfg.mega_batch_mult,
        added_tokens_lr_multiplier=cfg.added_tokens_lr_multiplier,
        fused_lm_head=cfg.fused_lm_head,
    )
    return trainer, dropped
