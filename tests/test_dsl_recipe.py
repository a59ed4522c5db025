"""The DSL recipe the assets and the learning-curve bench share (ml/dsl/recipe.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from assets.dsl import DslDpoConfig, DslSftConfig
from ml.dsl.domains import build_schema
from ml.dsl.format import prompt_text
from ml.dsl.recipe import (
    DPO_RECIPE_SETTINGS,
    SFT_RECIPE_SETTINGS,
    dpo_settings,
    evaluation_rows,
    label_requests,
    model_inputs,
    sft_phase_config,
    sft_rows,
    training_rows,
)
from ml.dsl.teachers import ProgrammaticTeacher, TeacherUnavailable


def _data(n: int = 40):
    teacher = ProgrammaticTeacher()
    spec, _ = teacher.domain_spec("library", seed=3, examples=0)
    schema = build_schema(spec)
    rows = []
    for i, q in enumerate(teacher.queries(spec, schema, n, seed=3)):
        split, group = (("train", "seen"), ("dev", "seen"), ("test", "seen"), ("test", "heldout"))[i % 4]
        rows.append({"id": f"r{i}", "domain": "library", "group_key": f"k{i // 2}", "split": split, "group": group,
                     "lang": q.lang, "query": q.text, "ast_json": json.dumps(q.ast), "valid": i % 7 != 0})
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


def test_sft_reads_train_validates_on_dev_and_evaluation_reads_test():
    data, schemas = _data(80)
    corpus, _ = training_rows(data, schemas, schema_view="digest")
    assert all(r["group_key"] and r["split"] in ("train", "dev", "test") for r in corpus)
    train, val = sft_rows(corpus, cap=3, seed=0)
    assert train and {r["split"] for r in train} == {"train"} and {r["group"] for r in train} == {"seen"}
    assert len(val) == 3 and {r["split"] for r in val} == {"dev"}
    assert val != sft_rows(corpus, cap=3, seed=1)[1] and val == sft_rows(corpus, cap=3, seed=0)[1]
    assert sft_rows(corpus, cap=0, seed=0)[1] == []
    picked = evaluation_rows(corpus, samples=4, seed=0)
    assert [(r["split"], r["group"]) for r in picked] == [("test", "seen")] * 4 + [("test", "heldout")] * 4
    assert picked == evaluation_rows(corpus, samples=4, seed=0)


def test_model_inputs_end_completions_with_the_end_token():
    class Tok:
        eos_token = "<|im_end|>"
        chat_template = None

    pairs = model_inputs(Tok(), [{"prompt": "P\n", "completion": '{"a":1}'}])
    assert pairs == [("P\n", '{"a":1}<|im_end|>')]


def _requests(n: int) -> tuple[list[dict], dict, dict]:
    teacher = ProgrammaticTeacher()
    spec, _ = teacher.domain_spec("library", seed=3, examples=0)
    schema = build_schema(spec)
    rows = [{"id": f"q{i}", "domain": "library", "domain_split": "train", "lang": q.lang, "text": q.text,
             "teacher_ast_json": json.dumps(q.ast)} for i, q in enumerate(teacher.queries(spec, schema, n, seed=3))]
    return rows, {"library": spec}, {"library": schema}


class _Sloppy(ProgrammaticTeacher):
    """Labels the request ``invalid`` with a schema-invalid AST and gives ``unlabelled`` no label."""

    def label(self, spec, schema, query):
        if query.text == self.invalid:
            return {"not": "an ast"}
        return None if query.text == self.unlabelled else super().label(spec, schema, query)


def test_label_requests_keeps_schema_valid_labels_up_to_the_cap_and_counts_the_rest():
    queries, specs, schemas = _requests(12)
    teacher = _Sloppy()
    teacher.invalid, teacher.unlabelled = queries[1]["text"], queries[2]["text"]
    progress = []
    rows, skipped = label_requests(queries, specs, schemas, teacher, positives_per_schema=5,
                                   on_progress=lambda done, total: progress.append((done, total)), every=4)
    assert [r["id"] for r in rows] == ["q0", "q3", "q4", "q5", "q6"]
    assert skipped == {"teacher_no_label": 1, "schema_invalid_label": 1, "over_positive_cap": 5}
    from ml.dsl.dataset import group_key
    from ml.splits import split_of

    key = group_key("library", json.loads(queries[0]["teacher_ast_json"]))
    assert rows[0] == {"id": "q0", "domain": "library", "group_key": key, "split": split_of(key), "group": "seen",
                       "lang": queries[0]["lang"], "query": queries[0]["text"], "ast_json": rows[0]["ast_json"],
                       "valid": True, "mutation": None, "errors": None}
    assert json.loads(rows[0]["ast_json"]) == json.loads(queries[0]["teacher_ast_json"])
    assert progress == [(4, 12), (8, 12)]


def test_label_requests_lets_a_dead_teacher_through():
    class Dead(ProgrammaticTeacher):
        def label(self, spec, schema, query):
            raise TeacherUnavailable("http://127.0.0.1:9 refused")

    queries, specs, schemas = _requests(2)
    with pytest.raises(TeacherUnavailable, match="refused"):
        label_requests(queries, specs, schemas, Dead(), positives_per_schema=5)


def test_the_sft_step_config_maps_onto_phase_config_by_trl_names():
    from ml.training.sft_trainer import PhaseConfig

    config = DslSftConfig(per_device_train_batch_size=3, max_length=77, early_stopping_threshold=0.25, lora_r=5)
    settings = config.model_dump()
    cfg = sft_phase_config(settings, tiny_base=True)
    phase_fields = {f.name for f in dataclasses.fields(PhaseConfig)}
    # every setting is either the trainer's own field, carried over unchanged, or one the recipe reads itself
    assert set(settings) <= phase_fields | SFT_RECIPE_SETTINGS
    assert all(getattr(cfg, k) == v for k, v in settings.items() if k in phase_fields)
    assert (cfg.per_device_train_batch_size, cfg.per_device_eval_batch_size, cfg.max_length) == (3, 3, 77)
    assert (cfg.early_stopping_threshold, cfg.lora_r) == (0.25, 5)
    assert (cfg.separator, cfg.add_eos, cfg.lr_scheduler_type, cfg.trainable_embeddings) == ("", False, "linear", "all")
    assert sft_phase_config(settings, tiny_base=False).trainable_embeddings == "none"
    with pytest.raises(ValueError, match="batch_size"):
        sft_phase_config({**settings, "batch_size": 8}, tiny_base=False)


def test_the_dpo_step_config_maps_onto_dpo_settings_by_trl_names():
    from ml.training.dpo import DPOSettings

    settings = DslDpoConfig(per_device_train_batch_size=3, max_length=99, beta=0.3, sft_weight=2.0).model_dump()
    cfg = dpo_settings(settings)
    dpo_fields = {f.name for f in dataclasses.fields(DPOSettings)}
    assert set(settings) <= dpo_fields | DPO_RECIPE_SETTINGS
    assert all(getattr(cfg, k) == v for k, v in settings.items() if k in dpo_fields)
    assert (cfg.per_device_train_batch_size, cfg.max_length, cfg.beta, cfg.sft_weight) == (3, 99, 0.3, 2.0)
    with pytest.raises(ValueError, match="max_seq_length"):
        dpo_settings({**settings, "max_seq_length": 8})
