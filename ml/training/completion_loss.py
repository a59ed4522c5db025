"""The causal-LM loss with logits only where the loss is.

A completion-only SFT row carries loss on its completion tokens alone (the DSL student: ≈ 58 of ≈ 226 tokens), yet
``model(..., labels=...)`` applies the LM head to every position: ``[batch, length, vocab]`` fp32 logits (8 × 226 ×
49,152 for SmolLM2: 355 MB), their log-softmax and the backward of both, three quarters of it for positions whose
label is -100. Here the decoder body runs as usual, the hidden states are gathered at the positions whose shifted
label is supervised, and the head and the cross-entropy run on those rows only. The loss is the same sum over the
same tokens divided by the same count as transformers' ``ForCausalLMLoss`` (to float rounding), so the gradients and
what is learned are the same; ``tests/test_training.py`` compares loss and LoRA gradients with the full-logits path.
"""

from __future__ import annotations

import torch
from torch import nn

IGNORE_INDEX = -100
# Heads that rescale their logits in ways this module does not reproduce: these models take the full path.
_UNSUPPORTED_SCALES = ("logit_scale", "logits_scaling")


def causal_lm_of(model):
    """The ``*ForCausalLM`` under a peft wrapper (LoRA layers are injected in place, so its modules are the trained
    ones), or ``model`` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_completion_loss(model) -> bool:
    """True when ``model``'s logits are ``lm_head(decoder(x))``, optionally soft-capped (Llama, Qwen, Gemma 3, ...)."""
    causal = causal_lm_of(model)
    cfg = causal.config.get_text_config()
    if any(getattr(cfg, name, None) not in (None, 1.0) for name in _UNSUPPORTED_SCALES):
        return False
    return hasattr(causal, "get_decoder") and causal.get_output_embeddings() is not None


def supervised_logits(model, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask=None,
                      position_ids=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, targets)``: the fp32 logits ``[n, vocab]`` of the ``n`` positions whose next token is supervised
    (``labels[:, t + 1] != -100``) and those next tokens."""
    causal = causal_lm_of(model)
    kwargs = {"attention_mask": attention_mask, "position_ids": position_ids}
    hidden = causal.get_decoder()(input_ids=input_ids, **{k: v for k, v in kwargs.items() if v is not None},
                                  use_cache=False).last_hidden_state
    # position t predicts token t + 1, as in ForCausalLMLoss's shift
    targets = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = causal.get_output_embeddings()(hidden[keep]).float()
    cap = getattr(causal.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, targets[keep]


def completion_only_loss(model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """The causal-LM loss of ``inputs`` (``input_ids``, ``labels``, optional ``attention_mask``/``position_ids``)
    with the LM head applied at supervised positions only: summed over them and divided by ``num_items_in_batch``
    when given (the Trainer's count over gradient-accumulation steps), else their mean, as ``ForCausalLMLoss``."""
    logits, targets = supervised_logits(model, inputs["input_ids"], inputs["labels"],
                                        inputs.get("attention_mask"), inputs.get("position_ids"))
    if num_items_in_batch is None:
        return nn.functional.cross_entropy(logits, targets, reduction="mean")
    total = nn.functional.cross_entropy(logits, targets, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch
