"""Supervised fine-tuning with TRL: Phase 1 (causal LM over AST text) and Phase 2 (docstring → AST).

Phase 1 trains LoRA adapters on the attention/MLP projections plus the rows of the embedding
matrix that belong to the AST tokens (peft ``trainable_token_indices``; the tied ``lm_head`` follows
the same delta). Phase 2 continues the Phase 1 LoRA with the AST rows frozen, on a
prompt–completion dataset, so TRL masks the prompt from the loss.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ml.compute import ComputePlan
from ml.training.completion_loss import completion_only_loss, supports_completion_loss
from ml.training.glue import OnLog, curve, last_checkpoint, log_callback, precision_args, quiet_printer

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CURVE_METRICS = ("loss", "eval_loss", "learning_rate", "grad_norm")



@dataclass
class PhaseConfig:
    max_steps: int = 300
    learning_rate: float = 2e-3
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
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
    # Phase 1 embedding rows that train: "ast" (the appended AST tokens, the method's choice for a
    # pretrained base) or "all" (a tiny random-init base has no embeddings worth freezing).
    trainable_embeddings: str = "ast"
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


# --------------------------------------------------------------------------- helpers


def ast_token_ids(tokenizer) -> list[int]:
    """Ids appended after the base vocabulary (the AST tokens), as recorded by build_ast_tokenizer."""
    base = tokenizer.init_kwargs.get("astforge_base_vocab_size")
    if base is None:
        specials = set(tokenizer.all_special_tokens)
        return sorted(i for t, i in tokenizer.get_added_vocab().items() if t not in specials)
    return list(range(int(base), len(tokenizer)))


def load_base(base_dir, plan: ComputePlan, gradient_checkpointing: bool = False):
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": torch.float32 if plan.device == "cpu" else plan.torch_dtype}
    if plan.quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=plan.torch_dtype,
        )
    if plan.device == "cuda":
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), **kwargs)
    if plan.quantize_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


def _sft_config(cfg: PhaseConfig, plan: ComputePlan, work_dir: Path, has_eval: bool):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(work_dir),
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        load_best_model_at_end=bool(has_eval and cfg.early_stopping_patience),
        metric_for_best_model="eval_loss" if has_eval and cfg.early_stopping_patience else None,
        greater_is_better=False if has_eval and cfg.early_stopping_patience else None,
        lr_scheduler_type=cfg.lr_scheduler_type,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        max_length=cfg.max_length,
        seed=cfg.seed,
        data_seed=cfg.seed,
        **precision_args(plan),
        activation_checkpointing=cfg.gradient_checkpointing,  # TRL's default is True
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        # our length-grouped sampler replaces the default one in _AstSFTTrainer._get_train_sampler
        train_sampling_strategy="random",
        pad_to_multiple_of=None,
    )


def _make_trainer_class():
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
            _expose_lm_head_bias(self.model)
            if on_log_given:
                quiet_printer(self)

        def _get_train_sampler(self, train_dataset=None):
            ds = train_dataset if train_dataset is not None else self.train_dataset
            if not self._group or ds is None or "input_ids" not in ds.column_names:
                return super()._get_train_sampler(train_dataset)
            lengths = [len(x) for x in ds["input_ids"]]
            return LengthGroupedSampler(
                lengths, self.args.per_device_train_batch_size, self._mega, self.args.seed
            )

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


def _expose_lm_head_bias(model) -> None:
    """TRL 1.16's fused LM-head loss reads ``lm_head.weight`` and ``lm_head.bias`` directly. A tied
    ``lm_head`` wrapped by peft's ``TrainableTokensWrapper`` answers ``.weight`` with the merged
    weight (base + AST-row delta, differentiable) but has no ``.bias``: give it the base layer's
    (a plain attribute, so nothing new is registered or saved)."""
    head = model.get_output_embeddings()
    if head is None or type(head).__name__ != "TrainableTokensWrapper" or "bias" in head.__dict__:
        return
    object.__setattr__(head, "bias", getattr(head.token_adapter.base_layer, "bias", None))


def _curve(log_history: list[dict]) -> list[tuple[int, str, float]]:
    # probe_* entries come from callbacks that measure task metrics during training
    return curve(log_history, CURVE_METRICS, prefixes=("probe_",))


def _run(trainer, work_dir: Path, out_dir: Path, tokenizer, dropped: int) -> TrainResult:
    resume = last_checkpoint(work_dir)
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


def _callbacks(on_log: OnLog | None, make_log_callback, cfg: PhaseConfig, has_eval: bool) -> list:
    # cfg and has_eval are required: _sft_config keeps the best checkpoint whenever patience > 0, so a
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


# --------------------------------------------------------------------------- Phase 1


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
    return _run(trainer, Path(work_dir), Path(out_dir), tokenizer, dropped=0)


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

    Trainer, LogCb = _make_trainer_class()
    if not texts:
        raise ValueError("train_phase1: no training texts")
    model = load_base(base_dir, plan, cfg.gradient_checkpointing)
    ids = ast_token_ids(tokenizer)
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    if cfg.trainable_embeddings == "all":
        ids = list(range(vocab_rows))
    elif cfg.trainable_embeddings != "ast":
        raise ValueError(f"trainable_embeddings must be 'ast' or 'all', not {cfg.trainable_embeddings!r}")
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
        args=_sft_config(cfg, plan, Path(work_dir), has_eval),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_cfg,
        callbacks=_callbacks(on_log, LogCb, cfg, has_eval),
        group_by_length=cfg.group_by_length,
        mega_batch_mult=cfg.mega_batch_mult,
    )


# --------------------------------------------------------------------------- Phase 2


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


def _checked_rows(tokenizer, pairs, eval_pairs, cfg: PhaseConfig, what: str) -> tuple[list, list, int]:
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
    trainer, dropped = build_phase2_trainer(
        base_dir, phase1_adapter_dir, tokenizer, pairs, eval_pairs, work_dir, cfg, plan, on_log
    )
    return _run(trainer, Path(work_dir), Path(out_dir), tokenizer, dropped=dropped)


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
    from datasets import Dataset

    Trainer, LogCb = _make_trainer_class()
    rows, eval_rows, dropped = _checked_rows(tokenizer, pairs, eval_pairs, cfg, "phase 2")
    model = load_adapter(
        base_dir,
        phase1_adapter_dir,
        plan=plan,
        is_trainable=True,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    for name, p in model.named_parameters():
        # LoRA continues; the base and the AST embedding rows (trainable_tokens_delta) stay frozen
        p.requires_grad = "lora_" in name
    has_eval = bool(eval_rows)
    trainer = Trainer(
        model=model,
        args=_sft_config(cfg, plan, Path(work_dir), has_eval),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows) if has_eval else None,
        processing_class=tokenizer,
        callbacks=_callbacks(on_log, LogCb, cfg, has_eval),
        group_by_length=cfg.group_by_length,
        mega_batch_mult=cfg.mega_batch_mult,
    )
    return trainer, dropped


# --------------------------------------------------------------------------- loading


def load_adapter(
    base_dir,
    adapter_dir,
    plan: ComputePlan | None = None,
    is_trainable: bool = False,
    gradient_checkpointing: bool = False,
):
    """``PeftModel`` = base at ``base_dir`` + adapter at ``adapter_dir``. Raises ``ValueError`` with the
    reason when the folder is missing/incomplete or the adapter does not fit the base (vocabulary
    size, target modules, tensor shapes)."""
    from peft import PeftModel
    from safetensors import safe_open

    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    if not adapter_dir.is_dir():
        raise ValueError(f"adapter folder {adapter_dir} does not exist")
    cfg_path = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    missing = [p.name for p in (cfg_path, weights) if not p.is_file()]
    if missing:
        raise ValueError(f"adapter folder {adapter_dir} is incomplete: missing {', '.join(missing)}")
    if not (base_dir / "config.json").is_file():
        raise ValueError(f"base model folder {base_dir} is missing or has no config.json")
    acfg = json.loads(cfg_path.read_text())

    if plan is None:
        from ml.compute import resolve_compute

        plan = resolve_compute(device="cpu")
    base = load_base(base_dir, plan, gradient_checkpointing)
    vocab_rows = base.get_input_embeddings().weight.shape[0]

    tok_file = adapter_dir / "tokenizer.json"
    if tok_file.is_file():
        from transformers import AutoTokenizer

        n = len(AutoTokenizer.from_pretrained(str(adapter_dir)))
        if n != vocab_rows:
            raise ValueError(
                f"adapter {adapter_dir} was trained with a {n}-token vocabulary but base {base_dir} has {vocab_rows} "
                "embedding rows: the adapter does not match this base"
            )
    tti = acfg.get("trainable_token_indices") or {}
    for mod, idx in tti.items() if isinstance(tti, dict) else [("embed_tokens", tti)]:
        if idx and max(idx) >= vocab_rows:
            raise ValueError(
                f"adapter {adapter_dir} trains token ids up to {max(idx)} in {mod} but base {base_dir} has only "
                f"{vocab_rows} embedding rows: the adapter does not match this base"
            )
    targets = acfg.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    leaf_names = {n.rsplit(".", 1)[-1] for n, _ in base.named_modules()}
    absent = sorted(t for t in targets if t not in leaf_names)
    if absent:
        raise ValueError(f"adapter {adapter_dir} targets modules {absent} that base {base_dir} does not have")

    modules = dict(base.named_modules())
    problems = []
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            shape = tuple(f.get_slice(key).get_shape())
            problem = _shape_problem(key, shape, modules)
            if problem:
                problems.append(problem)
    if problems:
        raise ValueError(
            f"adapter {adapter_dir} does not match base {base_dir}: {len(problems)} tensor shape mismatches, "
            f"e.g. {problems[:3]}"
        )
    try:
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=is_trainable)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ValueError(f"adapter {adapter_dir} does not load onto base {base_dir}: {exc}") from exc


def _shape_problem(key: str, shape: tuple, modules: dict) -> str | None:
    """Compare one adapter tensor with the base module it adapts (lora_A/B, trainable tokens)."""
    name = key.removeprefix("base_model.model.")
    for marker, check in ((".lora_A", "A"), (".lora_B", "B"), (".token_adapter.trainable_tokens_delta", "T")):
        if marker in name:
            mod = modules.get(name.split(marker)[0])
            if mod is None:
                return f"{key}: no module {name.split(marker)[0]!r} in base"
            w = getattr(mod, "weight", None)
            if w is None or w.dim() != 2:
                return None
            out_f, in_f = w.shape
            if check == "A" and isinstance(mod, torch.nn.Embedding):
                return None if shape[1] == out_f else f"{key}: {shape} vs embedding {tuple(w.shape)}"
            if check == "A" and len(shape) == 2 and shape[1] != in_f:
                return f"{key}: in_features {shape[1]} vs base {in_f}"
            if check == "B" and len(shape) == 2 and shape[0] != out_f:
                return f"{key}: out_features {shape[0]} vs base {out_f}"
            if check == "T" and len(shape) == 2 and shape[1] != in_f:
                return f"{key}: hidden size {shape[1]} vs base embedding dim {in_f}"
            return None
    return None


# --------------------------------------------------------------------------- prompt → completion LoRA SFT


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
    return _run(trainer, Path(work_dir), Path(out_dir), tokenizer, dropped=dropped)


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
    embedding rows). Extra ``callbacks`` (``transformers.TrainerCallback``) are added."""
    from datasets import Dataset

    Trainer, LogCb = _make_trainer_class()
    rows, eval_rows, dropped = _checked_rows(tokenizer, pairs, eval_pairs, cfg, "SFT")
    model = load_base(base_dir, plan, cfg.gradient_checkpointing)
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    choices = {"none": [], "all": list(range(vocab_rows)), "added": ast_token_ids(tokenizer)}
    if cfg.trainable_embeddings not in choices:
        raise ValueError(f"trainable_embeddings must be one of {sorted(choices)}, not {cfg.trainable_embeddings!r}")
    ids = choices[cfg.trainable_embeddings]
    peft_cfg = lora_config(cfg, model, ids)
    has_eval = bool(eval_rows)
    trainer = Trainer(
        model=model,
        args=_sft_config(cfg, plan, Path(work_dir), has_eval),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows) if has_eval else None,
        processing_class=tokenizer,
        peft_config=peft_cfg,
        callbacks=_callbacks(on_log, LogCb, cfg, has_eval) + list(callbacks),
        group_by_length=cfg.group_by_length,
        mega_batch_mult=cfg.mega_batch_mult,
        added_tokens_lr_multiplier=cfg.added_tokens_lr_multiplier,
        fused_lm_head=cfg.fused_lm_head,
    )
    return trainer, dropped
