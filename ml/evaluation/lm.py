"""Language-model evaluation helpers: per-text loss and batched generation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch


@torch.no_grad()
def text_losses(model, tokenizer, texts: Sequence[str], max_length: int = 512, batch_size: int = 8) -> list[float]:
    """Per text: mean next-token cross-entropy over its real tokens (each text ending with EOS, as in training).
    One number per item, so that an evaluation can give its mean an interval and compare two models text by text.
    A text with no predicted token (one token long) is NaN."""
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token or ""
    out: list[float] = []
    for i in range(0, len(texts), batch_size):
        batch = [t + eos for t in texts[i : i + batch_size]]
        enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                        add_special_tokens=False).to(device)
        logits = model(**enc).logits[:, :-1].float()
        target = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].float()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        sums, counts = (loss * mask).sum(dim=1), mask.sum(dim=1)
        out += [float(s / c) if c else math.nan for s, c in zip(sums.tolist(), counts.tolist())]
    return out


def left_padded_batches(tokenizer, prompts: Sequence[str], batch_size: int, device) -> Iterator[tuple[int, Any, int]]:
    """``(start index, encoding on device, width)`` per batch of ``prompts``, left-padded so that generation
    continues from the right edge of every row; the tokenizer's padding side is restored when the loop ends."""
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i : i + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            yield i, enc, enc["input_ids"].shape[1]
    finally:
        tokenizer.padding_side = old_side


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    do_sample: bool,
    seed: int = 0,
    processor_factory: Callable[[list[int]], object] | None = None,
    batch_size: int = 8,
    eos_token_id: int | list[int] | None = None,
) -> list[str]:
    """Continuations of ``prompts`` (decoded text of the new tokens only). ``processor_factory`` gets the
    prompt lengths of a batch and returns a logits processor (e.g. the grammar constraint); ``eos_token_id``
    (default: the tokenizer's) ends a row."""
    from transformers import LogitsProcessorList

    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    for i, enc, width in left_padded_batches(tokenizer, prompts, batch_size, device):
        processors = LogitsProcessorList()
        if processor_factory is not None:
            processors.append(processor_factory([width] * enc["input_ids"].shape[0]))
        torch.manual_seed(seed + i)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            top_k=0 if do_sample else None,
            temperature=1.0 if do_sample else None,
            top_p=None,
            logits_processor=processors,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id if eos_token_id is None else eos_token_id,
        )
        for row in gen[:, width:]:
            out.append(tokenizer.decode(row, skip_special_tokens=True))
    return out
