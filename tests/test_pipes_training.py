"""Phase 1 through Dagster Pipes: torchrun with 2 CPU processes (gloo) against the in-process path, and a worker
that crashes. Real torchrun jobs on the fixture corpus with the tiny model, a few steps each."""

import math
from pathlib import Path

import dagster as dg
import pytest
from peft import PeftModel
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from assets import AST_ASSETS
from assets.ast_models import Phase1TrainingConfig
from assets.pipes_training import crash_message
from resources.pipes_phase1 import FAULT_RANK_ENV

UPSTREAM = ["source_files", "code_units", "ast_corpus", "nl_ast_pairs", "ast_tokenizer", "ast_base_model"]
FAST = {"max_steps": 4, "batch_size": 4, "eval_steps": 2, "save_steps": 2, "logging_steps": 2}
PHASE1 = [a for a in AST_ASSETS if a.key.to_user_string() == "ast_phase1_adapter"]


def _phase1_config(**overrides) -> dict:
    return {"ops": {"ast_phase1_adapter": {"config": {**FAST, **overrides}}}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A home where the upstream assets and an in-process Phase 1 adapter are materialized (python slice)."""
    from definitions import build_resources
    from resources import CorpusResource
    from tests.conftest import fixture_sources

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASTFORGE_HOME", str(tmp_path_factory.mktemp("pipes") / "astforge"))
        for name in ("ASTFORGE_CATALOG_URL", "ASTFORGE_ARTIFACTS_URL"):  # a developer's shell must not leak in
            mp.delenv(name, raising=False)
        resources = build_resources(corpus=CorpusResource(sources=fixture_sources()))
        result = dg.materialize(AST_ASSETS, resources=resources, partition_key="python",
                                selection=[*UPSTREAM, "ast_phase1_adapter"],
                                run_config={"ops": {"ast_tokenizer": {"config": {"vocab_size": 400}},
                                                    **_phase1_config()["ops"]}})
        assert result.success
        yield resources, result.run_id


def _curve_keys(catalog, run_id: str) -> set[tuple[int, str]]:
    rows = catalog.query("SELECT step, metric, value FROM training_metrics WHERE asset_key = 'ast_phase1_adapter' "
                         "AND partition = 'python' AND run_id = ?", [run_id])
    assert rows, f"no training_metrics rows for run {run_id}"
    assert all(math.isfinite(r["value"]) for r in rows)
    return {(int(r["step"]), r["metric"]) for r in rows}


def _value(catalog, run_id: str, step: int, metric: str) -> float:
    [row] = catalog.query("SELECT value FROM training_metrics WHERE asset_key = 'ast_phase1_adapter' AND run_id = ? "
                          "AND step = ? AND metric = ?", [run_id, step, metric])
    return row["value"]


def _versions(catalog) -> set[str]:
    folder = Path(catalog.latest_artifact("ast_phase1_adapter", "python")["path"]).parent
    return {p.name for p in folder.iterdir() if not p.name.startswith("_")}


@pytest.mark.slow
def test_two_gloo_processes_through_pipes_match_the_in_process_adapter(trained):
    resources, in_process_run = trained
    catalog = resources["catalog"]
    in_process = catalog.latest_artifact("ast_phase1_adapter", "python")
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(PHASE1, resources=resources, partition_key="python", instance=instance,
                            run_config=_phase1_config(launcher="pipes", nproc_per_node=2))
    assert result.success
    [mat] = result.get_asset_materialization_events()
    meta = mat.materialization.metadata
    assert (meta["launcher"].value, meta["processes"].value, meta["steps"].value) == ("pipes", 2, 4)

    piped = catalog.latest_artifact("ast_phase1_adapter", "python")
    assert piped["run_id"] == result.run_id and piped["data_version"] != in_process["data_version"]
    folder = Path(piped["path"])
    # the same files as the in-process artifact: the staged inputs and torchrun's logs are not part of it
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in Path(in_process["path"]).iterdir())
    assert (folder / "adapter_model.safetensors").stat().st_size > 0
    base = catalog.latest_artifact("ast_base_model", "python")["path"]
    assert PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(folder)).peft_config

    # the same curve rows (two ranks see twice the batches, so the values differ; the keys do not)
    keys = _curve_keys(catalog, result.run_id)
    assert keys == _curve_keys(catalog, in_process_run)
    assert {"loss", "eval_loss"} <= {metric for _, metric in keys}
    # the same loss scale: each rank's loss is over the tokens of both ranks, so unscaled it would be about half
    first_loss = {run: _value(catalog, run, 2, "loss") for run in (in_process_run, result.run_id)}
    assert first_loss[result.run_id] == pytest.approx(first_loss[in_process_run], rel=0.25), first_loss
    # rank 1 really trained: the Trainer keeps one RNG state per process in the (shared) checkpoints
    checkpoint = Path(meta["checkpoints"].value) / "checkpoint-4"
    assert (checkpoint / "rng_state_1.pth").is_file()
    # rank 0's log entries came back through Pipes into the run's log
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("phase 1 [python] step 4/4:" in m and "loss=" in m for m in messages)


@pytest.mark.slow
def test_a_crashing_worker_fails_the_step_keeps_the_adapter_and_a_rerun_resumes(trained, monkeypatch):
    resources, _ = trained
    catalog = resources["catalog"]
    before = catalog.latest_artifact("ast_phase1_adapter", "python")
    versions = _versions(catalog)
    # save_steps=1 (a checkpoint key of this test's own): checkpoint-1 is written, then rank 1 fails at its first
    # logged step (2), before anything of step 2 is saved
    config = _phase1_config(launcher="pipes", nproc_per_node=2, save_steps=1)
    monkeypatch.setenv(FAULT_RANK_ENV, "1")
    result = dg.materialize(PHASE1, resources=resources, partition_key="python", raise_on_error=False,
                            run_config=config)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "exit code 1" in message
    assert "Last stderr lines of rank 1" in message
    assert "injected fault" in message and "rank 1 stops after step 2" in message

    after = catalog.latest_artifact("ast_phase1_adapter", "python")
    assert (after["data_version"], after["run_id"]) == (before["data_version"], before["run_id"])
    assert (Path(after["path"]) / "adapter_model.safetensors").is_file()
    assert _versions(catalog) == versions  # no new version folder, half-written or not
    staging = Path(after["path"]).parents[2] / ".staging"
    assert not [p for p in staging.iterdir() if p.name.startswith("ast_phase1_adapter")]

    # as in process, the checkpoints outlive the failure: the re-run continues from the last one
    monkeypatch.delenv(FAULT_RANK_ENV)
    rerun = dg.materialize(PHASE1, resources=resources, partition_key="python", run_config=config)
    [mat] = rerun.get_asset_materialization_events()
    assert mat.materialization.metadata["resumed_from"].value.endswith("checkpoint-1")
    assert mat.materialization.metadata["steps"].value == 4
    assert catalog.latest_artifact("ast_phase1_adapter", "python")["run_id"] == rerun.run_id


def test_more_than_one_process_needs_the_pipes_launcher():
    with pytest.raises(ValidationError, match="nproc_per_node=2 needs launcher: pipes"):
        Phase1TrainingConfig(nproc_per_node=2)
    assert Phase1TrainingConfig(launcher="pipes", nproc_per_node=2).nproc_per_node == 2


def test_a_launch_that_left_no_worker_logs_says_where_to_look(tmp_path):
    message = crash_message("phase 1 [python]", 2, "External execution process failed with code 3", tmp_path)
    assert "failed with exit code 3" in message and "torchrun's own output is in the step's stderr" in message
