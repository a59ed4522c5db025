"""The srl step reward: known values, the malformed penalty, bounds, properties, and reward hacking scoring lower."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.srl.reward import (
    TOTAL_MAX,
    TOTAL_MIN,
    MiniLMEmbedder,
    RewardWeights,
    action_score,
    batch_rewards,
    length_penalty,
    levenshtein_similarity,
    state_score,
    step_reward,
    think_score,
)
from ml.srl.trace import Step, render_step

TEACHER = Step(
    think="Comparisons with None should use identity, so rewrite every == None as is None.",
    action={"rule": {"pattern": "$A == None"}, "fix": "$A is None"},
    state={
        "constraints": ["keep the public API", "no new imports"],
        "decisions": ["rewrite == None to is None"],
        "open_issues": ["check != None too"],
        "next_focus": "the != None comparisons",
    },
)


class FakeEmbed:
    """Bag-of-words hashed into 256 buckets, L2-normalized: deterministic, instant, and similar texts share words.
    Records each call so tests can count them."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = np.zeros((len(texts), 256), dtype=np.float32)
        for row, text in zip(rows, texts):
            for word in re.findall(r"\w+|[^\w\s]+", text.lower()):
                row[zlib.crc32(word.encode()) % 256] += 1.0
            norm = np.linalg.norm(row)
            if norm:
                row /= norm
        return rows


def step_text(think: str = TEACHER.think, action: dict | None = None, state: dict | None = None) -> str:
    return render_step(think, TEACHER.action if action is None else action, TEACHER.state if state is None else state)


# --- known values -------------------------------------------------------------------------------------------------


def test_levenshtein_similarity_known_values():
    assert levenshtein_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert levenshtein_similarity("", "") == 1.0
    assert levenshtein_similarity("abc", "") == 0.0
    assert levenshtein_similarity("$A is None", "$A is None") == 1.0


def test_identical_step_scores_full_marks():
    reward = step_reward(step_text(), TEACHER, FakeEmbed())
    assert not reward.malformed and reward.error is None
    assert reward.action == 1.0
    assert reward.state == 1.0
    assert reward.think == pytest.approx(1.0, abs=1e-6)
    assert reward.total == pytest.approx(0.5 + 0.3 + 0.2 * reward.think, abs=1e-6)


@pytest.mark.parametrize(
    ("student", "teacher", "expected"),
    [
        # shared: rule.pattern (1 edit in 10 -> 0.9), fix (1.0); student 3 keys (extra rule.kind), teacher 2
        ({"rule": {"pattern": "$A != None", "kind": "comparison"}, "fix": "$A is None"},
         {"rule": {"pattern": "$A == None"}, "fix": "$A is None"},
         2 * (0.9 + 1.0) / (3 + 2)),
        # constraints flatten to constraints.A.kind: shared 0.9 + 1 + 1 over 4 + 3 keys
        ({"rule": {"pattern": "$A != None", "kind": "comparison"}, "fix": "$A is None",
          "constraints": {"A": {"kind": "identifier"}}},
         {"rule": {"pattern": "$A == None"}, "fix": "$A is None", "constraints": {"A": {"kind": "identifier"}}},
         2 * (0.9 + 1.0 + 1.0) / (4 + 3)),
        # nothing shared but the fix, which differs entirely: 0
        ({"rule": {"pattern": "x"}, "fix": "ab"}, {"rule": {"pattern": "y", "kind": "k"}, "fix": "cd"}, 0.0),
    ],
)
def test_action_score_hand_computed(student, teacher, expected):
    assert action_score(student, teacher) == pytest.approx(expected)


def test_state_score_hand_computed_weighted_jaccard():
    teacher = {"constraints": ["keep  order", "no io"], "decisions": ["use is None"], "open_issues": [],
               "next_focus": "check the tests"}
    student = {"constraints": ["Keep order"], "decisions": ["USE is   None"], "open_issues": ["rename x"],
               "next_focus": "Check the callers"}
    # constraints 1/2 (case and whitespace normalized), decisions 1, open_issues 0, next_focus {check, the} / 4
    expected = (1.5 * 0.5 + 1.5 * 1.0 + 1.0 * 0.0 + 1.0 * 0.5) / 5.0
    assert state_score(student, teacher) == pytest.approx(expected)
    assert expected != pytest.approx((0.5 + 1.0 + 0.0 + 0.5) / 4)  # the weights matter in this case


def test_state_score_two_empty_lists_agree():
    state = {"constraints": [], "decisions": [], "open_issues": [], "next_focus": ""}
    assert state_score(state, state) == 1.0


def test_length_penalty_known_values():
    teacher = " ".join(["w"] * 10)
    assert length_penalty(" ".join(["w"] * 15), teacher) == 0.0
    assert length_penalty(" ".join(["w"] * 30), teacher) == pytest.approx(0.2 * (30 / 15 - 1))


def test_think_score_subtracts_the_length_penalty():
    embed = FakeEmbed()
    student = " ".join([TEACHER.think] * 4)  # same bag of words, so cosine 1
    assert think_score(student, TEACHER.think, embed) == pytest.approx(1.0 - length_penalty(student, TEACHER.think))


# --- malformed ----------------------------------------------------------------------------------------------------

MALFORMED = {
    "missing tag": step_text().replace("<think>", ""),
    "misordered tags": (f"<action>{'{}'}</action><think>t</think>"
                        f"<state_update>{'{}'}</state_update>"),
    "invalid json": step_text().replace('"fix":', '"fix"'),
    "action missing fix": step_text(action={"rule": {"pattern": "$A == None"}}),
    "text outside tags": "Sure! " + step_text(),
    "empty": "",
}


@pytest.mark.parametrize("completion", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_step_gets_exactly_the_penalty(completion):
    reward = step_reward(completion, TEACHER, FakeEmbed())
    assert reward.malformed and reward.error
    assert reward.total == -0.2
    assert (reward.action, reward.state, reward.think) == (None, None, None)
    assert step_reward(completion, TEACHER, FakeEmbed(), RewardWeights(malformed=-0.1)).total == -0.1


def test_malformed_penalty_ignores_execution():
    weights = RewardWeights(execution=0.5)
    assert step_reward(MALFORMED["invalid json"], TEACHER, FakeEmbed(), weights, execution=1.0).total == -0.2


# --- totals, execution, batching ----------------------------------------------------------------------------------


def test_total_is_clipped_to_its_range():
    embed = FakeEmbed()
    over = step_reward(step_text(), TEACHER, embed, RewardWeights(execution=1.0), execution=1.0)
    assert over.total == TOTAL_MAX == 1.0
    padded = step_text(think=" ".join(["unrelated"] * 2000), action={"rule": {"pattern": "q"}, "fix": "z"},
                       state={"constraints": [], "decisions": [], "open_issues": [], "next_focus": "x"})
    under = step_reward(padded, TEACHER, embed)
    assert not under.malformed and under.think < -10
    assert under.total == TOTAL_MIN == -0.2


def test_execution_term_adds_its_weight():
    embed = FakeEmbed()
    text = step_text(think="Fix the None checks.", action={"rule": {"pattern": "$A != None"}, "fix": "$A is not None"},
                     state={"constraints": [], "decisions": [], "open_issues": [], "next_focus": "done"})
    weights = RewardWeights(execution=0.25)
    base = step_reward(text, TEACHER, embed, weights).total
    assert base + 0.25 < TOTAL_MAX  # so the clip does not hide the term
    assert step_reward(text, TEACHER, embed, weights, execution=0.0).total == pytest.approx(base)
    assert step_reward(text, TEACHER, embed, weights, execution=1.0).total == pytest.approx(base + 0.25)
    assert step_reward(text, TEACHER, embed, execution=1.0).total == pytest.approx(base)  # default weight 0


def test_batch_rewards_embeds_once_and_matches_step_reward():
    completions = [step_text(), MALFORMED["missing tag"], step_text(think="Use is None for None checks.")]
    embed = FakeEmbed()
    batch = batch_rewards(completions, [TEACHER] * 3, embed, RewardWeights(execution=0.1), executions=[1.0, 1.0, 0.0])
    assert len(embed.calls) == 1 and len(embed.calls[0]) == 4  # two well-formed steps, student and teacher each
    singles = [step_reward(c, TEACHER, FakeEmbed(), RewardWeights(execution=0.1), execution=e)
               for c, e in zip(completions, [1.0, 1.0, 0.0])]
    assert [b.total for b in batch] == pytest.approx([s.total for s in singles])
    assert [b.malformed for b in batch] == [False, True, False]


def test_batch_rewards_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        batch_rewards([step_text()], [TEACHER, TEACHER], FakeEmbed())


def test_weights_as_dict():
    assert RewardWeights().as_dict() == {"action": 0.5, "state": 0.3, "think": 0.2, "execution": 0.0,
                                         "malformed": -0.2}


# --- properties ---------------------------------------------------------------------------------------------------

short = st.text(max_size=12)
actions = st.fixed_dictionaries(
    {"rule": st.fixed_dictionaries({"pattern": st.text(min_size=1, max_size=12)}, optional={"kind": short}),
     "fix": short},
    optional={"constraints": st.dictionaries(st.sampled_from("ABC"),
                                             st.dictionaries(st.sampled_from(["kind", "regex"]), short), max_size=2)},
)
states = st.fixed_dictionaries(
    {**{name: st.lists(short, max_size=4) for name in ("constraints", "decisions", "open_issues")},
     "next_focus": short}
)
words = st.lists(st.sampled_from(["none", "is", "rewrite", "the", "==", "x", "call"]), max_size=40).map(" ".join)


@given(actions, actions)
def test_action_score_bounded_and_symmetric(a, b):
    assert 0.0 <= action_score(a, b) <= 1.0
    assert action_score(a, b) == pytest.approx(action_score(b, a))
    assert action_score(a, a) == 1.0


@given(states, states)
def test_state_score_bounded_and_symmetric(a, b):
    assert 0.0 <= state_score(a, b) <= 1.0
    assert state_score(a, b) == pytest.approx(state_score(b, a))
    assert state_score(a, a) == pytest.approx(1.0)


@given(st.text(max_size=15), st.text(max_size=15))
def test_levenshtein_similarity_bounded_and_symmetric(a, b):
    assert 0.0 <= levenshtein_similarity(a, b) <= 1.0
    assert levenshtein_similarity(a, b) == levenshtein_similarity(b, a)
    assert levenshtein_similarity(a, a) == 1.0


@given(st.integers(1, 40), st.integers(0, 200))
def test_length_penalty_free_up_to_one_and_a_half_then_growing(teacher_len, student_len):
    teacher, student = " ".join(["t"] * teacher_len), " ".join(["s"] * student_len)
    penalty = length_penalty(student, teacher)
    if student_len <= 1.5 * teacher_len:
        assert penalty == 0.0
    else:
        assert penalty > 0.0
        assert length_penalty(student + " s", teacher) > penalty


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(st.text(max_size=60), st.builds(step_text, words.filter(str.strip), actions, states)),
    st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.sampled_from([None, 0.0, 1.0]),
)
def test_total_always_within_range(completion, w_action, w_state, w_think, w_execution, execution):
    weights = RewardWeights(action=w_action, state=w_state, think=w_think, execution=w_execution)
    reward = step_reward(completion, TEACHER, FakeEmbed(), weights, execution=execution)
    assert TOTAL_MIN <= reward.total <= TOTAL_MAX


