"""Training and evaluation config that makes no sense fails before any work, naming the field (issue 12, item 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import dagster as dg
import pytest
from pydantic import ValidationError

from assets.ast_models import AstEvalConfig, AstTokenizerConfig, Phase2TrainingConfig, PhaseTrainingConfig
from assets.config_checks import BpeSplit, SchemaView
from assets.dsl import (
    DslBaseModelConfig,
    DslDatasetConfig,
    DslDpoConfig,
    DslDpoPairsConfig,
    DslEvalConfig,
    DslQueriesConfig,
    DslSftConfig,
    DslTrainingCorpusConfig,
    dsl_sft_adapter,
    dsl_training_corpus,
)
from resources.compute import ComputeResource

ROOT = Path(__file__).resolve().parents[1]

BAD = [
    (PhaseTrainingConfig, "max_steps", -1),  # Hugging Face's "train epochs" sentinel
    (PhaseTrainingConfig, "max_steps", 0),
    (Phase2TrainingConfig, "max_steps", -1),
    (PhaseTrainingConfig, "batch_size", 0),
    (PhaseTrainingConfig, "learning_rate", 0.0),
    (PhaseTrainingConfig, "learning_rate", -1e-4),
    (PhaseTrainingConfig, "gradient_accumulation_steps", 0),
    (PhaseTrainingConfig, "lora_r", 0),
    (PhaseTrainingConfig, "save_steps", 0),
    (PhaseTrainingConfig, "max_eval_rows", -1),
    (PhaseTrainingConfig, "trainable_embeddings", "some"),
    (AstTokenizerConfig, "vocab_size", 0),
    (AstEvalConfig, "samples", 0),
    (AstEvalConfig, "seed", -1),
    (DslDatasetConfig, "test_fraction", 1.5),
    (DslQueriesConfig, "per_schema_queries", 0),
    (DslDatasetConfig, "negative_ratio", -0.2),
    (DslDatasetConfig, "negative_ratio", 1.2),
    (DslTrainingCorpusConfig, "max_samples", -1),
    (DslTrainingCorpusConfig, "schema_view", "yaml"),
    (DslBaseModelConfig, "bpe_split", "chars"),
    (DslBaseModelConfig, "bpe_max_token_length", -1),
    (DslSftConfig, "max_steps", -1),
    (DslSftConfig, "per_device_train_batch_size", 0),
    (DslSftConfig, "max_length", 0),
    (DslSftConfig, "early_stopping_threshold", -0.1),
    (DslSftConfig, "learning_rate", 0.0),
    (DslDatasetConfig, "dev_fraction", 1.0),
    (DslSftConfig, "lora_r", 0),
    (DslSftConfig, "lora_dropout", 1.0),
    (DslSftConfig, "early_stopping_patience", -1),
    (DslSftConfig, "probe_samples", -1),
    (DslSftConfig, "save_total_limit", 0),
    (DslEvalConfig, "samples", 0),
    (DslEvalConfig, "batch_size", 0),
    (DslDpoPairsConfig, "max_pairs", 0),
    (DslDpoPairsConfig, "candidates", -1),
    (DslDpoConfig, "beta", 0.0),
    (DslDpoConfig, "max_steps", -1),
    (DslDpoConfig, "learning_rate", -5e-6),
    (DslDpoConfig, "sft_weight", -1.0),
    (DslDpoConfig, "per_device_train_batch_size", 0),
    (DslDpoConfig, "max_length", 0),
]


@pytest.mark.parametrize(("cls", "field", "value"), BAD, ids=[f"{c.__name__}.{f}={v}" for c, f, v in BAD])
def test_a_value_that_makes_no_sense_is_refused_with_the_fields_name(cls, field, value):
    with pytest.raises(ValidationError) as err:
        cls(**{field: value})
    assert [e["loc"] for e in err.value.errors()] == [(field,)]
    assert field in str(err.value)


def test_zero_keeps_its_documented_meaning():
    # 0 = all rows, 2 × max_pairs, early stopping off, probes off, LoRA on every layer, no BPE limit, no clipping
    DslTrainingCorpusConfig(max_samples=0)
    DslDpoPairsConfig(candidates=0)
    DslSftConfig(early_stopping_patience=0, probe_samples=0, lora_top_layers=0, max_grad_norm=0.0, warmup_steps=0)
    DslBaseModelConfig(bpe_max_token_length=0)
    DslDpoConfig(sft_weight=0.0)
    PhaseTrainingConfig(max_eval_rows=0)
    DslDatasetConfig(negative_ratio=1.0)


def test_early_stopping_needs_a_save_at_each_evaluation():
    with pytest.raises(ValidationError, match=r"save_steps \(150\) must be a multiple of eval_steps \(100\)"):
        DslSftConfig(save_steps=150, eval_steps=100, early_stopping_patience=2)
    DslSftConfig(save_steps=150, eval_steps=100, early_stopping_patience=0)
    DslSftConfig(save_steps=200, eval_steps=100, early_stopping_patience=2)


@pytest.mark.parametrize("field", ["device", "precision", "quantization", "backend"])
def test_an_unknown_compute_name_is_refused_when_the_resource_is_built(field):
    with pytest.raises(ValidationError, match=rf"{field}\n.*unknown {field} 'gpu'; expected one of auto"):
        ComputeResource(**{field: "gpu"})


def test_compute_aliases_stay_valid():
    ComputeResource(device="CPU", precision="bfloat16", quantization="off", backend="transformers")


def test_the_name_literals_match_what_ml_accepts():
    from ml.dsl.format import SCHEMA_VIEWS
    from ml.tokenizer import train_bpe

    assert set(get_args(SchemaView)) == set(SCHEMA_VIEWS)
    for split in get_args(BpeSplit):
        train_bpe(["a b, c1 d"], vocab_size=300, split=split)


_DEFAULTS = """
import json, pydantic
from assets import ast_models, dsl
from resources.compute import ComputeResource
from resources.settings import active_profile
classes = [ast_models.AstTokenizerConfig, ast_models.AstBaseModelConfig, ast_models.PhaseTrainingConfig,
           ast_models.Phase2TrainingConfig, ast_models.AstEvalConfig, dsl.DslQueriesConfig, dsl.DslDatasetConfig,
           dsl.DslTrainingCorpusConfig, dsl.DslBaseModelConfig, dsl.DslSftConfig, dsl.DslEvalConfig,
           dsl.DslDpoPairsConfig, dsl.DslDpoConfig, ComputeResource]
