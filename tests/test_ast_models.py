"""The model half of ast_first, end to end on the fixture corpus with a few training steps."""

import json
from pathlib import Path

import dagster as dg
import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from assets import AST_ASSETS

pytestmark = pytest.mark.slow

FAST = {"max_steps": 4, "batch_size": 4, "eval_steps": 2, "save_steps": 2, "logging_steps": 2}


def _run_config(**eval_cfg):
    return {"ops": {
        "ast_tokenizer": {"config": {"vocab_size": 400}},
        "ast_phase1_adapter": {"config": FAST},
        "ast_phase2_adapter": {"config": FAST},
        "ast_eval": {"config": {"samples": 3, "max_new_tokens": 40, **eval_cfg}},
    }}


def test_python_slice_trains_both_phases_and_evaluates(resources):
    result = dg.materialize(AST_ASSETS, resources=resources, partition_key="python", run_config=_run_config())
    assert result.success
    mats = {m.asset_key.to_user_string(): m.materialization.metadata for m in result.get_asset_materialization_events()}
    tok = mats["ast_tokenizer"]
    assert tok["ast_id_min"].value >= tok["base_vocab_size"].value  # AST ids above every base id
    catalog = resources["catalog"]
    metrics = {r["metric"]: r["value"] for r in catalog.query(
        "SELECT metric, value FROM eval_metrics WHERE asset_key = 'ast_eval' AND partition = 'python'")}
    expected = {"heldout_loss_initial", "heldout_loss_final", "heldout_loss_reduction", "valid_rate_unconstrained",
                "valid_rate_constrained", "nl2ast_valid_rate", "nl2ast_exact_match", "nl2ast_tree_similarity"}
    assert expected <= set(metrics)
    assert metrics["valid_rate_constrained"] == 1.0  # the grammar admits only decodable, compilable trees
    assert all(0.0 <= metrics[k] <= 1.0 for k in expected if "loss" not in k)
    # Every figure carries its n, interval and split: the test rows of the split column, which training never read.
    evidence = {r["metric"]: r for r in catalog.query(
        "SELECT metric, value, n, ci_low, ci_high, split FROM eval_metrics WHERE asset_key = 'ast_eval' "
        "AND partition = 'python'")}
    test_rows = catalog.query("SELECT count(DISTINCT group_key) AS n FROM ast_corpus WHERE partition = 'python' "
                              "AND split = 'test'")[0]["n"]
    test_pairs = catalog.query("SELECT count(*) AS n FROM nl_ast_pairs WHERE partition = 'python' "
                               "AND split = 'test'")[0]["n"]
    assert evidence["heldout_loss_final"]["n"] == evidence["heldout_loss_reduction"]["n"] == test_rows > 0
    assert evidence["nl2ast_exact_match"]["n"] == min(3, test_pairs) > 0
    assert all(r["split"] == "test" and r["ci_low"] <= r["value"] <= r["ci_high"] for r in evidence.values())
    meta = mats["ast_eval"]
    assert meta["heldout_loss_reduction_verdict"].value.startswith(("Phase 1 beats", "the base beats", "no measur"))
    assert meta["nl2ast_exact_match_evidence"].value.endswith(f"n={evidence['nl2ast_exact_match']['n']}")
    checks = {(c.asset_key.to_user_string(), c.check_name): c.passed for c in result.get_asset_check_evaluations()}
    assert checks[("ast_corpus", "no_split_leak")] and checks[("nl_ast_pairs", "no_split_leak")]
    phase1 = mats["ast_phase1_adapter"]
    assert phase1["train_sequences"].value + phase1["dropped_too_long"].value == catalog.query(
        "SELECT count(*) AS n FROM ast_corpus WHERE partition = 'python' AND split = 'train'")[0]["n"]
    curve = catalog.query("SELECT DISTINCT metric FROM training_metrics WHERE asset_key = 'ast_phase1_adapter'")
    assert {"loss", "eval_loss"} <= {r["metric"] for r in curve}
    # Anyone with transformers + peft loads what astforge produced.
    base = catalog.latest_artifact("ast_base_model", "python")["path"]
    adapter = catalog.latest_artifact("ast_phase2_adapter", "python")["path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    assert model.peft_config
    report = Path(catalog.latest_artifact("ast_eval", "python")["path"]) / "report.md"
    assert "heldout_loss_final" in report.read_text()
    assert json.loads((report.parent / "metrics.json").read_text()) == pytest.approx(metrics, abs=1e-4)
    assert json.loads((report.parent / "metrics_evidence.json").read_text())["nl2ast_exact_match"]["split"] == "test"
    assert "n=" in report.read_text() and "heldout_loss_reduction" in report.read_text()


def test_wrong_adapter_fails_clearly_and_keeps_the_good_one(resources):
    assert dg.materialize(AST_ASSETS, resources=resources, partition_key="python", run_config=_run_config()).success
    catalog = resources["catalog"]
    good = catalog.latest_artifact("ast_eval", "python")
    # Register an adapter folder that belongs to nothing: the evaluation must refuse it.
    bogus = Path(good["path"]).parent / "bogus_adapter"
    bogus.mkdir()
    (bogus / "adapter_config.json").write_text("{}")
    catalog.publish_partition(asset_key="ast_phase2_adapter", partition="python", data_version="bogus",
                              path=bogus, run_id="test", rows=0)
    eval_asset = [a for a in AST_ASSETS if a.key.to_user_string() == "ast_eval"]
    result = dg.materialize(eval_asset, resources=resources, partition_key="python",
                            run_config={"ops": {"ast_eval": {"config": {"samples": 2, "max_new_tokens": 8}}}},
                            raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "incomplete" in str(failure.event_specific_data.error.message)
    assert catalog.latest_artifact("ast_eval", "python")["data_version"] == good["data_version"]


def test_empty_slice_is_a_clear_error(astforge_home):
    from definitions import build_resources
    from resources import CorpusResource

    (astforge_home / "empty").mkdir(parents=True)
    res = build_resources(corpus=CorpusResource(sources={"java": f"dir:{astforge_home / 'empty'}"}))
    result = dg.materialize(AST_ASSETS, resources=res, partition_key="java", run_config=_run_config(),
                            raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "nothing to train on" in failure.event_specific_data.error.message


def test_rematerializing_an_adapter_resumes_from_its_checkpoint(resources):
    assert dg.materialize(AST_ASSETS, resources=resources, partition_key="python", run_config=_run_config()).success
    phase1 = [a for a in AST_ASSETS if a.key.to_user_string() == "ast_phase1_adapter"]
    # A longer run with otherwise the same inputs picks up the checkpoints the first one left: its 4 steps are in
    # the 10-step warmup, so they had a 6-step run's learning rates (ml.training.glue.resume_refusal).
    longer = dict(FAST, max_steps=6)
    result = dg.materialize(phase1, resources=resources, partition_key="python",
                            run_config={"ops": {"ast_phase1_adapter": {"config": longer}}})
    assert result.success
    [mat] = result.get_asset_materialization_events()
    meta = mat.materialization.metadata
    assert meta["steps"].value == 6
    assert meta["resumed_from"].value.endswith("checkpoint-4")
