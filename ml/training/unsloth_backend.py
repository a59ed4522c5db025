"""``backend: unsloth``: a fresh LoRA SFT whose base is loaded by unsloth's ``FastLanguageModel`` (4-bit per the
compute plan) and whose LoRA is added by ``FastLanguageModel.get_peft_model`` with the very settings of the PEFT path
(:func:`ml.training.sft_trainer.lora_config`: rank, alpha, dropout, target modules, top layers). The model then goes
to the same TRL trainer (:func:`ml.training.lora_sft.build_lora_sft_trainer`) and is saved with ``save_pretrained``:
an ordinary PEFT adapter folder that ``ml.models.loading.load_adapter`` loads like any other.

Which trainers use it: the fresh LoRA SFT (:func:`ml.training.lora_sft.train_lora_sft`: the DSL student,
autocomplete's Stage A, the gpu-check) where it trains LoRA only. A run that also trains embedding rows of tokens
appended to the base (srl's step tags, FIM tokens appended to a Gemma base: peft's ``trainable_token_indices``, which
``get_peft_model`` does not take) is refused, as are AST Phase 1, the trainers that continue an adapter (AST Phase 2,
Stage B) and DPO / GRPO (:func:`require_hf_backend`): a refusal by name rather than a run trained with ``hf`` under a
plan, and metadata, that say ``unsloth``.

Untested until a GPU runs it: unsloth installs only beside CUDA, and this was written on a CPU-only machine. The
unit tests check the refusal and, with a stand-in ``unsloth`` module, that the arguments reach unsloth's two calls
(tests/test_unsloth_backend.py); ``make gpu-check`` runs the real thing where unsloth is installed.
"""

from __future__ import annotations

from dataclasses import replace

from ml.compute import ComputePlan
from ml.models.loading import local_device_index
from ml.training.sft_trainer import PhaseConfig, lora_config, trainable_token_ids

UNSLOTH = "unsloth"


def require_hf_backend(plan: ComputePlan, what: str) -> None:
    """Raise ``ValueError`` when ``plan`` asks for the unsloth backend in a trainer (``what``) that only runs ``hf``."""
    if plan.backend == UNSLOTH:
        raise ValueError(
            f"{what} trains with the hf backend only: backend 'unsloth' runs the fresh LoRA SFT (the DSL student, "
            "autocomplete's Stage A). Set the compute resource's backend to 'hf' for this step."
        )


def from_pretrained_kwargs(base_dir, cfg: PhaseConfig, plan: ComputePlan) -> dict:
    """``FastLanguageModel.from_pretrained``'s arguments for the base at ``base_dir``: the plan's dtype and 4-bit
    choice, the run's sequence cap, the whole model on this process's GPU (``LOCAL_RANK``)."""
    kwargs = {"model_name": str(base_dir), "max_seq_length": cfg.max_length, "dtype": plan.torch_dtype,
              "load_in_4bit": plan.quantize_4bit}
    if plan.device == "cuda":
        kwargs["device_map"] = {"": local_device_index()}
    return kwargs


def get_peft_model_kwargs(peft_config, cfg: PhaseConfig) -> dict:
    """``FastLanguageModel.get_peft_model``'s arguments from the PEFT path's ``LoraConfig`` (so both backends train
    the same adapter): rank, alpha, dropout, target modules, adapted layers, no bias; unsloth's own gradient
    checkpointing when ``cfg.gradient_checkpointing``; the run's seed for the LoRA init."""
    return {
        "r": peft_config.r,
        "lora_alpha": peft_config.lora_alpha,
        "lora_dropout": peft_config.lora_dropout,
        "target_modules": sorted(peft_config.target_modules),
        "layers_to_transform": peft_config.layers_to_transform,
        "bias": "none",
        "use_gradient_checkpointing": "unsloth" if cfg.gradient_checkpointing else False,
        "random_state": cfg.seed,
    }


def _fast_language_model():
    try:
        from unsloth import FastLanguageModel
    except ImportError as exc:  # resolve_compute refuses the backend without the package; a direct caller may not
        raise ValueError("backend 'unsloth' needs the unsloth package (pip install -e '.[gpu]', on a CUDA machine); "
                         f"importing it failed: {exc}") from exc
    return FastLanguageModel


def unsloth_lora_model(base_dir, tokenizer, cfg: PhaseConfig, plan: ComputePlan):
    """The base at ``base_dir`` loaded by ``FastLanguageModel`` with a fresh LoRA from ``get_peft_model`` (a
    ``PeftModel``), ready for the TRL trainer. ``tokenizer`` is the platform's own (the base folder's), not the one
    unsloth returns: its added tokens and chat template are what the rows were made with. Raises ``ValueError`` when
    ``cfg`` asks for trainable embedding rows (peft's ``trainable_token_indices``, which ``get_peft_model`` does not
    take) or the tokenizer is larger than the model's embedding matrix."""
    fast = _fast_language_model()
    model, _ = fast.from_pretrained(**from_pretrained_kwargs(base_dir, cfg, plan))
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the base at {base_dir} has {rows} embedding rows")
    ids = trainable_token_ids(cfg, tokenizer, rows)
    if ids:
        raise ValueError(
            f"backend 'unsloth' trains LoRA only, but trainable_embeddings={cfg.trainable_embeddings!r} trains "
            f"{len(ids)} embedding rows here (tokens appended to the base vocabulary): use backend 'hf', or "
            "trainable_embeddings='none' where the base already knows every token")
    return fast.get_peft_model(model, **get_peft_model_kwargs(lora_config(cfg, model), cfg))


def trainer_settings(cfg: PhaseConfig) -> PhaseConfig:
    """``cfg`` as the TRL trainer should see it under unsloth: no TRL activation checkpointing (unsloth's own is on
    the model already, from ``get_peft_model``), and the loss from the model's forward (unsloth patches it with its
    fused cross-entropy) unless ``fused_lm_head`` was set explicitly: TRL's fused head reads ``lm_head`` around the
    patched forward, a combination nothing has run."""
    return replace(cfg, gradient_checkpointing=False,
                   fused_lm_head=False if cfg.fused_lm_head is None else cfg.fused_lm_head)