errors = {}
for cls in classes:
    # Each default passed in: pydantic does not validate defaults, Dagster's step passes them all.
    try:
        cls(**{name: f.default for name, f in cls.model_fields.items()})
    except pydantic.ValidationError as exc:
        errors[cls.__name__] = str(exc)
print(json.dumps({"profile": active_profile().name, "errors": errors}))
"""


@pytest.mark.parametrize("profile", ["demo", "full"])
def test_both_profiles_defaults_validate(profile):
    # A subprocess per profile, as a run process would read it.
    env = {**os.environ, "ASTFORGE_PROFILE": profile, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _DEFAULTS], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"profile": profile, "errors": {}}


def test_an_unknown_profile_is_refused_with_the_known_ones(monkeypatch):
    from resources.settings import active_profile

    monkeypatch.setenv("ASTFORGE_PROFILE", "huge")
    with pytest.raises(ValueError, match=r"ASTFORGE_PROFILE='huge': expected one of demo, full"):
        active_profile()


def _error_text(event) -> str:
    error, parts = event.event_specific_data.error, []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


def test_max_steps_minus_one_fails_before_training_and_keeps_the_adapter(resources):
    catalog = resources["catalog"]
    adapter = Path(os.environ["ASTFORGE_HOME"]) / "previous_adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    catalog.publish_partition(asset_key="dsl_sft_adapter", partition="all", data_version="good", path=adapter,
                              run_id="earlier", rows=0)
    # No upstream was ever materialized: had the body run, it would fail on the missing training corpus instead.
    result = dg.materialize([dsl_sft_adapter], resources=resources, raise_on_error=False,
                            run_config={"ops": {"dsl_sft_adapter": {"config": {"max_steps": -1}}}})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    text = _error_text(failure)
    assert "DslSftConfig\nmax_steps\n  Input should be greater than 0" in text
    assert "dsl_training_corpus" not in text
    latest = catalog.latest_artifact("dsl_sft_adapter", "all")
    assert (latest["data_version"], latest["run_id"]) == ("good", "earlier")
    assert os.listdir(adapter) == ["adapter_config.json"]
    assert not (resources["artifacts"].root_path / "dsl_sft_adapter").exists()  # not even a checkpoint folder


def test_an_unknown_name_fails_at_run_config_validation(resources):
    with pytest.raises(dg.DagsterInvalidConfigError, match="schema_view"):
        dg.materialize([dsl_training_corpus], resources=resources,
                       run_config={"ops": {"dsl_training_corpus": {"config": {"schema_view": "yaml"}}}})
