"""The AST-first recipe in ml/: language dispatch (grammar, judge), Phase 1/2 rows, PhaseConfig mapping, and
evaluate_ast_models on tiny untrained models (no training: the evaluation is what is under test)."""

from __future__ import annotations

import pytest
import torch

from ml.codec.tokens import SEP, tokens_to_text
from ml.constrained import GrammarLogitsProcessor
from ml.evaluation import ast_metrics
from ml.evaluation.ast_eval import AstEvalSettings, evaluate_ast_models
from ml.evaluation.lm import heldout_loss
from ml.languages import LANGUAGES, get_language
from ml.training import build_ast_tokenizer, build_base_model
from ml.training.ast_phases import phase1_split, phase2_pairs, phase_config

PY_FUNCS = [
    "def f(a, b):\n    return a + b\n",
    "def g(x):\n    y = x * 2\n    return y\n",
    "def h(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n",
    "def k(a):\n    if a:\n        return 1\n    return 0\n",
    "def m(s):\n    return s.upper()\n",
    "def n(a, b):\n    return a - b\n",
]
JS_FUNCS = [
    "function f(a, b) { return a + b; }",
    "function g(x) { const y = x * 2; return y; }",
    "function h(xs) { let t = 0; for (const x of xs) { t += x; } return t; }",
    "function k(a) { if (a) { return 1; } return 0; }",
]
# Ids choose the split (ml.dataset.is_heldout hashes the first 8 hex digits): at fraction 0.5,
# "0..." rows are held out and "f..." rows are trained on.
FRACTION = 0.5


def _rows(language: str, funcs: list[str]) -> tuple[list[dict], list[dict]]:
    codec = get_language(language).codec
    rows, pairs = [], []
    for i, code in enumerate(funcs):
        rid = ("0" if i % 2 else "f") + f"{i:07x}" + "0" * 32
        text = tokens_to_text(codec.encode(code, "compact"))
        rows.append({"id": rid, "ast_text": text})
        pairs.append({"id": rid, "nl": f"Function number {i}.", "ast_text": text, "target_code": code})
    return rows, pairs


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tokenizer(language: str, rows: list[dict], pairs: list[dict]):
    vocab = [*get_language(language).codec.vocabulary(), SEP]
    corpus = [r["ast_text"] for r in rows] + [p["nl"] for p in pairs]
    return build_ast_tokenizer("tiny:qwen2", corpus * 4, vocab, vocab_size=300)


@pytest.fixture(scope="module")
def python_setup():
    rows, pairs = _rows("python", PY_FUNCS)
    return _tokenizer("python", rows, pairs), rows, pairs


# ----------------------------------------------------------------------------- the language registry


def test_only_python_has_a_grammar_and_every_slice_a_judge(python_setup):
    assert LANGUAGES["javascript"].grammar_factory is None
    assert LANGUAGES["java"].grammar_factory is None
    tok, _, _ = python_setup
    make = LANGUAGES["python"].grammar_factory(tok, len(tok), 32)
    assert isinstance(make([3, 3]), GrammarLogitsProcessor)
    assert all(callable(spec.judge) for spec in LANGUAGES.values())


