"""HumanEval single-line infilling: the packaged problems, the masking rule, scoring through the sandbox."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from ml.autocomplete.humaneval import (
    load_problems,
    maskable_lines,
    program,
    sample_problems,
    score_completions,
    single_line_tasks,
)

PROBLEMS = load_problems()
SAMPLE = PROBLEMS[::16]  # 11 problems spread over the set, to keep the sandbox runs short


def test_packaged_problems_load():
    assert len(PROBLEMS) == 164
    assert PROBLEMS[0]["task_id"] == "HumanEval/0"
    assert {"task_id", "prompt", "canonical_solution", "test", "entry_point"} <= set(PROBLEMS[0])


def test_load_from_a_path_and_missing_files(tmp_path):
    plain = tmp_path / "few.jsonl"
    plain.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS[:3]))
    packed = tmp_path / "few.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert load_problems(plain) == load_problems(packed) == PROBLEMS[:3]
    with pytest.raises(FileNotFoundError, match="HumanEval"):
        load_problems(tmp_path / "absent.jsonl.gz")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"task_id": "x", "prompt": ""}) + "\n")
    with pytest.raises(ValueError, match="lacks"):
        load_problems(broken)


@pytest.mark.parametrize("per_problem", [1, 3])
def test_invariant_on_every_problem(per_problem):
    tasks = single_line_tasks(PROBLEMS, seed=0, per_problem=per_problem)
    by_id = {p["task_id"]: p for p in PROBLEMS}
    assert len({t["task_id"] for t in tasks}) == 164
    assert len({t["id"] for t in tasks}) == len(tasks)
    for task in tasks:
        problem = by_id[task["task_id"]]
        assert task["prefix"] + task["middle"] + task["suffix"] == problem["prompt"] + problem["canonical_solution"]
        assert task["prefix"].startswith(problem["prompt"])
        assert task["middle"].endswith("\n") and task["middle"].count("\n") == 1
        code = task["middle"].strip()
        assert code and not code.startswith("#")
        assert code not in {"else:", "try:", "finally:", "except:"}
        assert task["test"] == problem["test"] and task["entry_point"] == problem["entry_point"]
    if per_problem == 3:
        # Problems with at least three maskable lines get three distinct ones.
        assert len(tasks) == sum(min(3, len(maskable_lines(p["canonical_solution"]))) for p in PROBLEMS)


def test_masking_rule():
    solution = (
        "    # a comment\n"
        "    try:\n"
        "        x = f(\n"
        "            1,\n"
        "        )\n"
        "    except:  # anything\n"
        "        x = 0\n"
        "\n"
        "    else:\n"
        "        pass\n"
        "    return x\n"
    )
    assert maskable_lines(solution) == [2, 3, 6, 9, 10]


def test_seeded_determinism():
    first = single_line_tasks(PROBLEMS, seed=7)
    assert first == single_line_tasks(PROBLEMS, seed=7)
    other = single_line_tasks(PROBLEMS, seed=8)
    assert [t["line"] for t in first] != [t["line"] for t in other]
    # A problem's task does not depend on which other problems are listed.
    assert single_line_tasks(PROBLEMS[40:50], seed=7) == first[40:50]


def test_problems_are_a_seeded_sample_not_the_first_n():
    chosen = sample_problems(PROBLEMS, 40, seed=0)
    assert len(chosen) == 40 == len({p["task_id"] for p in chosen})
    assert chosen != PROBLEMS[:40]
    assert max(PROBLEMS.index(p) for p in chosen) > 120  # drawn from the whole benchmark
    assert [PROBLEMS.index(p) for p in chosen] == sorted(PROBLEMS.index(p) for p in chosen)  # file order
    assert chosen == sample_problems(PROBLEMS, 40, seed=0)
    assert chosen != sample_problems(PROBLEMS, 40, seed=1)
    assert sample_problems(PROBLEMS, 0, seed=0) == PROBLEMS == sample_problems(PROBLEMS, 500, seed=3)


def test_canonical_middles_pass_in_the_sandbox():
    tasks = single_line_tasks(SAMPLE, seed=0)
    pass_at_1, rows = score_completions(tasks, [t["middle"] for t in tasks], timeout_s=10.0)
    assert pass_at_1 == 1.0, [r for r in rows if not r["passed"]]
    assert [r["task_id"] for r in rows] == [t["task_id"] for t in tasks]
    assert all(r["status"] == "passed" and r["error_type"] is None for r in rows)


def test_missing_newline_is_added():
    tasks = single_line_tasks(SAMPLE[:3], seed=0)
    pass_at_1, _ = score_completions(tasks, [t["middle"].rstrip("\n") for t in tasks], timeout_s=10.0)
    assert pass_at_1 == 1.0


@pytest.mark.parametrize("wrong", ["", "    pass\n"])
def test_wrong_middles_fail(wrong):
    tasks = single_line_tasks(SAMPLE, seed=0)
    pass_at_1, rows = score_completions(tasks, [wrong] * len(tasks), timeout_s=2.0)  # an emptied loop may spin
    assert pass_at_1 == 0.0
    assert all(not r["passed"] and r["status"] in {"failed", "timeout"} for r in rows)


def test_mixed_middles_give_a_fraction():
    tasks = single_line_tasks(SAMPLE[:4], seed=0)
    middles = [tasks[0]["middle"], "", tasks[2]["middle"], "    return None\n"]
    pass_at_1, rows = score_completions(tasks, middles, timeout_s=10.0)
    assert pass_at_1 == 0.5
    assert [r["passed"] for r in rows] == [True, False, True, False]


def test_program_shape_and_argument_checks():
    task = single_line_tasks(PROBLEMS[:1])[0]
    text = program(task, task["middle"])
    assert text.startswith(task["prefix"] + task["middle"] + task["suffix"])
    assert text.endswith(f"\ncheck({task['entry_point']})\n")
    with pytest.raises(ValueError):
        score_completions([task], [])
    assert math.isnan(score_completions([], [])[0])


@pytest.mark.slow
def test_all_canonical_solutions_pass():
    tasks = single_line_tasks(PROBLEMS, seed=0)
    pass_at_1, rows = score_completions(tasks, [t["middle"] for t in tasks], timeout_s=10.0)
    assert pass_at_1 == 1.0, [r for r in rows if not r["passed"]]
