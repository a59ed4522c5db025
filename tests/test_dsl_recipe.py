"""The DSL recipe the assets and the learning-curve bench share (ml/dsl/recipe.py)."""

from __future__ import annotations

import json

from ml.dsl.domains import build_schema
from ml.dsl.format import prompt_text
from ml.dsl.recipe import evaluation_rows, model_inputs, split_validation, training_rows
from ml.dsl.teachers import ProgrammaticTeacher


def _data(n: int = 40):
    teacher = ProgrammaticTeacher()
    spec, _ = teacher.domain_spec("library", seed=3, examples=0)
    schema = build_schema(spec)
    rows = []
    for i, q in enumerate(teacher.queries(spec, schema, n, seed=3)):
        split = ("train", "test", "heldout_domain")[i % 3]
        rows.append({"id": f"r{i}", "domain": "library", "split": split, "lang": q.lang, "query": q.text,
                     "ast_json": json.dumps(q.ast), "valid": i % 7 != 0})
    return rows, {"library": schema}


def test_training_rows_build_prompts_and_drop_invalid_unless_asked():
    data, schemas = _data()
    rows, capped = training_rows(data, schemas, schema_view="digest")
    assert capped == 0 and len(rows) == sum(r["valid"] for r in data)
    first = next(r for r in data if r["valid"])
    assert rows[0]["prompt"] == prompt_text(schemas["library"], first["query"], "digest")
    assert {r["group"] for r in rows} == {"seen", "heldout"}
    assert len(training_rows(data, schemas, schema_view="digest", include_invalid=True)[0]) == len(data)


def test_max_samples_caps_the_training_split_with_the_configured_seed():
    data, schemas = _data(60)
    a, capped = training_rows(data, schemas, schema_view="json", max_samples=5, seed=1)
    b, _ = training_rows(data, schemas, schema_view="json", max_samples=5, seed=2)
    again, _ = training_rows(data, schemas, schema_view="json", max_samples=5, seed=1)
    assert sum(r["split"] == "train" for r in a) == 5 and capped > 0
    assert [r["id"] for r in a] == [r["id"] for r in again]
    assert [r["id"] for r in a] != [r["id"] for r in b]  # the seed is honoured, not a fixed Random(0)
    assert [r for r in a if r["split"] != "train"] == [r for r in b if r["split"] != "train"]


def test_validation_split_and_evaluation_rows():
    rows = [{"id": str(i)} for i in range(100)]
    train, val = split_validation(rows, 0.05, cap=3, seed=0)
    assert len(val) == 3 and len(train) == 97 and not {r["id"] for r in val} & {r["id"] for r in train}
    assert split_validation(rows, 0.0, cap=3, seed=0)[1] == []
    data, schemas = _data(60)
    corpus, _ = training_rows(data, schemas, schema_view="digest")
    picked = evaluation_rows(corpus, samples=4, seed=0)
    assert [r["split"] for r in picked] == ["test"] * 4 + ["heldout_domain"] * 4
    assert picked == evaluation_rows(corpus, samples=4, seed=0)


def test_model_inputs_end_completions_with_the_end_token():
    class Tok:
        eos_token = "<|im_end|>"
        chat_template = None

    pairs = model_inputs(Tok(), [{"prompt": "P\n", "completion": '{"a":1}'}])
    assert pairs == [("P\n", '{"a":1}<|im_end|>')]
