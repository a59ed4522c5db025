"""What every SFT trainer here shares: the settings (:class:`PhaseConfig`, TRL's field names plus the LoRA and row
knobs), the result record, TRL's ``SFTConfig`` for them, the ``SFTTrainer`` subclass (length-grouped batches, the
added tokens' own learning rate, the model's own head on CPU, real-token throughput), the LoRA config with the
embedding rows that train, and one run: evaluate, train (resuming), evaluate, save.

The AST phases (:mod:`ml.training.sft`) and the generic prompt → completion LoRA SFT (:mod:`ml.training.lora_sft`)
build on it."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ml.compute import ComputePlan
from ml.models.loading import expose_lm_head_bias
from ml.training.completion_loss import completion_only_loss, supports_completion_loss
from ml.training.glue import OnLog, curve, last_checkpoint, log_callback, quiet_printer
from ml.training.trainer_config import trl_config

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CURVE_METRICS = ("loss", "eval_loss", "learning_rate", "grad_norm")
# Embedding rows that train beside the LoRA: "none" (LoRA only, a pretrained base), "added" (the tokens appended
# after the base vocabulary: AST tokens, FIM tokens, step tags), "all" (a random-init tiny: base has no rows worth
# freezing). "auto" is a settings value, resolved by resolve_trainable_embeddings before a PhaseConfig exists.
TRAINABLE_EMBEDDINGS = ("none", "added", "all")

@dataclass
class PhaseConfig:
    max_steps: int = 300
    learning_rate: float = 2e-3
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    # On a CPU, rows per forward/backward pass (0: the whole batch at once). The optimizer step still sees the same
    # per_device_train_batch_size x gradient_accumulation_steps rows in the same order, with the loss averaged over
    # their tokens, so what is learnt does not change; smaller passes keep the activations in cache and bound them.
    # SmolLM2-135M, 8 rows of <= 320 tokens, fp32 on a 2-core AMD EPYC: 2 rows a pass 8.5 s/step and 2.3 GiB peak,
    # the whole batch 13.0 s and 4.75 GiB, 1 row 11.0 s (bench/micro_batch.py). GPUs take the whole batch.
    cpu_micro_batch_size: int = 0
    warmup_steps: int = 10
    logging_steps: int = 10
    eval_steps: int = 50
    save_steps: int = 100
    save_total_limit: int = 2
    max_length: int = 512
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    seed: int = 0
    group_by_length: bool = True
    per_device_eval_batch_size: int = 16
    weight_decay: float = 0.0
    lr_scheduler_type: str = "cosine"
    gradient_checkpointing: bool = False  # True is worth it on GPU with the 0.5B model
    mega_batch_mult: int = 64
    separator: str = "\n"  # Phase 2: between the docstring prompt and the AST completion
    add_eos: bool = True  # Phase 2: append the eos token to each completion
    # Tokenize prompt and completion apart and join the ids (FIM, Bavarian et al. 2022: pieces cut at character
    # level are tokenized separately). Off: TRL tokenizes prompt + completion as one text, where byte-level BPE
    # merges tokens across a cut inside a word and the prompt's end is lost from the training sequence.
    tokenize_separately: bool = False
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    # LoRA on the top N transformer layers only (0 = every layer). Gradients then stop at the lowest adapted layer,
    # so the backward pass skips the layers below it: on a 30-layer pretrained base on CPU, the cheapest lever.
    lora_top_layers: int = 0
    # Embedding rows that train (TRAINABLE_EMBEDDINGS): "added" (the appended AST tokens, the method's choice for a
    # pretrained base), "none" or "all" (a tiny random-init base has no embeddings worth freezing).
    trainable_embeddings: str = "added"
    max_grad_norm: float = 1.0
    # Learning rate of the appended tokens' embedding rows, as a multiple of learning_rate. Rows that start at the
    # mean of the vocabulary and must become outputs the model emits (the srl step tags) move too little at a LoRA's
    # rate: after 30 steps at 1e-3 a tag still cost 10 nats.
    added_tokens_lr_multiplier: float = 1.0
    # TRL's fused LM head scores tokens tile by tile without materializing the logits: on a GPU it saves the memory
    # of a 49k-152k vocabulary's logits; on a CPU it is slower than the model's own head for the same loss
    # (SmolLM2-135M, 8 rows, bf16 autocast: the DSL student 10.85 s vs 9.3 s per step over the demo's run, 6.98 s vs
    # 3.65 s on short rows; the srl warm-up with trainable tag rows 12.1 s vs 8.5 s). None: fused on CUDA only.
    fused_lm_head: bool | None = None
    # Early stopping on eval_loss (0 = off): stop after `patience` evaluations without an improvement
    # of at least `threshold`; the best checkpoint is the one kept.
    early_stopping_patience: int = 0
    early_stopping_threshold: float = 0.0


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    train_loss: float
    eval_loss_initial: float
    eval_loss_final: float
    curve: list[tuple[int, str, float]]
    dropped_truncated: int
    resumed_from: str | None
    tokens_per_s: float
    real_token_fraction: float = 1.0  # real / padded tokens over the training batches of this call
    step_seconds: float = 0.0  # mean wall time of forward + backward per optimizer step in this call (no update)



def ast_token_ids(tokenizer) -> list[int]:
    """Ids appended after the base vocabulary (the AST tokens), as recorded by build_ast_tokenizer."""
    base = tokenizer.init_kwargs.get("astforge_base_vocab_size")
    if base is None:
        specials = set(tokenizer.all_special_tokens)
        return sorted(i for t, i in tokenizer.get_added_vocab().items() if t not in specials)
    return list(range(int(base), len(tokenizer)))


def resolve_trainable_embeddings(value: str, *, tiny_base: bool, pretrained: str) -> str:
    """``value`` checked against :data:`TRAINABLE_EMBEDDINGS`; "auto" means "all" for a random-init ``tiny:`` base
    and the recipe's ``pretrained`` choice otherwise."""
    if value == "auto":
        value = "all" if tiny_base else pretrained
    if value not in TRAINABLE_EMBEDDINGS:
        raise ValueError(f"trainable_embeddings must be one of {[*TRAINABLE_EMBEDDINGS, 'auto']}, not {value!r}")
    return value


