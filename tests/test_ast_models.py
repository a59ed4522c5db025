"""The model half of ast_first, end to end on the fixture corpus with a few training steps."""

import json
from pathlib import Path

import dagster as dg
import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from assets import AST_ASSETS

pytestmark = pytest.mark.slow

FAST = {"max_steps": 4, "batch_size": 4, "eval_steps": 2, "save_steps": 2, "logging_steps": 2,
        "heldout_fraction": 0.3}


def _run_config(**eval_cfg):
    return {"ops": {
        "ast_tokenizer": {"config": {"vocab_size": 400}},
        "ast_phase1_adapter": {"config": FAST},
        "ast_phase2_adapter": {"config": FAST},
        "ast_eval": {"config": {"samples": 3, "max_new_tokens": 40, "heldout_fraction": 0.3, **eval_cfg}},
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
    expected = {"heldout_loss_initial", "heldout_loss_final", "valid_rate_unconstrained", "valid_rate_constrained",
                "nl2ast_valid_rate", "nl2ast_exact_match", "nl2ast_tree_similarity"}
    assert expected <= set(metrics)
    assert metrics["valid_rate_constrained"] == 1.0  # the grammar admits only decodable, compilable trees
    assert all(0.0 <= metrics[k] <= 1.0 for k in expected if "loss" not in k)
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
                            run_config={"ops": {"ast_eval": {"config": {"samples": 2, "max_new_tokens": 8,
                                                                       "heldout_fraction": 0.3}}}},
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
    # A longer run with otherwise the same inputs picks up the checkpoints the first one left.
    longer = dict(FAST, max_steps=6)
    result = dg.materialize(phase1, resources=resources, partition_key="python",
                            run_config={"ops": {"ast_phase1_adapter": {"config": longer}}})
    assert result.success
    [mat] = result.get_asset_materialization_events()
    meta = mat.materialization.metadata
    assert meta["steps"].value == 6
    assert meta["resumed_from"].value.endswith("checkpoint-4")
