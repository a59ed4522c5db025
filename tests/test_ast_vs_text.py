"""AST-first vs plain text: the bits-per-character measure, the HumanEval prompts of both arms, and the asset on the
fixture corpus with a tiny model (both arms trained a few steps, every figure with its n and interval)."""

import json
import math
from pathlib import Path

import dagster as dg
import pytest

from assets import AST_ASSETS
from assets.ast_vs_text import ast_vs_text_eval
from ml.ast_vs_text.humaneval import make_task, program, truncate_text_completion
from ml.ast_vs_text.metrics import bits_per_char, score_source, sequence_nats
from ml.codec.python_ast import encode
from ml.codec.tokens import tokens_to_text
from ml.sandbox import run_python


def test_bits_per_char_of_known_losses():
    # 8 characters costing ln 2 nats each: one bit per character
    assert bits_per_char(8 * math.log(2), 8) == pytest.approx(1.0)
    assert bits_per_char(10 * math.log(2), 4) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        bits_per_char(1.0, 0)


class _Uniform:
    """A 'model' whose every next-token distribution is uniform over V tokens: each scored token costs ln V."""

    def __init__(self, vocab: int):
        import torch

        self.vocab, self.weight = vocab, torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self.weight])

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask):
        from types import SimpleNamespace

        import torch

        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


def test_sequence_nats_sums_over_scored_tokens_only():
    class Tok:
        eos_token, pad_token_id = "$", 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 50 + 1 for c in text]}

    model = _Uniform(64)
    (nats, n), = sequence_nats(model, Tok(), ["abcd"])  # 5 tokens with EOS, the first has no prediction
    assert n == 4 and nats == pytest.approx(4 * math.log(64), rel=1e-5)
    (nats, n), = sequence_nats(model, Tok(), ["abcd"], prompts=["xyz"])  # only the completion's 5 tokens count
    assert n == 5 and nats == pytest.approx(5 * math.log(64), rel=1e-5)
    assert bits_per_char(nats, 4) == pytest.approx(5 * 6 / 4)  # log2(64) = 6 bits per token
    with pytest.raises(ValueError):
        sequence_nats(model, Tok(), ["a" * 20], max_length=10)


def test_text_generation_stops_where_the_truncation_would_cut():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from ml.ast_vs_text.evaluation import generate, top_level_stopping
    from ml.training.ast_tokenizer import build_ast_tokenizer

    tok = build_ast_tokenizer("tiny:qwen2", ["def f(x):\n    return x\nprint(f(1))\n"] * 30, [], 300)
    body, more = tok("    return x\n    y = 1\n")["input_ids"], tok("    return x\nprint(1)")["input_ids"]
    stop = top_level_stopping(tok, 0)
    assert stop(torch.tensor([body]), None).tolist() == [False]  # an indented line: the body goes on
    assert stop(torch.tensor([more]), None).tolist() == [True]  # a column-0 line: the body has ended
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128)).eval()
    prompts = ["def f(x):\n", "def g(y, z):\n    "]
    full = generate(model, tok, prompts, 24)
    stopped = generate(model, tok, prompts, 24, stop_at_top_level=True)
    assert [truncate_text_completion(t) for t in stopped] == [truncate_text_completion(t) for t in full]


def test_text_answers_score_like_trees():
    ref = tokens_to_text(encode("def var_0(var_1):\n    return var_1 + 1\n"))
    same = score_source("def var_0(var_1):\n    return (var_1 + 1)  # spelled differently\n", ref)
    assert same.valid and same.exact and same.similarity == pytest.approx(1.0)
    other = score_source("def var_0(var_1):\n    return var_1 * 2\n", ref)
    assert other.valid and not other.exact and 0 < other.similarity < 1
    assert not score_source("def var_0(:\n", ref).valid


@pytest.mark.parametrize("language, reference, same, other, broken", [
    ("javascript", "function var_0(var_1) { return var_1 + 1; }",
     "function var_0(var_1) { return var_1+1; /* spelled differently */ }",
     "function var_0(var_1) { return var_1(1); }",
     "function var_0(var_1) { return var_1 + ; }"),
    ("java", "int var_0(int var_1) { return var_1 + 1; }",
     "int var_0(int var_1) { return var_1+1; /* spelled differently */ }",
     "int var_0(int var_1) { return Math.abs(var_1); }",
     "int var_0(int var_1) { return var_1 + ; }"),
])
def test_text_answers_score_like_trees_on_a_tree_sitter_slice(language, reference, same, other, broken):
    from ml.languages import get_language

    ref = tokens_to_text(get_language(language).codec.encode(reference))
    scored = score_source(same, ref, language)
    assert scored.valid and scored.exact and scored.similarity == pytest.approx(1.0)
    near = score_source(other, ref, language)
    assert near.valid and not near.exact and 0 < near.similarity < 1
    assert not score_source(broken, ref, language).valid  # no clean re-parse: invalid, not scored