def trainable_token_ids(cfg: PhaseConfig, tokenizer, vocab_rows: int) -> list[int]:
    """The embedding rows that ``cfg.trainable_embeddings`` (one of :data:`TRAINABLE_EMBEDDINGS`) trains in a model
    with ``vocab_rows`` rows."""
    if cfg.trainable_embeddings not in TRAINABLE_EMBEDDINGS:
        raise ValueError(
            f"trainable_embeddings must be one of {list(TRAINABLE_EMBEDDINGS)}, not {cfg.trainable_embeddings!r}")
    return {"none": [], "added": ast_token_ids(tokenizer), "all": list(range(vocab_rows))}[cfg.trainable_embeddings]


def micro_batching(cfg: PhaseConfig, plan: ComputePlan) -> tuple[int, int]:
    """(rows per forward/backward pass, passes per optimizer step) for ``cfg``'s batch on ``plan``'s device: the
    batch split into passes of ``cfg.cpu_micro_batch_size`` rows on a CPU where that divides it, else as given."""
    batch, accumulation = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    micro = cfg.cpu_micro_batch_size
    if plan.device != "cpu" or micro <= 0 or micro >= batch or batch % micro:
        return batch, accumulation
    return micro, accumulation * (batch // micro)


def sft_config(cfg: PhaseConfig, plan: ComputePlan, work_dir: Path, has_eval: bool):
    from trl import SFTConfig

    early = bool(has_eval and cfg.early_stopping_patience)
    rows, accumulation = micro_batching(cfg, plan)
    return trl_config(
        SFTConfig, cfg, plan, work_dir,
        ("max_steps", "learning_rate", "per_device_eval_batch_size", "warmup_steps", "weight_decay", "max_grad_norm",
         "lr_scheduler_type", "logging_steps", "eval_steps", "save_steps", "save_total_limit", "max_length"),
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        eval_strategy="steps" if has_eval else "no",
        save_strategy="steps",
        activation_checkpointing=cfg.gradient_checkpointing,  # TRL's default is True
        # our length-grouped sampler replaces the default one in the trainer's _get_train_sampler
        train_sampling_strategy="random",
        pad_to_multiple_of=None,
        per_device_train_batch_size=rows,
        gradient_accumulation_steps=accumulation,
    )


def make_trainer_class():
    from trl import SFTTrainer

    from ml.training.batching import LengthGroupedSampler

    class _AstSFTTrainer(SFTTrainer):
        """SFTTrainer + the project's length-grouped sampler + real-token throughput accounting."""

        logits_where_loss = True  # ml.training.completion_loss on the non-fused path (a bench turns it off)

        def __init__(self, *a, group_by_length: bool = True, mega_batch_mult: int = 64,
                     added_tokens_lr_multiplier: float = 1.0, fused_lm_head: bool | None = None, **kw):
            on_log_given = bool(kw.get("callbacks"))
            self._token_lr = added_tokens_lr_multiplier
            self._fused = fused_lm_head
            self._group = group_by_length
            self._mega = mega_batch_mult
            self.real_tokens = 0
            self.padded_tokens = 0
            self.step_seconds = 0.0
            self.micro_steps = 0
            super().__init__(*a, **kw)
            expose_lm_head_bias(self.model)
            if on_log_given:
                quiet_printer(self)

        def _get_train_sampler(self, train_dataset=None):
            ds = train_dataset if train_dataset is not None else self.train_dataset
            if not self._group or ds is None or "input_ids" not in ds.column_names:
                return super()._get_train_sampler(train_dataset)
            lengths = [len(x) for x in ds["input_ids"]]
            # grouped by the optimizer step's rows: micro-batches (PhaseConfig.cpu_micro_batch_size) split the same
            # length-grouped batches that one pass over the whole batch would see
            step_rows = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(lengths, step_rows, self._mega, self.args.seed)

        def create_optimizer(self, model=None):
            model = model if model is not None else self.model
            if self._token_lr == 1.0 or self.optimizer is not None:
                return super().create_optimizer(model)
            params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            rows = [p for n, p in params if "trainable_tokens_delta" in n]
            rest = [p for n, p in params if "trainable_tokens_delta" not in n]
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            groups = [{"params": rest}] + ([{"params": rows, "lr": self.args.learning_rate * self._token_lr}]
                                           if rows else [])
            self.optimizer = cls(groups, **kwargs)
            return self.optimizer

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            fused = self._fused if self._fused is not None else self.args.device.type == "cuda"
            if fused:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            # the same loss from the model's own head (see PhaseConfig.fused_lm_head); no entropy/accuracy metrics
            keys = ("input_ids", "attention_mask", "position_ids", "labels")
            if self.logits_where_loss and model.training and "labels" in inputs and supports_completion_loss(model):
                # the head on supervised positions only: the same loss, without the prompt's logits
                loss, outputs = completion_only_loss(model, inputs, num_items_in_batch), None
            else:
                outputs = model(**{k: inputs[k] for k in keys if k in inputs}, num_items_in_batch=num_items_in_batch)
                loss = outputs.loss
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # num_items_in_batch counts every process's tokens and DDP averages the gradients: scale back as
                # Trainer.compute_loss does, or N torchrun processes train (and log) with 1/N of the loss.
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

        def training_step(self, model, inputs, *args, **kwargs):
            t0 = time.perf_counter()
            mask = inputs.get("attention_mask")
            if mask is not None:
                self.real_tokens += int(mask.sum())
                self.padded_tokens += int(mask.numel())
            out = super().training_step(model, inputs, *args, **kwargs)
            self.step_seconds += time.perf_counter() - t0
            self.micro_steps += 1
            return out

    return _AstSFTTrainer, log_callback


def _curve(log_history: list[dict]) -> list[tuple[int, str, float]]:
    # probe_* entries come from callbacks that measure task metrics during training
    return curve(log_history, CURVE_METRICS, prefixes=("probe_",))


def run_trainer(trainer, work_dir: Path, out_dir: Path, tokenizer, dropped: int) -> TrainResult:
    resume = last_checkpoint(work_dir, trainer.args)
    has_eval = trainer.eval_dataset is not None
    nan = float("nan")
    initial = trainer.evaluate()["eval_loss"] if has_eval else nan
    out = trainer.train(resume_from_checkpoint=resume)
    if resume is not None and has_eval:
        # the checkpoint's log history is restored: its step-0 evaluation is the true initial loss
        first = [
            e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e and e.get("step", 0) == 0
        ]
        if first:
            initial = float(first[0])
    final = trainer.evaluate()["eval_loss"] if has_eval else nan
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    history = trainer.state.log_history
    losses = [e["loss"] for e in history if "loss" in e]
    result = TrainResult(
        out_dir=str(out_dir),
        steps=int(trainer.state.global_step),
        train_loss=float(out.training_loss)
        if out.training_loss is not None
        else (losses[-1] if losses else nan),
        eval_loss_initial=float(initial),
        eval_loss_final=float(final),
        curve=_curve(history),
        dropped_truncated=dropped,
        resumed_from=resume,
        tokens_per_s=trainer.real_tokens / trainer.step_seconds if trainer.step_seconds else 0.0,
        real_token_fraction=trainer.real_tokens / trainer.padded_tokens if trainer.padded_tokens else 1.0,
        step_seconds=(trainer.step_seconds / trainer.micro_steps * trainer.args.gradient_accumulation_steps
                      if trainer.micro_steps else 0.0),
    )
    (out_dir / "train_result.json").write_text(json.dumps(result.__dict__, indent=1))
    return result


def trainer_callbacks(on_log: OnLog | None, make_log_callback, cfg: PhaseConfig, has_eval: bool) -> list:
    # cfg and has_eval are required: sft_config keeps the best checkpoint whenever patience > 0, so a
    # trainer built without the EarlyStoppingCallback would ignore the patience silently.
    out = [make_log_callback(on_log)] if on_log is not None else []
    if has_eval and cfg.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        out.append(EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_threshold))
    return out


def lora_config(cfg: PhaseConfig, model, token_ids: Sequence[int] = ()):
    """The PEFT ``LoraConfig`` of ``cfg`` for ``model``: every projection in ``cfg.lora_target_modules``, on the
    top ``cfg.lora_top_layers`` layers (all when 0), plus trainable embedding rows ``token_ids``."""
    from peft import LoraConfig

    layers = int(getattr(model.config.get_text_config(), "num_hidden_layers", 0) or 0)
    top = cfg.lora_top_layers
    if top < 0:
        raise ValueError(f"lora_top_layers must be >= 0, not {top}")
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        layers_to_transform=list(range(layers - top, layers)) if 0 < top < layers else None,
        trainable_token_indices={"embed_tokens": list(token_ids)} if token_ids else None,
        task_type="CAUSAL_LM",
    )
