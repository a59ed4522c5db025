"""Base causal LMs: a tiny from-config model for demos/tests, or a pretrained one (optionally 4-bit),
with the embedding matrix resized to the AST tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from ml.compute import ComputePlan
from ml.models.loading import local_device_index, nf4_config

# Small configs built from scratch (no download). Sizes keep a CPU step well under a second.
TINY_CONFIGS: dict[str, dict] = {
    "qwen2": {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    },
    "gemma3_text": {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        # Gemma 3 scales attention by query_pre_attn_scalar**-0.5 after RMS-normalizing q and k; the default (256)
        # fits head_dim 256 and caps a head_dim-32 logit at 2, too flat to pick one request word out of a prompt.
        "query_pre_attn_scalar": 32,
        "max_position_embeddings": 2048,
        # One sliding and one global layer: a schema-conditioned student must see its whole prompt.
        "sliding_window": 256,
        "layer_types": ["sliding_attention", "full_attention"],
        "tie_word_embeddings": True,
    },
}


def tiny_model(arch: str, tokenizer, seed: int = 0, **overrides):
    """A seeded ``tiny:<arch>`` model for ``tokenizer``; ``overrides`` replace config fields (e.g.
    ``initializer_range=0.2``: at the default 0.02 a random tied model repeats its last token, so every completion a
    server or a bench asks of it would look alike)."""
    torch.manual_seed(seed)
    return _tiny_model(arch, tokenizer, **overrides)


def _tiny_model(arch: str, tokenizer, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    if arch not in TINY_CONFIGS:
        raise ValueError(f"unknown tiny architecture {arch!r}; known: {sorted(TINY_CONFIGS)}")
    cfg = AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        **{**TINY_CONFIGS[arch], **overrides},
    )
    return AutoModelForCausalLM.from_config(cfg)


def build_base_model(base_model: str, tokenizer, seed: int = 0, plan: ComputePlan | None = None,
                     new_rows: str = "mean"):
    """``tiny:<arch>`` → a freshly initialised small model (seeded); otherwise ``from_pretrained``
    (4-bit NF4 when ``plan.quantize_4bit``). The embeddings are resized to ``len(tokenizer)``; new
    rows start at the mean of the old rows, or with ``new_rows="names"`` at the mean of the rows of the base tokens
    that spell each new token's name (:func:`init_rows_from_names`)."""
    if new_rows not in ("mean", "names"):
        raise ValueError(f"new_rows must be 'mean' or 'names', not {new_rows!r}")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if base_model.startswith("tiny:"):
        model = _tiny_model(base_model.split(":", 1)[1], tokenizer)
        if plan is not None and plan.device == "cuda":
            model = model.to("cuda")
        return model
    kwargs: dict = {}
    if plan is not None:
        kwargs["dtype"] = plan.torch_dtype
        if plan.quantize_4bit:
            kwargs["quantization_config"] = nf4_config(plan)
            kwargs["device_map"] = {"": local_device_index()}  # this process's GPU under torchrun
        elif plan.device == "cuda":
            kwargs["device_map"] = {"": local_device_index()}  # this process's GPU under torchrun
    model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    # Pretrained matrices may hold padding rows past the tokenizer (Qwen2.5: 151936 rows for 151665
    # tokens): the AST rows start at the tokenizer's base size either way and get the mean init.
    base_size = tokenizer.init_kwargs.get("astforge_base_vocab_size")
    resize_with_mean_init(model, len(tokenizer), first_new_row=base_size)
    if new_rows == "names":
        init_rows_from_names(model, tokenizer, base_size if base_size is not None else len(tokenizer))
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


@torch.no_grad()
def resize_with_mean_init(model, new_size: int, first_new_row: int | None = None) -> None:
    """Resize the (input and output) embeddings to ``new_size`` rows; rows from ``first_new_row``
    (default: the old row count) on are set to the mean of the rows before it."""
    old = model.get_input_embeddings().weight.shape[0]
    start = old if first_new_row is None else min(first_new_row, old)
    if new_size != old:
        # mean_resizing=False: we set the new rows ourselves
        model.resize_token_embeddings(new_size, mean_resizing=False)
    if start >= new_size:
        return
    emb = model.get_input_embeddings().weight
    emb[start:new_size] = emb[:start].float().mean(0).to(emb.dtype)
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != emb.data_ptr():
        out.weight[start:new_size] = out.weight[:start].float().mean(0).to(out.weight.dtype)


def token_name(token: str) -> str:
    """The words an added token stands for: ``<FunctionDef>`` → ``FunctionDef``, ``<const:True>`` → ``const True``,
    ``<|fim_prefix|>`` → ``fim prefix``."""
    return " ".join(token.strip("<>|").replace(":", " ").replace("_", " ").split())


@torch.no_grad()
def init_rows_from_names(model, tokenizer, first_new_row: int) -> int:
    """Set each added token's embedding row (and its output row, when the head is not tied) to the mean of the rows
    of the base tokens that spell its name (:func:`token_name`), so that ``<FunctionDef>`` starts near "Function"
    + "Def" instead of at the one vector all new rows share after a mean init: the model can tell the new tokens
    apart, and guess their meaning, from step 0. Rows whose name encodes to no base token keep their value.
    Returns the number of rows set."""
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    untied = out is not None and out.weight.data_ptr() != emb.data_ptr()
    done = 0
    for token_id in range(first_new_row, min(len(tokenizer), emb.shape[0])):
        name = token_name(tokenizer.convert_ids_to_tokens(token_id))
        ids = [i for i in tokenizer(name, add_special_tokens=False)["input_ids"] if i < first_new_row] if name else []
        if not ids:
            continue
        emb[token_id] = emb[ids].float().mean(0).to(emb.dtype)
        if untied:
            out.weight[token_id] = out.weight[ids].float().mean(0).to(out.weight.dtype)
        done += 1
    return done


def save_base_model(model, tokenizer, folder: str | Path) -> Path:
    """A normal HF folder (safetensors + config + tokenizer) that ``AutoModelForCausalLM.from_pretrained`` loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
