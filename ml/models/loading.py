"""Model folders in, models out: a base, a base + LoRA adapter (checked against the base before peft sees it), the
adapter merged in for generation, and the GPU each process places its model on. Every trainer, evaluation, server
and asset loads through here, so a shape check or a placement rule is written once. (A fresh LoRA SFT under the
compute plan's ``unsloth`` backend loads its base through unsloth instead: ml/training/unsloth_backend.py.)"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ml.compute import ComputePlan, resolve_compute


def local_device_index(env: Mapping[str, str] | None = None) -> int:
    """The CUDA device index of this process: ``LOCAL_RANK`` (torchrun sets it, one process per GPU of a node), 0 when
    the process runs alone. Each data-parallel process must place its model on its own GPU, not all on GPU 0."""
    env = os.environ if env is None else env
    value = env.get("LOCAL_RANK", "0")
    try:
        index = int(value)
    except ValueError:
        raise ValueError(f"LOCAL_RANK must be an integer, not {value!r}") from None
    if index < 0:
        raise ValueError(f"LOCAL_RANK must be >= 0, not {index}")
    return index


def device_map(plan: ComputePlan) -> dict[str, int] | None:
    """``from_pretrained``'s ``device_map`` for ``plan``: the whole model on this process's GPU on CUDA, None on CPU."""
    return {"": local_device_index()} if plan.device == "cuda" else None


def nf4_config(plan: ComputePlan):
    """The 4-bit (NF4, double-quantized) loading of a base on the GPU, computing in the plan's dtype."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=plan.torch_dtype)


def load_base(base_dir, plan: ComputePlan, gradient_checkpointing: bool = False):
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": torch.float32 if plan.device == "cpu" else plan.torch_dtype}
    if plan.quantize_4bit:
        kwargs["quantization_config"] = nf4_config(plan)
    placement = device_map(plan)
    if placement is not None:
        kwargs["device_map"] = placement
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), **kwargs)
    if plan.quantize_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


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


def load_merged(base_dir, adapter_dir, plan: ComputePlan | None = None):
    """The model at ``base_dir`` with the LoRA adapter at ``adapter_dir`` merged in, for generation: merged weights
    generate several times faster than the adapter wrappers, with the same outputs. Raises ``ValueError`` with the
    reason when the adapter is missing or does not fit the base (see :func:`load_adapter`)."""
    return load_adapter(base_dir, adapter_dir, plan).merge_and_unload()


def load_base_or_merged(base_dir, adapter_dir, plan: ComputePlan):
    """The base alone when ``adapter_dir`` is None (an evaluation's M0), else the adapter merged into it."""
    return load_base(base_dir, plan) if adapter_dir is None else load_merged(base_dir, adapter_dir, plan)


def load_tokenizer(folder: str | Path):
    """The tokenizer saved in ``folder`` (a tokenizer, base model, adapter or merged folder), as it was saved.

    ``AutoTokenizer.from_pretrained``, except for the BPE trained for a ``tiny:`` base: transformers 5 loads a folder
    whose config.json says ``qwen2`` as ``Qwen2Tokenizer`` whatever class was saved, and that class rebuilds the
    pre-tokenizer and normalizer as Qwen's, so the reloaded tokenizer splits text differently from the trained one
    (44 instead of 41 tokens on one DSL JSON line). That BPE is loaded as the class it was trained as."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(folder)
    config_file = folder / "tokenizer_config.json"
    saved = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if str(saved.get("astforge_base_model", "")).startswith("tiny:"):
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def load_for_generation(base_dir, adapter_dir=None, plan: ComputePlan | None = None):
    """(model, tokenizer) to generate with: the base with the adapter merged in (:func:`load_merged`), or the base
    alone; the tokenizer the adapter saved (its added tokens), else the base's. One rule for the completion server
    and the GGUF export, which must see the same model."""
    plan = plan or resolve_compute(device="cpu", quantization="none")
    if adapter_dir is None:
        return load_base(base_dir, plan), load_tokenizer(base_dir)
    adapter_dir = Path(adapter_dir)
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    return load_merged(base_dir, adapter_dir, plan), load_tokenizer(adapter_dir if has_tokenizer else base_dir)


def expose_lm_head_bias(model) -> None:
    """TRL 1.16's fused LM-head loss reads ``lm_head.weight`` and ``lm_head.bias`` directly. A tied
    ``lm_head`` wrapped by peft's ``TrainableTokensWrapper`` answers ``.weight`` with the merged
    weight (base + AST-row delta, differentiable) but has no ``.bias``: give it the base layer's
    (a plain attribute, so nothing new is registered or saved). Every TRL trainer here (SFT, DPO, GRPO) calls it."""
    head = model.get_output_embeddings()
    if head is None or type(head).__name__ != "TrainableTokensWrapper" or "bias" in head.__dict__:
        return
    object.__setattr__(head, "bias", getattr(head.token_adapter.base_layer, "bias", None))
