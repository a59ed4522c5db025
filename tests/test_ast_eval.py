"""The AST-first recipe in ml/: language dispatch (grammar, judge), Phase 1/2 rows (no natural language in Phase 1,
the split as a column), PhaseConfig mapping, and evaluate_ast_models on tiny untrained models (no training: the
evaluation is what is under test)."""

from __future__ import annotations

import pytest
import torch

from assets.split_checks import leak_check
from ml.codec.tokens import SEP, text_to_tokens, tokens_to_text
from ml.constrained import GrammarLogitsProcessor
from ml.dataset import build_ast_rows, build_nl_ast_pairs
from ml.evaluation import ast_metrics
from ml.evaluation.ast_eval import AstEvalSettings, evaluate_ast_models
from ml.evaluation.lm import text_losses
from ml.evaluation.report import ast_eval_report
from ml.languages import LANGUAGES, get_language
from ml.splits import code_key, leaked_groups, split_of
from ml.stats import Estimate
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
# The split is a column of the rows: the fixtures set it (odd rows test, row 0 dev, the rest train).
SPLITS = {0: "dev"}


def _split(i: int) -> str:
    return "test" if i % 2 else SPLITS.get(i, "train")


def _rows(language: str, funcs: list[str]) -> tuple[list[dict], list[dict]]:
    codec = get_language(language).codec
    rows, pairs = [], []
    for i, code in enumerate(funcs):
        rid = f"{i:08x}" + "0" * 32
        text = tokens_to_text(codec.encode(code, "compact"))
        split = {"group_key": code_key(code), "split": _split(i)}
        rows.append({"id": rid, "ast_text": text, **split})
        pairs.append({"id": rid, "nl": f"Function number {i}.", "ast_text": text, "target_code": code, **split})
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


def test_every_slice_has_a_grammar_and_a_judge(python_setup):
    tok, _, _ = python_setup
    js_tok = _tokenizer("javascript", *_rows("javascript", JS_FUNCS))
    for language, t in (("python", tok), ("javascript", js_tok), ("java", js_tok)):
        make = LANGUAGES[language].grammar_factory(t, len(t), 32)
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


# ----------------------------------------------------------------------------- rows: no natural language, the split


def _unit(i: int, code: str, docstring: str = "") -> dict:
    return {"id": f"{i:040x}", "name": f"u{i}", "source": "test", "path": f"p{i}", "docstring": docstring,
            "code": code}


DOCUMENTED = '''def scale(values, factor):
    """Multiply every value by the factor and return the scaled list."""
    def one(v):
        """Scale a single value by the captured factor."""
        return v * factor
    class Box:
        """A box that remembers its label."""
        label = 'data stays'
    return [one(v) for v in values]
'''


def test_a_phase1_row_holds_no_docstring_and_phase2_keeps_it_as_the_prompt():
    units = [_unit(1, DOCUMENTED, "Multiply every value by the factor and return the scaled list."),
             _unit(2, 'def stub(x):\n    """Only a docstring: nothing left to model."""\n', "Only a docstring.")]
    rows, skipped = build_ast_rows("python", units, workers=1)
    [row] = rows
    assert skipped == {"docstring_only": 1}
    for phrase in ("Multiply every value", "Scale a single value", "remembers its label"):
        assert phrase not in row["ast_text"] and phrase not in row["renamed_code"]
    assert "data stays" in row["ast_text"]  # a string that is data is code, not natural language
    assert get_language("python").codec.verify(row["renamed_code"], text_to_tokens(row["ast_text"]), "compact")
    [pair], _ = build_nl_ast_pairs("python", rows, workers=1)
    assert pair["nl"].startswith("Multiply every value")
    assert pair["ast_text"] == row["ast_text"]  # the Phase 2 target is the Phase 1 tree: no docstring either
    assert (pair["group_key"], pair["split"]) == (row["group_key"], row["split"])


