"""Unconstrained generation stops each row at the end of its answer: its first complete JSON object.

The scorer reads the first JSON value of an output and ignores what follows it (``ml.dsl.format.parse_completion``),
so the tokens a student writes after a complete object (an untrained base's explanation, a second object) change no
metric; they only cost a forward pass each, for the whole batch, until the last row stops or hits the token cap.
Schema-constrained generation needs none of this: its logits processor allows only EOS once the object is complete.
"""

from __future__ import annotations

import json

import torch


def first_object_complete(text: str) -> bool:
    """True when ``text`` holds a complete JSON value starting at its first ``{`` (what the scorer parses)."""
    start = text.find("{")
    if start < 0:
        return False
    try:
        json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return False
    return True


def json_end_stopping(tokenizer, prompt_width: int):
    """A ``transformers.StoppingCriteria`` marking a row done once its new tokens (after the ``prompt_width``
    left-padded prompt columns) hold a complete JSON object. A row is decoded again only when its newest token
    holds a ``}``: an object can only end there."""
    from transformers import StoppingCriteria

    closing = {i for t, i in tokenizer.get_vocab().items() if "}" in tokenizer.convert_tokens_to_string([t])}

    class JsonObjectEnd(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for row, last in enumerate(input_ids[:, -1].tolist()):
                if last in closing:
                    new = input_ids[row, prompt_width:].tolist()
                    done[row] = first_object_complete(tokenizer.decode(new, skip_special_tokens=True))
            return done

    return JsonObjectEnd()
