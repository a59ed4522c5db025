"""The `dsl` group: metrics on known inputs, loss masks, and the whole group materialized on tiny data."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from ml.dsl import build_domain, build_schema, generate_queries
from ml.dsl.evaluation import METRICS, metrics_from_results, score_sample
from ml.dsl.format import ast_to_text, parse_completion, prompt_text
from ml.dsl.request_templates import same_meaning
from ml.dsl.teachers import Teacher, Verdict

# ---------------------------------------------------------------------------------------------------- metrics


@pytest.fixture(scope="module")
def library():
    spec = build_domain("library", 3)
    schema = build_schema(spec)
    query = generate_queries(spec, 1, seed=0)[0]
    return spec, schema, query


def test_parse_completion_reads_the_first_object_and_says_why_not():
    assert parse_completion('{"a":1} trailing {"b":2}') == ({"a": 1}, None)
    assert parse_completion("junk before {\"a\": [1, 2]}")[0] == {"a": [1, 2]}
    assert parse_completion("")[1] == "empty output"
    assert parse_completion("no braces here")[1] == "no JSON object"
    assert parse_completion('{"a": ')[1].startswith("invalid JSON")


def test_schema_digest_lists_what_the_schema_allows(library):
    from ml.dsl.domains import DOMAIN_NAMES
    from ml.dsl.format import schema_digest

    for name in DOMAIN_NAMES:  # held-out domains read the same way
        spec = build_domain(name, 5)
        lines = schema_digest(build_schema(spec)).splitlines()
        assert lines[0] == f"{name} query"
        by_field = dict(line.split(": ", 1) for line in lines[1:-1])
        assert list(by_field) == list(spec.field_names)
        for f in spec.fields:
            value_type, ops = by_field[f.name].split("; ")
            expected_type = "|".join(f.enum_values) if f.type == "enum" else f.type
            assert value_type == expected_type
            assert sorted(ops.split()) == sorted(spec.operators_for(f))
        assert lines[-1] == "logic: and or not; sort: asc desc; limit: integer"


def test_prompt_views_and_their_errors(library):
    _, schema, query = library
    as_json, digest = prompt_text(schema, query.text_en), prompt_text(schema, query.text_en, "digest")
    assert json.dumps(schema["$defs"]["comparison"]["anyOf"], separators=(",", ":")) in as_json
    assert "anyOf" not in digest and len(digest) * 3 < len(as_json)
    tail = f"Request: {query.text_en}\nJSON:\n"
    assert as_json.endswith(tail) and digest.endswith(tail)
    with pytest.raises(ValueError, match="schema_view"):
        prompt_text(schema, query.text_en, "yaml")
    with pytest.raises(ValueError, match="use schema_view='json'"):
        prompt_text({"type": "object"}, query.text_en, "digest")


def test_score_sample_on_known_outputs(library):
    spec, schema, query = library
    target = query.ast

    exact = score_sample(ast_to_text(target), schema, target, spec)
    assert (exact.parsed, exact.schema_valid, exact.exact_match, exact.teacher_accept, exact.semantic_pass) == (
        True, True, True, None, True)
    assert exact.comparison_f1 == 1.0 and exact.error is None

    unparsed = score_sample('{"filter": ', schema, target, spec)
    assert not unparsed.parsed and not unparsed.schema_valid and not unparsed.semantic_pass

    invalid = {"filter": {"op": "eq", "field": "no_such_field", "value": 1}}
    bad = score_sample(json.dumps(invalid), schema, target, spec)
    assert bad.parsed and not bad.schema_valid and not bad.semantic_pass
    assert bad.error.startswith("schema:")

    spaced = json.dumps(target, indent=2)
    assert score_sample(spaced, schema, target, spec).exact_match  # whitespace does not matter


class _Llm(Teacher):
    """A teacher whose verdicts are its own (as an LLM teacher's): it accepts what ``accepts`` says."""

    name = "llm"

    def __init__(self, accepts):
        super().__init__()
        self.accepts = accepts

    def judge(self, spec, schema, query, candidate, reference):
        verdict = self.accepts(candidate)
        return None if verdict is None else Verdict(verdict)


def test_semantic_pass_is_the_judge_and_teacher_accept_an_llm_teachers_own_verdict(library):
    """semantic_pass = schema-valid and the same records selected; teacher_accept = an LLM teacher's verdict (None
    for the programmatic teacher, whose verdict would repeat the judge). Each can differ from the others."""
    from ml.dsl.probe import score_rows
    from ml.dsl.teachers import ProgrammaticTeacher

    spec, schema, query = library
    target = query.ast
    same_but_invalid = {**target, "filter": {"op": "and", "args": [target["filter"]]}}  # minItems: 2
    other = next(q.ast for q in generate_queries(spec, 20, seed=1) if not same_meaning(q.ast, target))
    outputs = [ast_to_text(target), json.dumps(same_but_invalid), ast_to_text(other)]
    row = {"domain": spec.name, "lang": "en", "query": query.text_en, "completion": ast_to_text(target),
           "group": "seen"}
    rows, specs, schemas = [row] * len(outputs), {spec.name: spec}, {spec.name: schema}
    scores = score_rows(outputs, rows, schemas, specs, ProgrammaticTeacher())
    assert [(s.schema_valid, s.teacher_accept, s.semantic_pass) for s in scores] == [
        (True, None, True), (False, None, False), (True, None, False)]
    # an LLM teacher that accepts everything: its rate differs from the judge's
    llm = score_rows(outputs, rows, schemas, specs, _Llm(lambda _: True))
    assert [s.teacher_accept for s in llm] == [True, True, True]
    assert [s.semantic_pass for s in llm] == [s.semantic_pass for s in scores]
    assert not any(s.teacher_accept for s in score_rows(outputs, rows, schemas, specs, _Llm(lambda _: None)))


def test_metric_names_per_group_and_mode():
    def r(group, mode, passed):
        return {"id": f"{group}{mode}{passed}", "group": group, "mode": mode, "parsed": True, "schema_valid": True,
                "exact_match": False, "teacher_accept": None, "semantic_pass": passed, "comparison_f1": 0.0}

    rows = [r("seen", "constrained", True), r("seen", "constrained", False), r("heldout", "constrained", False),
            r("heldout", "unconstrained", True)]
    m = metrics_from_results(rows)
    assert m["semantic_pass_rate_constrained"].value == 0.5 and m["semantic_pass_rate_constrained"].n == 2
    assert m["heldout_semantic_pass_rate"].value == 1.0
    names = {f"{p}{metric}{s}" for p, s in (("", "_constrained"), ("heldout_", "_constrained"), ("heldout_", ""))
             for metric in (*METRICS, "comparison_f1") if metric != "teacher_accept_rate"}
    assert set(m) == names


def test_comparison_f1_gives_partial_credit():
    from ml.dsl.evaluation import comparison_f1

    a = {"op": "eq", "field": "author", "value": "Hugo"}
    b = {"op": "gt", "field": "year", "value": 1900}
    c = {"op": "lt", "field": "pages", "value": 300}
    target = {"filter": {"op": "and", "args": [a, b]}}
    assert comparison_f1({"filter": {"op": "and", "args": [b, a]}}, target) == 1.0
    assert comparison_f1({"filter": {"op": "or", "args": [a, b]}}, target) == 1.0  # grouping is not scored
    assert comparison_f1({"filter": a}, target) == pytest.approx(2 / 3)  # precision 1, recall 1/2
    assert comparison_f1({"filter": {"op": "and", "args": [a, c]}}, target) == pytest.approx(0.5)
    assert comparison_f1({"filter": {"op": "not", "arg": a}}, {"filter": a}) == 0.0
    assert comparison_f1(None, target) == 0.0


def test_negatives_break_the_schema_and_are_reproducible():
    from ml.dsl.dataset import group_key, mutated_negatives, row_id
    from ml.dsl.domains import schema_errors
    from ml.splits import split_of

    specs = {d: build_domain(d, 11) for d in ("library", "orders")}
    schemas = {d: build_schema(s) for d, s in specs.items()}
    positives = [{"id": row_id(d, i), "domain": d, "ast_json": ast_to_text(q.ast), "valid": True,
                  "group_key": group_key(d, q.ast), "split": split_of(group_key(d, q.ast))}
                 for d, spec in specs.items() for i, q in enumerate(generate_queries(spec, 20, seed=1))]
    rows, still_valid = mutated_negatives(positives, specs, schemas, 0.6, seed=11)
    assert still_valid == 0 and len(rows) == 2 * round(20 * 0.6)
    assert all(not r["valid"] and schema_errors(json.loads(r["ast_json"]), schemas[r["domain"]]) for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert mutated_negatives(positives, specs, schemas, 0.6, seed=11)[0] == rows  # same seed, same rows
    assert mutated_negatives(positives, specs, schemas, 0.6, seed=12)[0] != rows
    # a negative keeps its positive's group key and split (a mutated test request stays in test)
    positive_split = {p["group_key"]: p["split"] for p in positives}
    assert all(positive_split[r["group_key"]] == r["split"] for r in rows)
    assert len({r["split"] for r in rows}) > 1


def test_group_keys_keep_twins_and_reorderings_together_and_split_by_fraction():
    from ml.dsl.dataset import group_key, request_split

    a = {"op": "eq", "field": "author", "value": "Hugo"}
    b = {"op": "gt", "field": "year", "value": 1900}
    key = group_key("library", {"filter": {"op": "and", "args": [a, b]}})
    assert key == group_key("library", {"filter": {"op": "and", "args": [b, a]}})  # operand order
    assert key == group_key("library", {"filter": {"op": "and", "args": [a, dict(b, value=1900.0)]}})
    assert key != group_key("movies", {"filter": {"op": "and", "args": [a, b]}})  # a domain is part of the key
    assert key != group_key("library", {"filter": {"op": "or", "args": [a, b]}})
    # A held-out domain is all test; a training domain's requests spread at about the asked fractions.
    assert request_split("heldout_domain", "weather:x") == "test"
    splits = [request_split("train", f"library:{i}", dev=0.1, test=0.2) for i in range(3000)]
    assert 0.17 < splits.count("test") / len(splits) < 0.23 and 0.08 < splits.count("dev") / len(splits) < 0.12
    assert splits == [request_split("train", f"library:{i}", dev=0.1, test=0.2) for i in range(3000)]


def test_both_languages_of_a_request_share_a_split_even_with_a_planted_near_duplicate():
    """EN/FR twins get one group key from their label; a request that differs only in operand order joins them."""
    from ml.dsl.recipe import label_requests
    from ml.dsl.teachers import ProgrammaticTeacher
    from ml.splits import leaked_groups

    teacher = ProgrammaticTeacher()
    spec, _ = teacher.domain_spec("library", seed=3, examples=0)
    schema = build_schema(spec)
    queries = [{"id": f"q{i}", "domain": "library", "domain_split": "train", "lang": q.lang, "text": q.text,
                "teacher_ast_json": json.dumps(q.ast)} for i, q in enumerate(teacher.queries(spec, schema, 80, seed=3))]
    twin = next(q for q in queries if json.loads(q["teacher_ast_json"])["filter"]["op"] == "and")
    ast = json.loads(twin["teacher_ast_json"])
    ast["filter"]["args"].reverse()
    queries.append({**twin, "id": "planted", "text": twin["text"] + " (reordered)",
                    "teacher_ast_json": json.dumps(ast)})
    rows, _ = label_requests(queries, {"library": spec}, {"library": schema}, teacher, 1000)
    by_key: dict[str, set[str]] = {}
    for r in rows:
        by_key.setdefault(r["group_key"], set()).add(r["split"])
    assert all(len(splits) == 1 for splits in by_key.values())
    assert leaked_groups(rows) == {"test": [], "dev": []}
    planted = next(r for r in rows if r["id"] == "planted")
    family = [r for r in rows if r["group_key"] == planted["group_key"]]
    assert {r["lang"] for r in family} == {"en", "fr"} and len(family) == 3
    assert {r["split"] for r in rows} == {"train", "dev", "test"}


# ---------------------------------------------------------------------------------------------------- loss masks


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    from ml.dsl import generate_examples
    from ml.training.ast_tokenizer import build_ast_tokenizer
    from ml.training.base_model import build_base_model, save_base_model

    spec = build_domain("orders", 1)
    schema = build_schema(spec)
    rows = [(prompt_text(schema, e.text), ast_to_text(e.ast)) for e in generate_examples(spec, 64, seed=2)]
    tok = build_ast_tokenizer("tiny:gemma3_text", [p + c for p, c in rows], [], 800, split="whitespace",
                              max_token_length=12)
    folder = tmp_path_factory.mktemp("dsl_base")
    save_base_model(build_base_model("tiny:gemma3_text", tok, seed=0), tok, folder)
    return folder, tok, rows


def test_completion_only_loss_masks_the_prompt(tiny_student, tmp_path):
    from ml.compute import resolve_compute
    from ml.training.lora_sft import build_lora_sft_trainer
    from ml.training.sft_trainer import PhaseConfig

    folder, tok, rows = tiny_student
    pairs = [(p, c + tok.eos_token) for p, c in rows[:8]]
    cfg = PhaseConfig(max_steps=1, per_device_train_batch_size=4, per_device_eval_batch_size=4, max_length=2048,
                      separator="", add_eos=False, trainable_embeddings="all", group_by_length=False)
    trainer, dropped = build_lora_sft_trainer(folder, tok, pairs, pairs[:4], tmp_path, cfg,
                                              resolve_compute(device="cpu"))
    assert dropped == 0
    batch = next(iter(trainer.get_train_dataloader()))
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        supervised = [int(i) for i, lab in zip(ids, labels) if lab != -100]
        text = tok.decode(supervised)
        # Exactly the completion is supervised: one JSON AST and the end-of-sequence token.
        assert text.endswith(tok.eos_token)
        value, why = parse_completion(text.removesuffix(tok.eos_token))
        assert why is None and ast_to_text(value) == text.removesuffix(tok.eos_token)
        assert int((labels != -100).sum()) < int(mask.sum())  # the prompt is masked


def test_too_long_rows_are_dropped_and_empty_completions_refused(tiny_student, tmp_path):
    from ml.compute import resolve_compute
    from ml.training.lora_sft import build_lora_sft_trainer, check_supervised_batches
    from ml.training.sft_trainer import PhaseConfig

    folder, tok, rows = tiny_student
    lengths = sorted(len(tok(p + c)["input_ids"]) for p, c in rows)
    cfg = PhaseConfig(max_steps=1, per_device_train_batch_size=2, per_device_eval_batch_size=2,
                      max_length=lengths[len(lengths) // 2], separator="", add_eos=False,
                      trainable_embeddings="all")
    _, dropped = build_lora_sft_trainer(folder, tok, rows, [], tmp_path, cfg, resolve_compute(device="cpu"))
    assert 0 < dropped < len(rows)
    with pytest.raises(ValueError, match="zero supervised"):
        check_supervised_batches([3, 0, 0, 0], 2, "eval")


# ---------------------------------------------------------------------------------------------------- the group

TINY_RUN = {
    "dsl_domain_specs": {"domains": ["library", "orders", "flights"], "heldout_domains": ["flights"],
                         "examples_per_schema": 3},
    "dsl_queries": {"per_schema_queries": 40},
    "dsl_dataset": {"positives_per_schema": 30, "dev_fraction": 0.2, "test_fraction": 0.3},
    "dsl_base_model": {"base_model": "tiny:gemma3_text", "vocab_size": 800},
    "dsl_base_eval": {"samples": 3},
    "dsl_sft_adapter": {"max_steps": 4, "per_device_train_batch_size": 4, "eval_steps": 2, "save_steps": 2,
                        "logging_steps": 1, "probe_samples": 2, "eval_max_samples": 4},
    "dsl_sft_eval": {"samples": 3},
    "dsl_dpo_pairs": {"max_pairs": 4},
    "dsl_dpo_adapter": {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1},
    "dsl_dpo_eval": {"samples": 3},
}


def _run_config(overrides: dict) -> dict:
    return {"ops": {name: {"config": cfg} for name, cfg in overrides.items()}}


@pytest.mark.slow
def test_dsl_group_materializes_end_to_end(resources, astforge_home):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from assets.dsl import DSL_ASSETS

    result = dg.materialize(DSL_ASSETS, resources=resources, run_config=_run_config(TINY_RUN))
    assert result.success
    catalog = resources["catalog"]

    # Datasets: every positive validates, every negative does not, and the catalog tables hold them.
    data = catalog.query("SELECT split, \"group\", valid, count(*) AS n FROM dsl_dataset GROUP BY ALL")
    assert {(r["split"], r["group"], r["valid"]) for r in data} >= {
        ("train", "seen", True), ("dev", "seen", True), ("test", "seen", True), ("test", "heldout", True),
        ("train", "seen", False)}
    assert not [r for r in data if r["group"] == "heldout" and r["split"] != "test"]
    # one split per group key (EN/FR twins together), and the blocking leak checks passed
    assert catalog.query("SELECT count(*) AS n FROM (SELECT group_key FROM dsl_training_corpus GROUP BY group_key "
                         "HAVING count(DISTINCT split) > 1)")[0]["n"] == 0
    checks = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert {e.event_specific_data.asset_key.to_user_string() for e in checks} >= {"dsl_dataset",
                                                                                 "dsl_training_corpus"}
    assert all(e.event_specific_data.passed for e in checks)
    negatives = catalog.query("SELECT count(*) AS n FROM dsl_dataset WHERE NOT valid")[0]["n"]
    positives = catalog.query("SELECT count(*) AS n FROM dsl_dataset WHERE valid")[0]["n"]
    assert negatives == pytest.approx(positives * 0.6, abs=3)

    # Metrics: the names, both modes, both groups, in eval_metrics for both evaluations.
    # M0 (dsl_base_eval) is measured constrained only; the students in both modes.
    for asset, modes in (("dsl_base_eval", ("constrained",)), ("dsl_sft_eval", ("constrained", "unconstrained")),
                         ("dsl_dpo_eval", ("constrained", "unconstrained"))):
        names = {r["metric"] for r in catalog.query(
            "SELECT DISTINCT metric FROM eval_metrics WHERE asset_key = ?", [asset])}
        assert not [n for n in names if "teacher_accept" in n]  # the programmatic teacher's would repeat the judge
        for metric in (m for m in METRICS if m != "teacher_accept_rate"):
            for name in (f"{metric}_constrained", f"heldout_{metric}_constrained"):
                assert name in names, (asset, name)
            assert (metric in names) == ("unconstrained" in modes), (asset, metric)
        evidence = catalog.query("SELECT n, ci_low, ci_high, split FROM eval_metrics WHERE asset_key = ? AND "
                                 "metric = 'semantic_pass_rate_constrained'", [asset])
        assert evidence and all(r["n"] == 3 and r["split"] == "test" and r["ci_low"] <= r["ci_high"]
                                for r in evidence)
        rows = catalog.query("SELECT mode, \"group\", count(*) AS n FROM eval_results WHERE asset_key = ? "
                             "GROUP BY ALL", [asset])
        assert {(r["mode"], r["group"]) for r in rows} == {(m, g) for m in modes for g in ("seen", "heldout")}

    # Both adapters load onto the base with plain PEFT.
    base = catalog.require_artifact("dsl_base_model", "all")["path"]
    for asset in ("dsl_sft_adapter", "dsl_dpo_adapter"):
        adapter = catalog.require_artifact(asset, "all")["path"]
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
        assert model.active_adapter == "default"

    # The report compares SFT and DPO and ships its plots.
    report = catalog.require_artifact("dsl_report", "all")["path"]
    from pathlib import Path

    text = (Path(report) / "report.md").read_text()
    assert "SFT" in text and "DPO" in text and "base constrained" in text and "semantic_pass_rate" in text
    assert "## Paired differences (test split)" in text and "n=3" in text
    diffs = {r["metric"] for r in catalog.query("SELECT metric FROM eval_metrics WHERE asset_key = 'dsl_report'")}
    assert {"sft_vs_base_semantic_pass_rate_constrained", "dpo_vs_sft_semantic_pass_rate"} <= diffs
    for png in ("rates.png", "sft_curve.png", "dpo_curve.png"):
        assert (Path(report) / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    probe = catalog.query("SELECT count(*) AS n FROM training_metrics WHERE asset_key = 'dsl_sft_adapter' "
                          "AND metric = 'probe_semantic_pass_rate_constrained'")[0]["n"]
    assert probe >= 2  # semantic_pass_rate against training steps


@pytest.mark.slow
def test_a_dead_teacher_fails_the_step_and_keeps_earlier_artifacts(resources, astforge_home):
    import socket

    from assets.dsl import dsl_domain_specs, dsl_queries, dsl_schemas
    from resources.teacher import TeacherResource

    small = _run_config({k: v for k, v in TINY_RUN.items() if k in ("dsl_domain_specs", "dsl_queries")})
    assert dg.materialize([dsl_domain_specs, dsl_schemas, dsl_queries], resources=resources, run_config=small).success
    catalog = resources["catalog"]
    before = catalog.require_artifact("dsl_queries", "all")

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = {**resources, "teacher": TeacherResource(backend="openai", base_url=f"http://127.0.0.1:{port}",
                                                    model="tiny", max_retries=1, timeout_s=2)}
    result = dg.materialize([dsl_domain_specs, dsl_schemas, dsl_queries], resources=dead,
                            run_config=_run_config({"dsl_queries": TINY_RUN["dsl_queries"]}),
                            selection=[dsl_queries], raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "unavailable" in message and f"127.0.0.1:{port}" in message
    assert catalog.require_artifact("dsl_queries", "all")["data_version"] == before["data_version"]
    assert catalog.require_artifact("dsl_schemas", "all")["path"]


# The dsl group's asset keys (ARCHITECTURE.md): written out, so that a renamed or dropped asset fails here.
DSL_ASSET_KEYS = {
    "dsl_domain_specs", "dsl_schemas", "dsl_queries", "dsl_dataset", "dsl_training_corpus", "dsl_base_model",
    "dsl_base_eval",
    "dsl_sft_adapter", "dsl_sft_eval", "dsl_dpo_pairs", "dsl_dpo_adapter", "dsl_dpo_eval", "dsl_report",
}


def test_dsl_job_covers_the_group_and_the_nightly_eval_is_off_by_default():
    from definitions import defs

    job = defs.resolve_job_def("dsl_job")
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == DSL_ASSET_KEYS
    eval_job = defs.resolve_job_def("dsl_eval_job")
    assert {k.to_user_string() for k in eval_job.asset_layer.selected_asset_keys} == {
        "dsl_base_eval", "dsl_sft_eval", "dsl_dpo_eval", "dsl_report"}
    schedule = defs.resolve_schedule_def("daily_dsl_eval")
    assert schedule.job_name == "dsl_eval_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
