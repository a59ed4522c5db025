"""ml/models/near_tie.py: an f16 export's greedy text may part from transformers' only where transformers' top two
logits are within epsilon and the export took the runner-up; hand-made logits over a five-token vocabulary."""

from __future__ import annotations

import pytest

from ml.models.near_tie import first_divergence, judge_divergence

VOCAB = ["def", " f", "(x", "\n", "<eos>"]
EOS = 4


def decode(ids) -> str:
    return "".join(VOCAB[i] for i in ids)


def logits(top: int, second: int, gap: float) -> list[float]:
    row = [0.0] * len(VOCAB)
    row[top], row[second] = 10.0, 10.0 - gap
    return row


REFERENCE = [0, 1, 2]  # transformers wrote "def f(x"


def test_a_near_tie_where_the_candidate_took_the_runner_up_is_accepted():
    steps = [logits(0, 3, 5.0), logits(1, 2, 0.01), logits(2, 3, 4.0)]
    verdict = judge_divergence(REFERENCE, steps, "def(x f", decode, epsilon=0.05)
    assert verdict.near_tie and verdict.step == 1 and verdict.margin == pytest.approx(0.01)


def test_a_real_divergence_is_refused():
    steps = [logits(0, 3, 5.0), logits(1, 2, 2.0), logits(2, 3, 4.0)]
    verdict = judge_divergence(REFERENCE, steps, "def(x f", decode, epsilon=0.05)
    assert not verdict.near_tie and verdict.step == 1 and verdict.margin == pytest.approx(2.0)
    assert "real divergence" in verdict.reason


def test_a_close_call_the_candidate_did_not_take_is_refused():
    steps = [logits(0, 3, 5.0), logits(1, 2, 0.01), logits(2, 3, 4.0)]
    verdict = judge_divergence(REFERENCE, steps, "def\n", decode, epsilon=0.05)  # a third token, " f" vs "(x" tied
    assert not verdict.near_tie and verdict.step == 1 and "neither" in verdict.reason


def test_a_tie_with_a_stop_is_judged_on_the_text_the_stop_leaves():
    steps = [logits(0, 3, 5.0), logits(1, 3, 0.02), logits(2, 3, 4.0)]
    # the export picked "\n" (a stop string) at step 1: its text ends after "def"
    assert judge_divergence(REFERENCE, steps, "def", decode, epsilon=0.05, stop=["\n"]).near_tie
    steps[1] = logits(1, EOS, 0.02)  # ... or the end-of-text token, which writes nothing
    assert judge_divergence(REFERENCE, steps, "def", decode, epsilon=0.05, stop_ids={EOS}).near_tie
    # transformers stopped, the export went on: the tie is at transformers' stop token
    stopped = [0, EOS]
    assert judge_divergence(stopped, [logits(0, 3, 5.0), logits(EOS, 1, 0.03)], "def f", decode, epsilon=0.05,
                            stop_ids={EOS}).near_tie
    assert not judge_divergence(stopped, [logits(0, 3, 5.0), logits(EOS, 1, 0.3)], "def f", decode, epsilon=0.05,
                                stop_ids={EOS}).near_tie


def test_the_divergence_is_the_first_token_the_candidate_does_not_follow():
    assert first_divergence(REFERENCE, "def f(x", decode) is None
    assert first_divergence(REFERENCE, "def f", decode) == 2
    assert first_divergence(REFERENCE, "x", decode) == 0
    # identical texts have no tie to blame
    steps = [logits(0, 3, 5.0), logits(1, 2, 0.0), logits(2, 3, 4.0)]
    assert not judge_divergence(REFERENCE, steps, "def f(x", decode, epsilon=0.05).near_tie


def test_logits_that_are_not_the_reference_runs_are_refused():
    steps = [logits(0, 3, 5.0), logits(2, 1, 0.01), logits(2, 3, 4.0)]  # top is "(x" but transformers wrote " f"
    assert not judge_divergence(REFERENCE, steps, "def(x", decode, epsilon=0.05).near_tie
    with pytest.raises(ValueError):
        judge_divergence(REFERENCE, steps, "def(x", decode, epsilon=-1)
