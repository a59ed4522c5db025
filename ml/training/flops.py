"""The arithmetic one training step of a (LoRA-adapted) decoder does, counted from its modules.

Not the ``6 × params × tokens`` rule: that rule assumes every weight gets a gradient and every layer is
back-propagated, while a LoRA step on the top layers of a frozen base computes weight gradients for the adapters
only and stops the backward pass at the lowest adapted layer. Counted here, per matmul of the step as it runs:

- every ``nn.Linear`` in a decoder layer: forward ``2·in·out`` per token; backward ``2·in·out`` for the input's
  gradient in the layers the gradient reaches, plus ``2·in·out`` for the weight's gradient where it trains;
- attention scores and their weighted sum: ``4·L·heads·head_dim`` per token of a length-``L`` row (the full square,
  as SDPA on CPU computes it), twice as much backward where the gradient reaches;
- the LM head on the rows it is applied to (every position, or the supervised ones only): forward and input gradient.

Norms, activations, softmax and the optimizer are left out (a few percent), so the count is a lower bound.
"""

from __future__ import annotations

import re

from torch import nn

from ml.training.completion_loss import causal_lm_of

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def lowest_trained_layer(model) -> int:
    """The index of the lowest decoder layer holding a trainable parameter (the backward pass stops there), or the
    number of layers when none does."""
    layers = causal_lm_of(model).get_decoder().layers
    found = [int(m.group(1)) for n, p in model.named_parameters() if p.requires_grad and (m := _LAYER.search(n))]
    return min(found, default=len(layers))


def sft_step_flops(model, batch_size: int, seq_len: int, head_rows: int) -> dict[str, float]:
    """FLOPs of one forward + backward over ``batch_size`` rows padded to ``seq_len`` tokens, with the LM head applied
    to ``head_rows`` positions: ``{"forward", "backward", "total"}``."""
    causal = causal_lm_of(model)
    decoder = causal.get_decoder()
    cfg = causal.config.get_text_config()
    tokens = batch_size * seq_len
    reached = lowest_trained_layer(model)
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    forward = backward = 0.0
    for index, layer in enumerate(decoder.layers):
        grads_flow = index >= reached
        for module in layer.modules():
            if not isinstance(module, nn.Linear):
                continue
            mac = 2.0 * module.in_features * module.out_features * tokens
            forward += mac
            backward += mac * (grads_flow + module.weight.requires_grad)
        attention = 4.0 * seq_len * heads * head_dim * tokens
        forward += attention
        backward += 2 * attention * grads_flow
    head = causal.get_output_embeddings()
    vocab, hidden = head.weight.shape
    mac = 2.0 * hidden * vocab * head_rows
    forward += mac
    backward += mac * (1 + head.weight.requires_grad)
    return {"forward": forward, "backward": backward, "total": forward + backward}