def test_a_phase1_row_holds_no_comment_of_a_treesitter_slice():
    code = ("function total(xs) {\n  // secret words in a line comment\n  let t = 0 /* inline remark */\n"
            "  for (const x of xs) { t += x }\n  /* a block\n     on two lines */\n  return t\n}")
    [row], skipped = build_ast_rows("javascript", [_unit(3, code)], workers=1)
    assert not skipped
    for phrase in ("secret words", "inline remark", "on two lines"):
        assert phrase not in row["ast_text"] and phrase not in row["renamed_code"]
    assert get_language("javascript").judge(row["ast_text"]).valid
    java = "int sum(int[] xs) {\n  int t = 0; // running total\n  /* loop */ for (int x : xs) t += x;\n  return t;\n}"
    [jrow], _ = build_ast_rows("java", [_unit(4, java)], workers=1)
    assert "running total" not in jrow["ast_text"] and "loop" not in jrow["ast_text"]


def test_renamed_copies_share_a_group_and_a_split_and_the_leak_check_sees_a_planted_leak():
    copies = ["def add(a, b):\n    '''Add.'''\n    total = a + b\n    return total\n",
              "def plus(x, y):\n    s = x + y\n    return s\n"]
    others = [f"def f{i}(a):\n    return a * {i}\n" for i in range(40)]
    rows, _ = build_ast_rows("python", [_unit(i, c) for i, c in enumerate(copies + others)], workers=1)
    assert rows[0]["group_key"] == rows[1]["group_key"] and rows[0]["split"] == rows[1]["split"]
    assert len({r["group_key"] for r in rows}) == len(others) + 1
    assert all(r["split"] == split_of(r["group_key"]) for r in rows)
    assert {r["split"] for r in rows} == {"train", "dev", "test"}
    assert leaked_groups(rows) == {"test": [], "dev": []}
    assert leak_check("ast_corpus", rows).passed
    # a copy of a test function whose split was set by something other than its key is caught
    test_row = next(r for r in rows if r["split"] == "test")
    planted = rows + [{**test_row, "id": "f" * 40, "split": "train"}]
    assert not leak_check("ast_corpus", planted).passed


def test_phase_rows_read_the_split_column(python_setup):
    tok, rows, pairs = python_setup
    texts, dev, dropped = phase1_split(tok, rows, max_length=512, max_eval_rows=64)
    assert dropped == 0
    assert all(t.startswith(tok.eos_token) for t in texts + dev)  # EOS is the sampling prompt
    eos = len(tok.eos_token)
    assert {t[eos:] for t in texts} == {r["ast_text"] for r in rows if r["split"] == "train"}
    assert [t[eos:] for t in dev] == [r["ast_text"] for r in rows if r["split"] == "dev"]
    assert not {r["ast_text"] for r in rows if r["split"] == "test"} & {t[eos:] for t in texts + dev}
    assert phase1_split(tok, rows, max_length=512, max_eval_rows=0)[1] == []
    longest = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert phase1_split(tok, rows, max_length=longest, max_eval_rows=64)[2] >= 1  # cut trees dropped
    train_pairs, dev_pairs = phase2_pairs(pairs, max_eval_rows=64)
    assert [nl for nl, _ in train_pairs] == [p["nl"] for p in pairs if p["split"] == "train"]
    assert [nl for nl, _ in dev_pairs] == [p["nl"] for p in pairs if p["split"] == "dev"]
    unsplit = [{k: v for k, v in r.items() if k != "split"} for r in rows]
    with pytest.raises(ValueError, match="no split column"):
        phase1_split(tok, unsplit, max_length=512, max_eval_rows=64)


def test_phase_config_maps_the_settings_once():
    settings = {"max_steps": 7, "learning_rate": 1e-3, "batch_size": 4, "gradient_accumulation_steps": 2,
                "max_length": 128, "lora_r": 8, "lora_alpha": 16, "trainable_embeddings": "auto",
                "eval_steps": 5, "save_steps": 5, "logging_steps": 1, "max_eval_rows": 3}
    cfg = phase_config(settings, tiny_base=True)
    assert (cfg.per_device_train_batch_size, cfg.per_device_eval_batch_size) == (4, 4)
    assert (cfg.max_steps, cfg.gradient_accumulation_steps, cfg.lora_r, cfg.logging_steps) == (7, 2, 8, 1)
    assert cfg.trainable_embeddings == "all"
    assert phase_config(settings).trainable_embeddings == "added"
    assert phase_config({**settings, "trainable_embeddings": "all"}).trainable_embeddings == "all"
    # A PhaseConfig field passes through under its own name (nothing is silently dropped) ...
    assert phase_config({"early_stopping_patience": 3}).early_stopping_patience == 3
    # ... and a setting PhaseConfig does not know is an error (the old held-out fraction among them).
    with pytest.raises(ValueError, match="lora_rank"):
        phase_config({"lora_rank": 8})
    with pytest.raises(ValueError, match="heldout_fraction"):
        phase_config({"heldout_fraction": 0.1})


