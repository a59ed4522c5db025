"""The srl group through Dagster on a tiny model: tasks → sandboxed teacher traces → base with tags → warm-up + a
2-step GRPO → base / student / teacher evaluation, and the ablation sweep; plus the recipe's pieces on known input."""

import json
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from ml.srl.recipe import EvalInputs, score_steps
from ml.srl.reward import RewardWeights
from ml.srl.teacher import ProgrammaticSrlTeacher, programmatic_step, teacher_traces, trace_quality
from ml.srl.trace import parse_step

# functions where train families (len(x) == 0, x = x + 1) and held-out ones (not len(x), x = x - 1) match
SOURCE = "\n\n".join(
    f"def count_{i}(items, n):\n    total = 0\n    while n > 0:\n        total = total + {i + 1}\n"
    f"        n = n - 1\n    if len(items) == 0:\n        return total\n    if not len(items):\n        return -1\n"
    f"    return total\n" for i in range(4)
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
    assert m["trace_parse_rate"] == pytest.approx(2 / 3)
    assert m["execution_success"] == pytest.approx(1 / 3)  # the wrong fix runs but gives other code
    assert 1 / 3 < m["action_fidelity"] < 2 / 3  # 1 + partial + 0 (malformed)
    assert m["state_faithfulness"] == pytest.approx(2 / 3)
    assert m["reward"] == pytest.approx((1.0 + scored.rows[1]["reward"] - 0.2) / 3)
    assert [r["executed"] for r in scored.rows] == [True, False, False]
    teacher_only = score_steps("teacher", EvalInputs([task], [teacher]), [teacher], _bag_of_words, Words(),
                               execute_actions, RewardWeights())
    assert set(teacher_only.metrics) == {"trace_parse_rate", "execution_success", "think_tokens", "state_tokens"}


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
               "per_device_train_batch_size": 2, "max_completion_length": 12, "precision": "fp32"}
    run_config = {"ops": {
        "srl_base_model": {"config": {"base_model": "tiny:qwen2", "vocab_size": 300}},
        "srl_adapter": {"config": adapter},
        "srl_eval": {"config": {"eval_tasks": 2, "max_new_tokens": 12}},
        "srl_ablation": {"config": {**adapter, "max_steps": 1, "betas": [0.05, 0.0], "malformed_penalties": [-0.2],
                                    "reward_weights": ["0.5,0.3,0.2"], "eval_tasks": 1, "max_new_tokens": 8}},
    }}
    result = dg.materialize(SRL_ASSETS, resources=resources, partition_key="python", run_config=run_config,
                            selection=SRL_ASSETS)
    assert result.success

    def meta(key):
        return result.asset_materializations_for_node(key)[-1].metadata

    assert meta("srl_tasks")["train_tasks"].value == 8 and meta("srl_tasks")["heldout_tasks"].value == 8
    assert meta("srl_teacher_traces")["traces"].value == 16
    assert meta("srl_adapter")["grpo_steps"].value == 2 and meta("srl_adapter")["warmup_steps"].value == 2
    catalog = DuckDBCatalog()
    assert catalog.latest_artifact("srl_base_model", "all") is not None  # shared by the slices

    metrics = {r["metric"]: r["value"] for r in catalog.query(
        "SELECT metric, value FROM eval_metrics WHERE asset_key = 'srl_eval' AND partition = 'python'")}
    for policy in ("base", "student"):
        for name in ("trace_parse_rate", "action_fidelity", "state_faithfulness", "execution_success", "reward"):
            assert f"{policy}_{name}" in metrics
    assert metrics["teacher_execution_success"] == 1.0 and metrics["teacher_trace_parse_rate"] == 1.0
    # the student is also held to the step grammar (the base is not: it never ends a think within the budget)
    assert {"student_trace_parse_rate_constrained", "student_execution_success_constrained"} <= set(metrics)
    assert "base_trace_parse_rate_constrained" not in metrics  # the base is not held to the grammar
    assert math.isfinite(metrics["student_kl_per_token"])
    rows = catalog.query("SELECT policy, count(*) AS n FROM srl_eval_results GROUP BY ALL ORDER BY policy")
    assert [(r["policy"], r["n"]) for r in rows] == [("base", 2), ("student", 2), ("teacher", 2)]
    curve = {r["metric"] for r in catalog.query(
        "SELECT DISTINCT metric FROM training_metrics WHERE asset_key = 'srl_adapter'")}
    assert {"kl", "reward", "malformed_rate", "warmup/loss"} <= curve
    assert "| execution_success |" in meta("srl_eval")["report"].value

    folder = Path(catalog.latest_artifact("srl_ablation", "python")["path"])
    ablation = json.loads((folder / "ablation.json").read_text())
    assert [r["variant"] for r in ablation] == ["reference", "beta_0"]
    assert all("execution_success" in r for r in ablation)


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