PROBLEM = {"task_id": "T/0", "entry_point": "add_one", "test": "def check(f):\n    assert f([1], 2) == [3]\n",
           "prompt": "from typing import List\n\n\ndef add_one(numbers: List[int], k: int) -> List[int]:\n"
                     "    \"\"\"Add k to every number.\n    >>> add_one([1], 1)\n    [2]\n    \"\"\"\n"}


def test_humaneval_task_prefixes_and_names_back():
    task = make_task(PROBLEM)
    assert task.text_prefix == "def var_0(var_1: List[int], var_2: int) -> List[int]:\n"
    assert task.ast_prefix.startswith("<Module><indent><FunctionDef>var_0<arg>var_1") and task.ast_prefix.endswith(
        "<indent>")
    assert task.docstring.startswith("Add k to every number.")
    body = truncate_text_completion("    return [v + var_2 for v in var_1]\nprint('junk')\n")
    assert body == "    return [v + var_2 for v in var_1]\n"
    ran = run_python(program(task, task.text_prefix + body))
    assert ran.ok, ran.stderr
    wrong = run_python(program(task, task.text_prefix + "    return var_1\n"))
    assert not wrong.ok
    assert program(task, "def other(a):\n    return a\n") is None  # no function var_0: nothing to test


@pytest.mark.slow
def test_asset_trains_both_arms_and_reports_with_intervals(resources):
    prep = {"ops": {"ast_tokenizer": {"config": {"vocab_size": 400}}}}
    upstream = AST_ASSETS[:6]  # source files ... ast_base_model
    assert dg.materialize(upstream, resources=resources, partition_key="python", run_config=prep).success
    cfg = {"phase1_steps": 3, "phase2_steps": 3, "batch_size": 4, "curve_points": 3, "max_test_functions": 6,
           "nl2code_samples": 3, "humaneval_n": 3, "max_new_tokens": 64, "lora_r": 8, "lora_alpha": 16}
    result = dg.materialize([*upstream, ast_vs_text_eval], resources=resources, partition_key="python",
                            selection=[ast_vs_text_eval], run_config={"ops": {"ast_vs_text_eval": {"config": cfg}}})
    assert result.success
    catalog = resources["catalog"]
    rows = {r["metric"]: r for r in catalog.query(
        "SELECT metric, value, n, ci_low, ci_high, split FROM eval_metrics WHERE asset_key = 'ast_vs_text_eval'")}
    assert all(r["n"] and r["split"] == "test" for r in rows.values())  # every row with its evidence
    assert "text_tokens_seen" not in rows  # the budget: summary.json and the report
    for arm in ("text", "ast", "ast_constrained"):
        assert rows[f"{arm}_humaneval_pass_at_1"]["n"] == 3
        assert rows[f"{arm}_valid_rate"]["n"] == rows["text_valid_rate"]["n"] > 0  # the same test docstrings
    for arm in ("text", "ast"):
        r = rows[f"{arm}_bits_per_char"]
        assert r["n"] > 0 and r["split"] == "test" and r["ci_low"] <= r["value"] <= r["ci_high"] and r["value"] > 0
    assert rows["ast_constrained_valid_rate"]["value"] == 1.0  # the grammar admits only valid trees
    diff = rows["bits_per_char_text_minus_ast"]
    assert diff["n"] == rows["text_bits_per_char"]["n"] and diff["ci_low"] <= diff["value"] <= diff["ci_high"]
    folder = Path(catalog.latest_artifact("ast_vs_text_eval", "python")["path"])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["humaneval_n"] == 3
    assert summary["text_tokens_seen"] > 0 and summary["ast_tokens_seen"] > 0
    # the learning curve: the start and 3 checkpoints of each phase, per arm
    for arm in ("text", "ast"):
        assert [p[0] for p in summary["curve"][arm] if p[1] == "bits_per_char"] == [0, 1, 2, 3]
    report = (folder / "report.md").read_text()
    assert "HumanEval pass@1" in report and "n=3" in report and (folder / "learning_curves.png").stat().st_size