def test_the_asset_configs_map_without_loss():
    from assets.ast_models import AstEvalConfig, Phase2TrainingConfig, PhaseTrainingConfig

    for config in (PhaseTrainingConfig(), Phase2TrainingConfig()):
        cfg = phase_config(config.model_dump())
        assert cfg.max_steps == config.max_steps and cfg.per_device_train_batch_size == config.batch_size
    # no step has a fraction of its own that could disagree with another's: they read the split column
    assert AstEvalSettings(**AstEvalConfig().model_dump()).max_test_texts == AstEvalConfig().max_test_texts
    assert not any("fraction" in name for name in [*PhaseTrainingConfig.model_fields, *AstEvalConfig.model_fields])


# ----------------------------------------------------------------------------- evaluate_ast_models


def _loader(tok, seed: int, calls: list[str], name: str, logit_scale: float = 1.0):
    def load():
        calls.append(name)
        model = build_base_model("tiny:qwen2", tok, seed=seed)
        if logit_scale != 1.0:  # sharper random logits: a model that is surely worse on every text
            with torch.no_grad():
                model.get_output_embeddings().weight.mul_(logit_scale)
        return model

    return load


SETTINGS = AstEvalSettings(samples=2, max_new_tokens=24, max_length=256)
METRICS = {"heldout_loss_initial", "heldout_loss_final", "heldout_loss_reduction", "valid_rate_unconstrained",
           "valid_rate_constrained", "nl2ast_valid_rate", "nl2ast_exact_match", "nl2ast_tree_similarity"}


def test_per_text_losses_do_not_depend_on_the_batch(python_setup):
    tok, rows, _ = python_setup
    model = build_base_model("tiny:qwen2", tok, seed=0)
    texts = [tok.eos_token + r["ast_text"] for r in rows]  # different lengths: padded in one batch
    batched = text_losses(model, tok, texts, 256, batch_size=8)
    alone = text_losses(model, tok, texts, 256, batch_size=1)
    assert batched == pytest.approx(alone, rel=1e-4)
    assert len({round(x, 4) for x in alone}) == len(texts)


def test_python_evaluation_on_known_models(python_setup):
    tok, rows, pairs = python_setup
    calls: list[str] = []
    logs: list[str] = []
    copy = {**rows[1], "id": "e" * 40}  # a second copy of a test function, same group: one item, not two
    result = evaluate_ast_models(
        _loader(tok, 0, calls, "base"), _loader(tok, 0, calls, "phase1"), _loader(tok, 1, calls, "phase2"),
        tok, rows + [copy], pairs, get_language("python"), SETTINGS, on_log=logs.append)
    m = result.metrics
    assert set(m) == METRICS
    assert calls == ["base", "phase1", "phase2"]  # one model at a time, in that order
    assert all(isinstance(e, Estimate) and e.split == "test" for e in m.values())
    # The loss is over the test functions only, one per group, each function one item.
    test_texts = [tok.eos_token + r["ast_text"] for r in rows if r["split"] == "test"]
    per_text = text_losses(build_base_model("tiny:qwen2", tok, seed=0), tok, test_texts, SETTINGS.max_length)
    initial = m["heldout_loss_initial"]
    assert initial.n == len(test_texts) == 3
    assert initial.value == pytest.approx(sum(per_text) / 3, rel=1e-5)
    assert initial.ci_low < initial.value < initial.ci_high
    # Phase 1 "model" = the base's weights: the paired difference is exactly 0, and nothing is claimed.
    assert initial.value == m["heldout_loss_final"].value
    diff = m["heldout_loss_reduction"]
    assert (diff.value, diff.ci_low, diff.ci_high, diff.n, diff.method) == (0.0, 0.0, 0.0, 3, "paired_bootstrap")
    assert result.verdicts == {"heldout_loss_reduction": "no measurable difference at n=3"}
    # The grammar admits only trees that compile, in sampling and in docstring -> AST alike: labelled as such.
    assert m["valid_rate_constrained"].value == 1.0 and m["nl2ast_valid_rate"].value == 1.0
    assert m["valid_rate_constrained"].n == SETTINGS.samples and m["valid_rate_constrained"].ci_low < 1.0
    assert set(result.by_construction) == {"valid_rate_constrained", "nl2ast_valid_rate"}
    assert all(j.valid for _, j in result.samples["constrained"])
    assert [p["nl"] for p in result.pairs] == [p["nl"] for p in pairs if p["split"] == "test"][: SETTINGS.samples]
    assert m["nl2ast_exact_match"].n == m["nl2ast_tree_similarity"].n == len(result.pairs) == SETTINGS.samples
    assert len(result.predictions) == len(result.scores) == len(result.pairs)
    assert m["nl2ast_exact_match"].value <= m["nl2ast_valid_rate"].value
    assert len(logs) == 3 and "no measurable difference at n=3" in logs[0]
    report = result.report("python", {})
    assert f"| `valid_rate_constrained` | {m['valid_rate_constrained']} (by construction" in report
    assert f"| `nl2ast_exact_match` | {m['nl2ast_exact_match']} |" in report
    assert "no measurable difference at n=3" in report and "beats" not in report.split("## Sampled")[0]
    assert "```python" in report


