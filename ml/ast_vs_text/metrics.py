"""Measures that compare a model of AST tokens with a model of source text.

- :func:`bits_per_char`: a function's summed next-token loss (nats) over its tokens, in bits per character of its
  *source text*. Tokens differ between the arms, characters do not: the same function has the same denominator in
  both, so the figures compare like with like (per-token losses would not).
- :func:`sequence_nats`: the summed loss of each sequence, optionally only after a prompt (docstring → code).
- :func:`score_source`: docstring → code quality of generated source against the reference tree, scored by
  ``ast_metrics.score_prediction`` as a generated tree is (valid = the slice's judge accepts it; exact = equal after
  alpha-renaming).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ml.codec.tokens import tokens_to_text
from ml.dataset import without_natural_language
from ml.evaluation.ast_metrics import PairScore, score_prediction
from ml.languages import get_language


def bits_per_char(nats: float, chars: int) -> float:
    """Summed loss ``nats`` over a text of ``chars`` characters, in bits per character."""
    if chars <= 0:
        raise ValueError(f"bits_per_char needs a positive character count, got {chars}")
    return nats / math.log(2) / chars


@torch.no_grad()
def sequence_nats(model, tokenizer, texts: Sequence[str], prompts: Sequence[str] | None = None,
                  max_length: int = 512, batch_size: int = 8) -> list[tuple[float, int]]:
    """``(summed nats, scored tokens)`` per text: the next-token loss of every token after the first (after the
    prompt, when ``prompts`` are given: text = prompt + completion, and only the completion's tokens count).
    Texts end with EOS, as in training (the end of a function is part of it). A text longer than ``max_length``
    tokens is an error: a cut sequence would score less than the function (the caller filters by length)."""
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token or ""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[tuple[float, int]] = []
    for i in range(0, len(texts), batch_size):
        rows, starts = [], []
        for j, text in enumerate(texts[i:i + batch_size]):
            prompt = prompts[i + j] if prompts is not None else ""
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
            ids = p + tokenizer(text + eos, add_special_tokens=False)["input_ids"]
            if len(ids) > max_length:
                raise ValueError(f"sequence of {len(ids)} tokens exceeds max_length {max_length}")
            rows.append(ids)
            starts.append(max(1, len(p)))  # the first token has no prediction
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        scored = torch.zeros((len(rows), width), dtype=torch.float)
        for r, (row, start) in enumerate(zip(rows, starts)):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
            scored[r, start:len(row)] = 1.0
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:].to(device), reduction="none")
        weight = scored[:, 1:].to(device)
        out += [(float(s), int(c)) for s, c in zip((loss * weight).sum(1).tolist(), weight.sum(1).tolist())]
    return out


def source_as_ast_text(source: str | None, language: str = "python") -> str | None:
    """The compact AST text of ``source`` without its docstrings and comments (as the reference), when the slice's
    judge accepts it (Python: it compiles; JS/Java: it re-parses as one function with no error node), else None: a
    text prediction scored on the same footing as a generated tree."""
    if source is None:
        return None
    spec = get_language(language)
    try:
        # the reference's own form: docstrings and comments removed (tree-sitter trees keep comments as nodes)
        code = without_natural_language(language, source)
        if code is None:
            return None
        text = tokens_to_text(spec.codec.encode(code))
    except (SyntaxError, ValueError, RecursionError, MemoryError, TypeError):
        return None
    return text if spec.judge(text).valid else None


def score_source(predicted: str | None, reference_ast_text: str, language: str = "python") -> PairScore:
    """Docstring → code quality of generated source text against the reference tree, scored by the same function
    as a generated tree (``score_prediction``): valid when the slice's judge accepts it, exact when equal after
    alpha-renaming, tree similarity of depth-one productions (0 when invalid)."""
    text = source_as_ast_text(predicted, language)
    if text is None:
        return PairScore(False, False, 0.0, predicted)
    return score_prediction(language, text, reference_ast_text)
