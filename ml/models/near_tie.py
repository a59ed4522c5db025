"""Whether two greedy completions of one prompt differ only by a near tie.

An f16 GGUF runs the model's weights rounded to f16 (and llama.cpp's kernels): its logits differ from transformers'
fp32 ones by a small amount, so where transformers' two best next tokens are closer than that, llama.cpp may pick the
second, and from there the two texts part. That is not a broken export. A broken one (a wrong tokenizer, a wrong
pre-tokenizer, a missing adapter) parts where transformers' pick is clearly ahead. :func:`judge_divergence` tells
the two apart from transformers' own greedy run: the token ids it picked and its logits at each step.

Rule: the candidate's text is walked along transformers' tokens to the first token it does not follow. There the
candidate is accepted only when transformers' top two logits are at most ``epsilon`` apart and the candidate's text
follows the runner-up token (it took the other side of the tie, not some third token).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

# Largest gap (in logits) between transformers' top two tokens at which an f16 export may pick the second. Measured
# along transformers' greedy path, the f16 file moved that gap (top-1 minus top-2, fp32 vs llama.cpp f16) by at most
# 0.021 on SmolLM2-135M (11 prompts x 24 steps; 5 of the 264 steps had gaps under 0.05) and 0.048 on the wide-init
# test model of tests/test_gguf_export.py (7 x 16); 0.1 is twice the larger. A broken export parts where the pick
# leads by far more, and q8_0 moves the gap by up to 0.75 (its check is a share of prompts, not this rule).
NEAR_TIE_EPSILON = 0.1

Decode = Callable[[Sequence[int]], str]


@dataclass(frozen=True)
class Divergence:
    """Where and why a candidate's text parts from the reference's greedy tokens. ``step``: the index of the first
    reference token the candidate does not follow (None when none); ``margin``: transformers' top-1 minus top-2
    logit there; ``near_tie``: whether the mismatch is accepted; ``reason``: in words."""

    step: int | None
    margin: float | None
    near_tie: bool
    reason: str


def _follows(ids: Sequence[int], candidate: str, decode: Decode, stop: Sequence[str],
             stop_ids: Collection[int]) -> bool:
    """Whether ``candidate`` (a completion's final text: cut before its first stop string, no stop token's text)
    could have come from a generation that emitted ``ids`` so far."""
    if ids and ids[-1] in stop_ids:  # the generation ended here: the text is complete
        return candidate == decode(ids[:-1])
    text = decode(ids)
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if cuts:  # a stop string: the text ends before it
        return candidate == text[:min(cuts)]
    # a token ending mid-character decodes to U+FFFD until the next one completes it
    return candidate.startswith(text.rstrip("\ufffd"))


def first_divergence(reference_ids: Sequence[int], candidate: str, decode: Decode, stop: Sequence[str] = (),
                     stop_ids: Collection[int] = ()) -> int | None:
    """The index of the first of ``reference_ids`` (transformers' greedy tokens) that ``candidate`` does not follow,
    or None when it follows them all."""
    for step in range(len(reference_ids)):
        if not _follows(reference_ids[: step + 1], candidate, decode, stop, stop_ids):
            return step
    return None


def judge_divergence(reference_ids: Sequence[int], step_logits: Sequence[Sequence[float]], candidate: str,
                     decode: Decode, *, epsilon: float = NEAR_TIE_EPSILON, stop: Sequence[str] = (),
                     stop_ids: Collection[int] = ()) -> Divergence:
    """Whether ``candidate`` differs from transformers' greedy completion only by a near tie (see the module).

    ``reference_ids``: the tokens transformers picked; ``step_logits[i]``: its logits over the vocabulary before
    picking ``reference_ids[i]``; ``decode``: token ids to text as the completion engine writes it; ``stop`` and
    ``stop_ids``: what ended both completions (stop strings cut the text, stop tokens end it unwritten)."""
    if epsilon < 0:
        raise ValueError(f"epsilon must be at least 0, not {epsilon}")
    step = first_divergence(reference_ids, candidate, decode, stop, stop_ids)
    if step is None:
        return Divergence(None, None, False, "the candidate follows every token transformers picked: the texts "
                                             "differ without a different pick (not a tie)")
    row = [float(x) for x in step_logits[step]]
    if len(row) < 2:
        raise ValueError(f"step {step} has {len(row)} logits; a tie needs at least two")
    top, second = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:2]
    if top != reference_ids[step]:
        return Divergence(step, None, False, f"at step {step} transformers picked token {reference_ids[step]}, "
                                             f"not its top logit ({top}): the logits are not that run's")
    margin = row[top] - row[second]
    if margin > epsilon:
        return Divergence(step, margin, False, f"at step {step} transformers' pick leads the runner-up by "
                                               f"{margin:.4g} logits (> {epsilon}): a real divergence")
    if not _follows([*reference_ids[:step], second], candidate, decode, stop, stop_ids):
        return Divergence(step, margin, False, f"at step {step} transformers' top two are {margin:.4g} logits "
                                               f"apart, but the candidate took neither")
    return Divergence(step, margin, True, f"near tie at step {step}: transformers' top two are {margin:.4g} logits "
                                          f"apart (<= {epsilon}) and the candidate took the runner-up")