# --- reward hacking scores lower than the honest answer -----------------------------------------------------------


def test_repeating_the_teachers_words_scores_below_an_honest_paraphrase():
    embed = FakeEmbed()
    hacked = " ".join([TEACHER.think] * 10)
    honest = "Compare with None by identity: rewrite == None as is None."
    assert think_score(hacked, TEACHER.think, embed) < think_score(honest, TEACHER.think, embed)
    assert (step_reward(step_text(think=hacked), TEACHER, embed).total
            < step_reward(step_text(think=honest), TEACHER, embed).total)


def test_copying_the_fix_with_a_wrong_pattern_scores_below_the_right_action():
    embed = FakeEmbed()
    hacked = {"rule": {"pattern": "$A"}, "fix": TEACHER.action["fix"]}
    near_miss = {"rule": {"pattern": "$A == None"}, "fix": "$A is  None"}
    assert action_score(hacked, TEACHER.action) < action_score(near_miss, TEACHER.action) < 1.0
    assert (step_reward(step_text(action=hacked), TEACHER, embed).total
            < step_reward(step_text(action=TEACHER.action), TEACHER, embed).total)


def test_stuffing_the_state_scores_below_the_honest_state():
    embed = FakeEmbed()
    junk = [f"maybe consider item {i}" for i in range(30)]
    stuffed = {name: TEACHER.state[name] + junk for name in ("constraints", "decisions", "open_issues")}
    stuffed["next_focus"] = TEACHER.state["next_focus"] + " " + " ".join(f"w{i}" for i in range(30))
    honest = {"constraints": ["keep the public API"], "decisions": ["rewrite == None to is None"],
              "open_issues": [], "next_focus": "!= None comparisons"}
    assert state_score(stuffed, TEACHER.state) < state_score(honest, TEACHER.state)
    assert (step_reward(step_text(state=stuffed), TEACHER, embed).total
            < step_reward(step_text(state=honest), TEACHER, embed).total)


# --- the embedder -------------------------------------------------------------------------------------------------


class CountingModel:
    """Stands in for the SentenceTransformer: records what it is asked to encode."""

    def __init__(self) -> None:
        self.encoded: list[list[str]] = []

    def encode(self, texts, normalize_embeddings=False, convert_to_numpy=True):
        self.encoded.append(list(texts))
        return FakeEmbed()(list(texts))


def test_embedder_caches_repeated_texts_in_a_bounded_dict():
    model = CountingModel()
    embed = MiniLMEmbedder(max_cache=3, model=model)
    first = embed(["a b", "c d", "a b"])
    assert model.encoded == [["a b", "c d"]]  # duplicates encoded once
    np.testing.assert_array_equal(first[0], first[2])
    again = embed(["c d", "e f"])
    assert model.encoded[-1] == ["e f"]  # "c d" came from the cache
    np.testing.assert_array_equal(again[0], first[1])
    embed(["g h"])  # the cache holds 3: "a b", the least recently used, is evicted
    assert len(embed._cache) == 3
    embed(["c d"])  # a hit refreshes "c d", so "e f" is now the least recently used
    embed(["i j"])
    calls = len(model.encoded)
    embed(["c d", "g h", "i j"])
    assert len(model.encoded) == calls  # all three still cached
    embed(["a b", "e f"])
    assert model.encoded[-1] == ["a b", "e f"]


def test_minilm_ranks_a_paraphrase_above_an_unrelated_sentence():
    embed = MiniLMEmbedder()
    vectors = embed([
        "Replace every comparison with None by an identity check.",
        "Use `is None` instead of `== None` when comparing to None.",
        "The bakery on the corner sells fresh bread every morning.",
    ])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    paraphrase, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert paraphrase > unrelated + 0.2
