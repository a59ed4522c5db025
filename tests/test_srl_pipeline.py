"""The srl group through Dagster on a tiny model: tasks → sandboxed teacher traces → base with tags → warm-up + a
2-step GRPO → base / warm-up / student evaluation on test families (n, intervals, paired differences), and the
ablation sweep on dev families; plus the recipe's pieces on known input, and one GRPO step that moves the adapter."""

import json
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from ml.srl.recipe import EvalInputs, paired_differences, score_steps, split_inputs
from ml.srl.reward import RewardWeights
from ml.srl.teacher import (
    ProgrammaticSrlTeacher,
    programmatic_step,
    teacher_success,
    teacher_traces,
    trace_quality,
)
from ml.srl.trace import parse_step
from ml.stats import Estimate

# functions where train families (len(x) == 0, x = x + 1), a dev one (s[0:n]) and test ones (not len(x), x = x - 1)
# match
SOURCE = "\n\n".join(
    f"def count_{i}(items, n):\n    total = 0\n    while n > 0:\n        total = total + {i + 1}\n"
    f"        n = n - 1\n    if len(items) == 0:\n        return total\n    if not len(items):\n        return -1\n"
    f"    head = items[0:n]\n    return total\n" for i in range(4)
) + "\n"


def _bag_of_words(texts):
    """A deterministic stand-in for MiniLM: hashed word counts, normalised."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            out[row, hash(word) % 64] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _task(family: str, code: str, expected: str) -> dict:
    from ml.srl.families import get_family

    f = get_family(family)
    return {"id": f"{family}-1", "language": f.language, "family": family, "split": f.split,
            "instruction": f.instruction, "code": code, "expected": expected}


def test_teacher_traces_keep_only_steps_that_executed():
    good = _task("py_len_eq_zero", "def f(xs):\n    return len(xs) == 0\n", "def f(xs):\n    return not xs\n")
    wrong = dict(good, id="wrong", expected="def f(xs):\n    return xs\n")  # the teacher's rule cannot produce it

    class Garbled(ProgrammaticSrlTeacher):
        def step(self, task):
            return "<think>no</think>" if task["id"] == "garbled" else super().step(task)

    batch = teacher_traces([good, wrong, dict(good, id="garbled")], Garbled())
    assert [t["task_id"] for t in batch.traces] == ["py_len_eq_zero-1"]
    assert batch.rejected == {"not_expected_code": 1, "malformed": 1}
    report = json.loads(batch.traces[0]["env_report"])
    assert report["behaviour"] == "same" and report["parses"] and batch.traces[0]["trace_quality"] == 1.0
    assert trace_quality(parse_step("<think>x</think>"), None) == 0.0
    # before the filter the teacher is measured, not 1.0 by construction: 1 of 3 steps executed, 2 of 3 parse
    assert [o["executed"] for o in batch.outcomes] == [True, False, False]
    rates = teacher_success(batch.outcomes, split="train")
    assert rates["execution_success"].value == pytest.approx(1 / 3) and rates["execution_success"].n == 3
    assert rates["trace_parse_rate"].value == pytest.approx(2 / 3)
    assert teacher_success(batch.outcomes, split="test")["execution_success"].n == 0


def test_scores_of_known_steps():
    task = _task("py_len_eq_zero", "def f(xs):\n    return len(xs) == 0\n", "def f(xs):\n    return not xs\n")
    from ml.srl.families import get_family

    teacher = programmatic_step(get_family("py_len_eq_zero"))
    wrong_action = teacher.replace('"fix":"not $A"', '"fix":"$A"')

    class Words:  # score_steps only counts tokens
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    from ml.srl.environment import execute_actions

    inputs = EvalInputs(tasks=[task] * 3, teacher_steps=[teacher] * 3)
    scored = score_steps("student", inputs, [teacher, wrong_action, "garbage"], _bag_of_words, Words(),
                         execute_actions)
    m = scored.metrics
    assert all(isinstance(v, Estimate) and v.n in (2, 3) and v.split == "test" for v in m.values())
    assert m["trace_parse_rate"].value == pytest.approx(2 / 3) and m["trace_parse_rate"].method == "wilson"
    assert m["trace_parse_rate"].ci_low < 2 / 3 < m["trace_parse_rate"].ci_high
    assert m["execution_success"].value == pytest.approx(1 / 3)  # the wrong fix runs but gives other code
    assert 1 / 3 < m["action_fidelity"].value < 2 / 3  # 1 + partial + 0 (malformed)
    assert m["action_fidelity"].method == "bootstrap"
    assert m["state_faithfulness"].value == pytest.approx(2 / 3)
    assert m["reward"].value == pytest.approx((1.0 + scored.rows[1]["reward"] - 0.2) / 3)
    assert m["think_tokens"].n == 2  # lengths are over the steps that parsed
    assert [r["executed"] for r in scored.rows] == [True, False, False]
    # the teacher's reference steps parse and execute by construction: no rate of it is reported
    teacher_only = score_steps("teacher", EvalInputs([task], [teacher]), [teacher], _bag_of_words, Words(),
                               execute_actions, RewardWeights())
    assert set(teacher_only.metrics) == {"think_tokens", "state_tokens"}


def _row(policy, task_id, executed, reward):
    return {"policy": policy, "task_id": task_id, "family": "f", "parsed": True, "executed": executed,
            "reward": reward, "action_score": reward, "completion": "<think>…", "parse_error": None, "env_status": "ok"}


def test_paired_differences_align_tasks_and_the_report_says_beats_only_when_the_interval_excludes_0():
    from ml.srl.report import comparison_lines, srl_report

    n = 12
    student = [_row("student", f"t{i}", i < 9, 0.8) for i in range(n)]
    warmup = [_row("warmup", f"t{i}", i < 8, 0.7) for i in reversed(range(n))]  # another order: aligned by id
    base = [_row("base", f"t{i}", False, -0.2) for i in range(n)]
    rows = student + warmup + base
    vs_base = paired_differences(rows, "student", "base", "test")
    diff = vs_base["student_minus_base_execution_success"]
    assert diff.value == pytest.approx(9 / 12) and diff.n == n and diff.method == "paired_bootstrap"
    assert diff.excludes_zero
    grpo = paired_differences(rows, "student", "warmup", "test")["student_minus_warmup_execution_success"]
    assert grpo.value == pytest.approx(1 / 12) and not grpo.excludes_zero  # one task apart: not measurable
    metrics = {**vs_base, **paired_differences(rows, "student", "warmup", "test"),
               "student_execution_success": Estimate(0.75, 12, 0.47, 0.91)}
    lines = "\n".join(comparison_lines(metrics))
    assert f"student − base, `execution_success`: {diff}: student beats base" in lines
    assert f"student − warmup, `execution_success`: {grpo}: no measurable difference at n=12" in lines
    report = srl_report("python", metrics, rows, n)
    assert "0.750 [0.470, 0.910] n=12" in report and "by construction" in report
    with pytest.raises(ValueError, match="different tasks"):
        paired_differences(student + base[:-1], "student", "base", "test")


def test_evaluation_inputs_come_from_one_split():
    traces = [{"task_id": f"{s}{i}", "language": "python", "family": f"fam_{s}", "split": s, "instruction": "i",
               "code": "c", "expected": "e", "step": "x"} for s in ("train", "dev", "test") for i in range(5)]
    test = split_inputs(traces, "test", 3, seed=0)
    assert len(test.tasks) == 3 and {t["split"] for t in test.tasks} == {"test"} and test.split == "test"
    assert {t["split"] for t in split_inputs(traces, "dev", 10, seed=0).tasks} == {"dev"}
    with pytest.raises(ValueError, match="dev or test"):
        split_inputs(traces, "train", 3, seed=0)


def test_the_execution_weight_adds_the_sandboxed_result_to_the_reward():
    """reward_execution > 0 runs each sampled step's action in the sandbox: a step that does the task gains the
    weight, one whose action gives other code does not; weight 0 leaves the reward as it was."""
    from ml.srl.environment import execute_actions
    from ml.srl.families import get_family
    from ml.srl.recipe import StructuredReward
    from ml.srl.trace import render_step

    family = get_family("py_len_eq_zero")
    teacher = programmatic_step(family)
    state = {"constraints": [], "decisions": ["other"], "open_issues": [], "next_focus": "x"}
    works = render_step("a quite different reason", family.action(), state)  # right action, other words
    wrong = render_step("a quite different reason", {**family.action(), "fix": "$A"}, state)
    task = {"code": ["def f(xs):\n    return len(xs) == 0\n"] * 2, "language": ["python"] * 2,
            "expected": ["def f(xs):\n    return not xs\n"] * 2}
    plain = StructuredReward(_bag_of_words, RewardWeights())([""] * 2, [works, wrong], [teacher] * 2, **task)
    weighted = StructuredReward(_bag_of_words, RewardWeights(execution=0.25), execute_actions)
    scored = weighted([""] * 2, [works, wrong], [teacher] * 2, **task)
    assert scored[0] == pytest.approx(plain[0] + 0.25) and plain[0] + 0.25 < 1.0
    assert scored[1] == pytest.approx(plain[1])
    assert weighted.components["execution"] == [1.0, 0.0]
    with pytest.raises(ValueError, match="execute function"):
        StructuredReward(_bag_of_words, RewardWeights(execution=0.25))


def test_a_grpo_step_moves_the_adapter_and_the_policy_away_from_its_reference(tmp_path):
    """Two GRPO steps on a tiny model: the LoRA's B matrices start at 0 and are not 0 after training, and the KL to
    the reference (the model where RL started) is 0 before the first update and above 0 after it."""
    import torch
    from safetensors.torch import load_file

    from ml.compute import resolve_compute
    from ml.srl.recipe import GRPOSettings, StructuredReward, srl_tokenizer, train_grpo
    from ml.training.base_model import build_base_model, save_base_model

    class Varied(StructuredReward):  # a reward that differs between samples, so that advantages are not all 0
        def __call__(self, prompts, completions, teacher_step, **_):
            return [float(len(set(c))) / 10 for c in completions]

    torch.manual_seed(0)
    texts = ["<think>why</think><action>{}</action><state_update>{}</state_update> rewrite the code"] * 20
    tok = srl_tokenizer("tiny:qwen2", texts, 300)
    save_base_model(build_base_model("tiny:qwen2", tok), tok, tmp_path / "base")
    rows = [{"prompt": f"rewrite {i}:", "teacher_step": texts[0]} for i in range(4)]
    cfg = GRPOSettings(beta=0.1, max_steps=2, learning_rate=5e-2, num_generations=2, per_device_train_batch_size=2,
                       max_completion_length=8, save_steps=10, lora_r=4, lora_alpha=8)
    result = train_grpo(tmp_path / "base", None, tok, rows, tmp_path / "out", tmp_path / "work", cfg,
                        resolve_compute(device="cpu"), Varied(_bag_of_words, RewardWeights()))
    assert result.steps == 2
    weights = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and any(float(w.abs().max()) > 0 for w in lora_b)
    kl = [v for _, m, v in result.curve if m == "kl"]
    assert len(kl) == 2 and kl[0] == pytest.approx(0.0, abs=1e-6) and kl[-1] > 0


@pytest.mark.slow
def test_group_end_to_end_on_a_tiny_model(tmp_path, astforge_home):
    from assets import DATA_ASSETS, SRL_ASSETS
    from definitions import build_resources
    from resources import CorpusResource, DuckDBCatalog

    src = tmp_path / "src"
    src.mkdir()
    (src / "counters.py").write_text(SOURCE)
    resources = build_resources(corpus=CorpusResource(sources={"python": f"dir:{src}"}))
    corpus = [a for a in DATA_ASSETS if a.key.to_user_string() in ("source_files", "code_units")]
    assert dg.materialize(corpus, resources=resources, partition_key="python").success

    adapter = {"sft_steps": 2, "sft_batch_size": 2, "max_steps": 2, "num_generations": 2,
               "per_device_train_batch_size": 2, "max_completion_length": 12, "precision": "fp32",
               "max_length": 1536}  # the tiny BPE splits finely: the prompts run past the default 768
    run_config = {"ops": {
        "srl_base_model": {"config": {"base_model": "tiny:qwen2", "vocab_size": 300}},
        "srl_adapter": {"config": adapter},
        "srl_eval": {"config": {"eval_tasks": 2, "max_new_tokens": 12}},
        "srl_ablation": {"config": {**adapter, "max_steps": 1, "betas": [0.05, 0.0], "malformed_penalties": [-0.2],
                                    "reward_weights": ["0.5,0.3,0.2"], "eval_tasks": 2, "max_new_tokens": 8}},
    }}
    result = dg.materialize(SRL_ASSETS, resources=resources, partition_key="python", run_config=run_config,
                            selection=SRL_ASSETS)
    assert result.success

    def meta(key):
        return result.asset_materializations_for_node(key)[-1].metadata

    tasks_meta = meta("srl_tasks")
    assert [tasks_meta[f"{s}_tasks"].value for s in ("train", "dev", "test")] == [8, 4, 8]
    assert meta("srl_teacher_traces")["traces"].value == 20
    checks = {(c.asset_key.to_user_string(), c.check_name): c.passed
              for c in result.get_asset_check_evaluations()}
    assert checks == {("srl_tasks", "no_split_leak"): True, ("srl_teacher_traces", "no_split_leak"): True}
    assert meta("srl_adapter")["grpo_steps"].value == 2 and meta("srl_adapter")["warmup_steps"].value == 2
    catalog = DuckDBCatalog()
    assert catalog.latest_artifact("srl_base_model", "all") is not None  # shared by the slices

    evidence = {r["metric"]: r for r in catalog.query(
        "SELECT metric, value, n, ci_low, ci_high, split FROM eval_metrics "
        "WHERE asset_key = 'srl_eval' AND partition = 'python'")}
    metrics = {k: r["value"] for k, r in evidence.items()}
    for policy in ("base", "warmup", "student"):
        for name in ("trace_parse_rate", "action_fidelity", "state_faithfulness", "execution_success", "reward"):
            row = evidence[f"{policy}_{name}"]
            assert row["n"] == 2 and row["split"] == "test" and row["ci_low"] <= row["value"] <= row["ci_high"]
    for diff in ("student_minus_base_execution_success", "student_minus_warmup_execution_success",
                 "student_minus_warmup_reward", "warmup_minus_base_reward"):
        assert evidence[diff]["n"] == 2 and evidence[diff]["split"] == "test"
    # 1.0 by construction for the kept traces: not reported as a result; measured before the filter instead
    assert "teacher_execution_success" not in metrics and "teacher_trace_parse_rate" not in metrics
    teacher = {r["metric"]: r for r in catalog.query(
        "SELECT metric, value, n, split FROM eval_metrics WHERE asset_key = 'srl_teacher_traces'")}
    assert teacher["teacher_execution_success"]["n"] == 8 and teacher["teacher_execution_success"]["split"] == "test"
    # pooled over tokens, its interval from resampling the steps (n: steps with tokens)
    kl = evidence["student_kl_per_token"]
    assert kl["n"] == 2 and kl["ci_low"] <= kl["value"] <= kl["ci_high"] and kl["split"] == "test"
    # the student is also held to the step grammar (the base is not: it never ends a think within the budget)
    assert {"student_trace_parse_rate_constrained", "student_execution_success_constrained"} <= set(metrics)
    assert "base_trace_parse_rate_constrained" not in metrics  # the base is not held to the grammar
    assert math.isfinite(metrics["student_kl_per_token"])
    rows = catalog.query("SELECT policy, split, count(*) AS n FROM srl_eval_results GROUP BY ALL ORDER BY policy")
    assert [(r["policy"], r["split"], r["n"]) for r in rows] == [
        ("base", "test", 2), ("student", "test", 2), ("teacher", "test", 2), ("warmup", "test", 2)]
    curve = {r["metric"] for r in catalog.query(
        "SELECT DISTINCT metric FROM training_metrics WHERE asset_key = 'srl_adapter'")}
    assert {"kl", "reward", "malformed_rate", "warmup/loss"} <= curve
    report = meta("srl_eval")["report"].value
    assert "| execution_success |" in report and "student − base, `execution_success`" in report
    assert " n=2" in meta("srl_eval")["figures"].value
    eval_folder = Path(catalog.latest_artifact("srl_eval", "python")["path"])
    assert json.loads((eval_folder / "metrics_evidence.json").read_text())["student_reward"]["n"] == 2

    folder = Path(catalog.latest_artifact("srl_ablation", "python")["path"])
    ablation = json.loads((folder / "ablation.json").read_text())
    assert [r["variant"] for r in ablation] == ["reference", "beta_0"]
    assert all(r["execution_success"].endswith("n=2") for r in ablation)  # the dev families' 2 tasks
    assert "vs_reference_reward" in ablation[1]
    ablation_rows = {r["metric"]: r for r in catalog.query(
        "SELECT metric, n, split FROM eval_metrics WHERE asset_key = 'srl_ablation'")}
    assert ablation_rows["beta_0_vs_reference_reward"]["split"] == "dev"
    assert ablation_rows["reference_execution_success"]["n"] == 2


def test_an_llm_teacher_over_http_is_shown_exemplars_and_its_bad_steps_are_counted():
    """HttpSrlTeacher against an OpenAI-compatible server on 127.0.0.1: temperature 0.3, two worked steps of other
    families before the task; a malformed answer is rejected and counted; a dead server is a clear error."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ml.dsl.teachers import TeacherUnavailable
    from ml.srl.families import families_for, get_family
    from ml.srl.teacher import HttpSrlTeacher

    by_instruction = {f.instruction: f for f in families_for("python")}
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            line = next(x for x in body["messages"][-1]["content"].splitlines() if x.startswith("Instruction: "))
            family = by_instruction[line.removeprefix("Instruction: ")]
            text = "no tags at all" if family.name == "py_not_in" else programmatic_step(family)
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    good = _task("py_len_eq_zero", "def f(xs):\n    return len(xs) == 0\n", "def f(xs):\n    return not xs\n")
    bad = _task("py_not_in", "def f(k, d):\n    return not k in d\n", "def f(k, d):\n    return k not in d\n")
    shots = [_task("py_get_none", "def g(d):\n    return d.get(1, None)\n", "def g(d):\n    return d.get(1)\n"),
             _task("py_type_eq", "def h(a):\n    return type(a) == type(1)\n",
                   "def h(a):\n    return type(a) is type(1)\n")]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        teacher = HttpSrlTeacher("openai", url, "test-model", exemplar_tasks=shots + [good, bad], max_retries=0)
        batch = teacher_traces([good, bad], teacher)
    finally:
        server.shutdown()
        server.server_close()
    assert [t["family"] for t in batch.traces] == ["py_len_eq_zero"] and batch.rejected == {"malformed": 1}
    assert bodies[0]["temperature"] == 0.3
    roles = [m["role"] for m in bodies[0]["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert programmatic_step(get_family("py_get_none")) in [m["content"] for m in bodies[0]["messages"]]
    dead = HttpSrlTeacher("openai", url, "test-model", max_retries=0, backoff_s=0.0, timeout_s=5)
    with pytest.raises(TeacherUnavailable, match="unavailable"):
        dead.step(good)