def test_a_better_phase1_beats_the_base_only_where_the_interval_says_so():
    rows, pairs = _rows("javascript", JS_FUNCS)
    tok = _tokenizer("javascript", rows, pairs)
    calls: list[str] = []
    # base: the same random weights with 20x sharper logits, far worse on every test function
    result = evaluate_ast_models(
        _loader(tok, 0, calls, "base", logit_scale=20.0), _loader(tok, 0, calls, "phase1"),
        _loader(tok, 2, calls, "phase2"), tok, rows, pairs, get_language("javascript"), SETTINGS)
    # The JavaScript grammar samples (and answers docstrings) under its mask: every finished tree re-parses here,
    # but only decoding is guaranteed, so the rates are measurements, not labelled "by construction".
    assert set(result.metrics) == METRICS and list(result.samples) == ["unconstrained", "constrained"]
    assert result.by_construction == ()
    assert result.metrics["valid_rate_constrained"].value == 1.0 == result.metrics["nl2ast_valid_rate"].value
    diff = result.metrics["heldout_loss_reduction"]
    assert diff.ci_low > 0 and diff.n == 2
    assert diff.value == pytest.approx(result.metrics["heldout_loss_initial"].value
                                       - result.metrics["heldout_loss_final"].value)
    assert result.verdicts["heldout_loss_reduction"] == "Phase 1 beats the base"
    report = result.report("javascript", {})
    assert f"| `heldout_loss_reduction` | {diff} | Phase 1 beats the base |" in report


def test_the_report_prints_value_interval_and_n():
    metrics = {"nl2ast_exact_match": Estimate(0.1667, 12, 0.047, 0.448),
               "heldout_loss_reduction": Estimate(0.02, 16, -0.01, 0.05, method="paired_bootstrap")}
    report = ast_eval_report("python", metrics, {}, [], [], [], {},
                             verdicts={"heldout_loss_reduction": "no measurable difference at n=16"})
    assert "| `nl2ast_exact_match` | 0.167 [0.047, 0.448] n=12 |" in report
    assert "| `heldout_loss_reduction` | 0.020 [-0.010, 0.050] n=16 | no measurable difference at n=16 |" in report
    assert "Split: test" in report


def test_nothing_in_the_test_split_fails_before_any_model_loads(python_setup):
    tok, rows, pairs = python_setup
    calls: list[str] = []
    loaders = [_loader(tok, 0, calls, n) for n in ("base", "phase1", "phase2")]
    train_only = [p for p in pairs if p["split"] != "test"]
    with pytest.raises(ValueError, match="no test pairs"):
        evaluate_ast_models(*loaders, tok, rows, train_only, get_language("python"), SETTINGS)
    with pytest.raises(ValueError, match="no test functions fit in 4 tokens"):
        evaluate_ast_models(*loaders, tok, rows, pairs, get_language("python"), AstEvalSettings(max_length=4))
    assert calls == []