def test_the_judge_is_the_slices_own():
    py_text = _rows("python", PY_FUNCS[:1])[0][0]["ast_text"]
    js_text = _rows("javascript", JS_FUNCS[:1])[0][0]["ast_text"]
    py = ast_metrics.judge("python", py_text)
    assert py.valid and "return" in py.source
    assert ast_metrics.judge("javascript", js_text).valid
    # Each judge reads its own codec's trees only: the registry, not a name test, picks it.
    assert not get_language("javascript").judge(py_text).valid
    assert not get_language("python").judge(js_text).valid
    assert not ast_metrics.judge("python", py_text[: len(py_text) // 2]).valid
    assert ast_metrics.judge("python", py_text) == get_language("python").judge(py_text)
    same = ast_metrics.score_prediction("python", py_text, py_text)
    assert (same.valid, same.exact, same.similarity) == (True, True, 1.0)


# ----------------------------------------------------------------------------- rows and settings


def test_phase_rows_keep_the_held_out_split(python_setup):
    tok, rows, pairs = python_setup
    texts, held, dropped = phase1_split(tok, rows, FRACTION, max_length=512, max_eval_rows=64)
    assert dropped == 0
    assert all(t.startswith(tok.eos_token) for t in texts + held)  # EOS is the sampling prompt
    assert {t[len(tok.eos_token):] for t in texts} == {r["ast_text"] for r in rows if r["id"][0] == "f"}
    assert {t[len(tok.eos_token):] for t in held} == {r["ast_text"] for r in rows if r["id"][0] == "0"}
    assert len(phase1_split(tok, rows, FRACTION, max_length=512, max_eval_rows=1)[1]) == 1
    longest = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert phase1_split(tok, rows, FRACTION, max_length=longest, max_eval_rows=64)[2] >= 1  # cut trees dropped
    train_pairs, held_pairs = phase2_pairs(pairs, FRACTION, max_eval_rows=64)
    assert [nl for nl, _ in held_pairs] == [p["nl"] for p in pairs if p["id"][0] == "0"]
    assert len(train_pairs) + len(held_pairs) == len(pairs)


def test_phase_config_maps_the_settings_once():
    settings = {"max_steps": 7, "learning_rate": 1e-3, "batch_size": 4, "gradient_accumulation_steps": 2,
                "max_length": 128, "lora_r": 8, "lora_alpha": 16, "trainable_embeddings": "auto",
                "eval_steps": 5, "save_steps": 5, "logging_steps": 1, "heldout_fraction": 0.1, "max_eval_rows": 3}
    cfg = phase_config(settings, tiny_base=True)
    assert (cfg.per_device_train_batch_size, cfg.per_device_eval_batch_size) == (4, 4)
    assert (cfg.max_steps, cfg.gradient_accumulation_steps, cfg.lora_r, cfg.logging_steps) == (7, 2, 8, 1)
    assert cfg.trainable_embeddings == "all"
    assert phase_config(settings).trainable_embeddings == "ast"
    assert phase_config({**settings, "trainable_embeddings": "all"}).trainable_embeddings == "all"
    # A PhaseConfig field passes through under its own name (nothing is silently dropped) ...
    assert phase_config({"early_stopping_patience": 3}).early_stopping_patience == 3
    # ... and a setting PhaseConfig does not know is an error.
    with pytest.raises(ValueError, match="lora_rank"):
        phase_config({"lora_rank": 8})


def test_the_asset_configs_map_without_loss():
    from assets.ast_models import Phase2TrainingConfig, PhaseTrainingConfig

    for config in (PhaseTrainingConfig(), Phase2TrainingConfig()):
        cfg = phase_config(config.model_dump())
        assert cfg.max_steps == config.max_steps and cfg.per_device_train_batch_size == config.batch_size


# ----------------------------------------------------------------------------- evaluate_ast_models


def _loader(tok, seed: int, calls: list[str], name: str):
    def load():
        calls.append(name)
        return build_base_model("tiny:qwen2", tok, seed=seed)

    return load


SETTINGS = AstEvalSettings(samples=2, max_new_tokens=24, heldout_fraction=FRACTION, max_length=256)
METRICS = {"heldout_loss_initial", "heldout_loss_final", "valid_rate_unconstrained", "valid_rate_constrained",
           "nl2ast_valid_rate", "nl2ast_exact_match", "nl2ast_tree_similarity"}


def test_python_evaluation_on_known_models(python_setup):
    tok, rows, pairs = python_setup
    calls: list[str] = []
    logs: list[str] = []
    result = evaluate_ast_models(
        _loader(tok, 0, calls, "base"), _loader(tok, 0, calls, "phase1"), _loader(tok, 1, calls, "phase2"),
        tok, rows, pairs, get_language("python"), SETTINGS, on_log=logs.append)
    m = result.metrics
    assert set(m) == METRICS
    assert calls == ["base", "phase1", "phase2"]  # one model at a time, in that order
    # Phase 1 "model" = the base's weights: the two losses are the same number, on the held-out functions only.
    held = [tok.eos_token + r["ast_text"] for r in rows if r["id"][0] == "0"]
    expected = heldout_loss(build_base_model("tiny:qwen2", tok, seed=0), tok, held, SETTINGS.max_length)
    assert m["heldout_loss_initial"] == m["heldout_loss_final"] == round(expected, 4)
    # The grammar admits only trees that compile, in sampling and in docstring -> AST alike.
    assert m["valid_rate_constrained"] == 1.0 and m["nl2ast_valid_rate"] == 1.0
    assert all(j.valid for _, j in result.samples["constrained"])
    assert [p["nl"] for p in result.pairs] == [p["nl"] for p in pairs if p["id"][0] == "0"][: SETTINGS.samples]
    assert len(result.predictions) == len(result.scores) == len(result.pairs)
    assert m["nl2ast_exact_match"] <= m["nl2ast_valid_rate"]
    assert len(logs) == 2 and "constrained sampling valid 1.00" in logs[1]
    report = result.report("python", {})
    assert "`valid_rate_constrained`" in report and "```python" in report


def test_a_slice_without_a_grammar_reports_no_constrained_metric():
    rows, pairs = _rows("javascript", JS_FUNCS)
    tok = _tokenizer("javascript", rows, pairs)
    calls: list[str] = []
    result = evaluate_ast_models(
        _loader(tok, 0, calls, "base"), _loader(tok, 1, calls, "phase1"), _loader(tok, 2, calls, "phase2"),
        tok, rows, pairs, get_language("javascript"), SETTINGS)
    assert set(result.metrics) == METRICS - {"valid_rate_constrained"}
    assert list(result.samples) == ["unconstrained"]
    assert result.metrics["heldout_loss_initial"] != result.metrics["heldout_loss_final"]  # different weights


def test_nothing_held_out_fails_before_any_model_loads(python_setup):
    tok, rows, pairs = python_setup
    calls: list[str] = []
    loaders = [_loader(tok, 0, calls, n) for n in ("base", "phase1", "phase2")]
    train_only = [p for p in pairs if p["id"][0] == "f"]
    with pytest.raises(ValueError, match="no held-out pairs"):
        evaluate_ast_models(*loaders, tok, rows, train_only, get_language("python"), SETTINGS)
    with pytest.raises(ValueError, match="no held-out functions fit in 4 tokens"):
        evaluate_ast_models(*loaders, tok, rows, pairs, get_language("python"),
                            AstEvalSettings(heldout_fraction=FRACTION, max_length=4))
    assert calls == []
