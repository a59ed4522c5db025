"""The `full` profile's own code path on CPU: its hub bases replaced by local stand-ins of the same architecture and
tokenizer shape (tests/full_profile_standins.py), served through ASTFORGE_MODEL_MIRROR as a user's offline mirror
would serve the real ones."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.full_profile_standins import build_mirror

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mirror(tmp_path_factory) -> Path:
    return build_mirror(tmp_path_factory.mktemp("hub_mirror"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread, as tests/test_training.py does: on 2 cores shared with other processes, torch's two OpenMP
    threads spin against each other and the other load. Measured on the DSL group (same config, load 5-15): a decode
    step of the Gemma 3 stand-in 4.5x slower with 2 threads than with 1, the group 628 s vs 72 s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def full_profile(mirror, monkeypatch) -> Path:
    monkeypatch.setenv("ASTFORGE_PROFILE", "full")
    monkeypatch.delenv("ASTFORGE_DSL_PROFILE", raising=False)
    monkeypatch.setenv("ASTFORGE_MODEL_MIRROR", str(mirror))
    return mirror


# -- the FIM tokens of a base that already has them ---------------------------------------------------------------


def test_a_base_that_has_the_fim_tokens_keeps_its_own_ids(mirror):
    from ml.autocomplete.fim import FIM_TOKENS
    from ml.autocomplete.recipe import fim_tokenizer

    base = mirror / "Qwen/Qwen2.5-Coder-0.5B"
    tok = fim_tokenizer(str(base))  # before: "3 AST token ids overlap the base vocabulary"
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(base)
    assert len(tok) == len(own)  # nothing appended
    assert [tok.convert_tokens_to_ids(t) for t in FIM_TOKENS] == [own.convert_tokens_to_ids(t) for t in FIM_TOKENS]
    assert tok.init_kwargs["astforge_reused_tokens"] == list(FIM_TOKENS)
    ids = tok.encode("<|fim_prefix|>a = 1<|fim_suffix|>\n<|fim_middle|>", add_special_tokens=False)
    assert ids[0] == own.convert_tokens_to_ids("<|fim_prefix|>") and ids[-1] == own.convert_tokens_to_ids(
        "<|fim_middle|>")


def test_a_base_without_them_gets_them_appended_above_its_vocabulary(mirror):
    from ml.autocomplete.fim import FIM_TOKENS
    from ml.autocomplete.recipe import fim_tokenizer

    tok = fim_tokenizer(str(mirror / "unsloth/gemma-3-270m-it"))
    base = tok.init_kwargs["astforge_base_vocab_size"]
    assert [tok.convert_tokens_to_ids(t) for t in FIM_TOKENS] == [base, base + 1, base + 2]
    assert "astforge_reused_tokens" not in tok.init_kwargs


def test_ast_tokens_are_still_required_above_the_base():
    from ml.training.ast_tokenizer import build_ast_tokenizer

    # without reuse, a token the base already has is an overlap, as before: the AST id range must stay contiguous
    with pytest.raises(ValueError, match="overlap the base vocabulary"):
        build_ast_tokenizer("tiny:qwen2", ["def f(): pass"] * 20, ["<|endoftext|>", "<ast_Module>"], vocab_size=300)


# -- the mirror --------------------------------------------------------------------------------------------------


def test_the_mirror_serves_a_hub_id_and_leaves_others_to_the_hub(mirror, monkeypatch):
    from ml.models.base_ref import BaseModelError, resolve_base_model

    monkeypatch.setenv("ASTFORGE_MODEL_MIRROR", os.pathsep.join(["/nonexistent", str(mirror)]))
    ref = resolve_base_model("Qwen/Qwen2.5-0.5B")
    assert ref.kind == "hub" and Path(ref.loadable) == (mirror / "Qwen/Qwen2.5-0.5B").resolve()
    with pytest.raises(BaseModelError, match="HF_HUB_OFFLINE"):  # conftest sets it: not mirrored, not cached
        resolve_base_model("Qwen/Qwen2.5-7B")


# -- settings decided at run time --------------------------------------------------------------------------------


def test_loading_the_settings_probes_nothing():
    # before: the full profile's AST base asked torch.cuda.is_available() as the settings loaded, and the DSL
    # profile the CPU's bfloat16 units; a code location must load the same on a CPU webserver and a GPU worker
    code = ("import torch\n"
            "def probed(*a, **k): raise AssertionError('probed the machine at import')\n"
            "torch.cuda.is_available = torch.ops.mkldnn._is_mkldnn_bf16_supported = probed\n"
            "import definitions\nprint('loaded')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "ASTFORGE_PROFILE": "full"})
    assert out.stdout.strip().endswith("loaded"), out.stderr[-2000:]


def test_the_profile_is_read_when_a_run_builds_its_config(monkeypatch):
    import dagster as dg

    from assets.ast_models import PhaseTrainingConfig
    from assets.autocomplete import AutocompleteBaseModelConfig, StageBConfig
    from assets.dsl_models import DslBaseModelConfig, DslSftConfig

    schema = json.dumps(AutocompleteBaseModelConfig.model_json_schema(), sort_keys=True)
    monkeypatch.setenv("ASTFORGE_PROFILE", "demo")
    monkeypatch.delenv("ASTFORGE_DSL_PROFILE", raising=False)
    assert AutocompleteBaseModelConfig().base_model == "smollm2-135m"
    assert StageBConfig().max_steps == 20 and PhaseTrainingConfig().max_steps == 150
    monkeypatch.setenv("ASTFORGE_PROFILE", "full")  # the same loaded code, another run
    assert AutocompleteBaseModelConfig().base_model == "Qwen/Qwen2.5-Coder-0.5B"
    assert StageBConfig().max_steps == 600 and PhaseTrainingConfig().max_steps == 3000
    assert DslBaseModelConfig().base_model == "unsloth/gemma-3-270m-it" and DslSftConfig().max_length == 32768
    assert AutocompleteBaseModelConfig(base_model="tiny:qwen2").base_model == "tiny:qwen2"  # the run config wins
    assert json.dumps(AutocompleteBaseModelConfig.model_json_schema(), sort_keys=True) == schema

    @dg.asset
    def probe(config: StageBConfig) -> int:
        return config.max_steps

    result = dg.materialize([probe])
    assert result.output_for_node("probe") == 600


# -- each group, materialized on the full profile with stand-in bases ---------------------------------------------

TWO_STEPS = {"max_steps": 2, "per_device_train_batch_size": 2, "save_steps": 2, "logging_steps": 1}


def _meta(result, key):
    return result.asset_materializations_for_node(key)[-1].metadata


def _slice_data(resources, extra=(), run_config=None):
    import dagster as dg

    from assets import DATA_ASSETS

    corpus = [a for a in DATA_ASSETS if a.key.to_user_string() in ("source_files", "code_units")]
    result = dg.materialize(corpus + list(extra), resources=resources, partition_key="python",
                            run_config=run_config or {})
    assert result.success


@pytest.mark.slow  # 1-3 min on 2 shared cores: a whole group
def test_autocomplete_on_the_full_profile(full_profile, resources, tmp_path):
    import dagster as dg
    from transformers import AutoTokenizer

    from assets import AUTOCOMPLETE_ASSETS, GGUF_ASSETS
    from ml.autocomplete.fim import FIM_TOKENS

    domain = tmp_path / "domain"
    domain.mkdir()
    for i in range(12):
        (domain / f"ex{i}.py").write_text(f"# make queue {i}\nqueue_{i} = sqs.Queue(self, 'Q{i}')\n")
    data = [a for a in AUTOCOMPLETE_ASSETS if a.key.to_user_string() in ("fim_samples", "domain_corpus")]
    _slice_data(resources, data, {"ops": {"domain_corpus": {"config": {"source": f"dir:{domain}"}}}})
    selected = [a for a in AUTOCOMPLETE_ASSETS if a.key.to_user_string() in (
        "autocomplete_base_model", "autocomplete_stage_a_adapter", "autocomplete_stage_b_adapter",
        "autocomplete_eval")]
    stage = {**TWO_STEPS, "max_length": 512, "languages": ["python"]}  # the profile's three slices: python here
    result = dg.materialize(selected, resources=resources, run_config={"ops": {
        "autocomplete_stage_a_adapter": {"config": stage},
        "autocomplete_stage_b_adapter": {"config": {**TWO_STEPS, "max_length": 512}},
        "autocomplete_eval": {"config": {"tasks_per_set": 2, "humaneval_problems": 1, "max_new_tokens": 4,
                                         "languages": ["python"]}}}})
    assert result.success
    base = _meta(result, "autocomplete_base_model")
    assert base["base_model"].value == "Qwen/Qwen2.5-Coder-0.5B"  # the full profile's, served by the mirror
    own = AutoTokenizer.from_pretrained(full_profile / "Qwen/Qwen2.5-Coder-0.5B")
    assert base["vocab_size"].value == len(own)  # the base's own FIM tokens: nothing appended
    assert base["fim_token_ids"].value == str([own.convert_tokens_to_ids(t) for t in FIM_TOKENS])
    assert _meta(result, "autocomplete_stage_b_adapter")["steps"].value == 2
    exports = [a for a in GGUF_ASSETS if a.key.to_user_string() == "autocomplete_stage_b_gguf"]
    loose = {"config": {"check_prompts": 2, "quantized_min_agreement": 0.0}}
    export = dg.materialize(exports, resources=resources,
                            run_config={"ops": {"autocomplete_stage_b_gguf": loose}})
    assert export.success


@pytest.mark.slow  # 1-3 min on 2 shared cores: a whole group
def test_ast_first_on_the_full_profile(full_profile, resources):
    import dagster as dg

    from assets import AST_ASSETS

    steps = {"max_steps": 2, "batch_size": 2, "eval_steps": 2, "save_steps": 2, "logging_steps": 1}
    result = dg.materialize(AST_ASSETS, resources=resources, partition_key="python", run_config={"ops": {
        # the full profile's base where CUDA is (on a CPU it falls back to the packaged SmolLM2)
        "ast_tokenizer": {"config": {"base_model": "Qwen/Qwen2.5-0.5B"}},
        "ast_phase1_adapter": {"config": steps}, "ast_phase2_adapter": {"config": steps},
        "ast_eval": {"config": {"samples": 2, "max_new_tokens": 8}}}})
    assert result.success
    tok = _meta(result, "ast_tokenizer")
    assert tok["ast_id_min"].value >= tok["base_vocab_size"].value


@pytest.mark.slow  # 1-3 min on 2 shared cores: a whole group
def test_dsl_on_the_full_profile(full_profile, resources):
    import dagster as dg

    from assets.dsl import DSL_ASSETS
    from tests.test_dsl_pipeline import TINY_RUN

    # The full profile's own settings where the code path depends on them: its base (Gemma 3 270M, from the mirror)
    # with its tokenizer and chat template, its 32768-token cap, whole-schema prompts (1.7k-2.4k tokens: the
    # stand-in's BPE splits finely), its LoRA. Only the sizes are the test's: two steps, one request per group, two
    # DPO candidates (a random stand-in generates each answer to the token budget, ~250 tokens).
    run = {**TINY_RUN, "dsl_base_model": {},
           "dsl_sft_adapter": {**TINY_RUN["dsl_sft_adapter"], "max_steps": 2, "per_device_train_batch_size": 2,
                               "eval_steps": 2, "eval_max_samples": 2, "probe_samples": 0},
           "dsl_dpo_pairs": {"max_pairs": 2, "candidates": 2}}
    for key in ("dsl_base_eval", "dsl_sft_eval", "dsl_dpo_eval"):
        run[key] = {"samples": 1}
    result = dg.materialize(DSL_ASSETS, resources=resources,
                            run_config={"ops": {k: {"config": v} for k, v in run.items()}})
    assert result.success
    assert _meta(result, "dsl_base_model")["base_model"].value == "unsloth/gemma-3-270m-it"
    sft = _meta(result, "dsl_sft_adapter")
    assert sft["dropped_truncated"].value == 0  # the demo's 512-token cap would drop every whole-schema row
    adapter = json.loads((Path(sft["path"].value) / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (64, 128)  # the full profile's LoRA


@pytest.mark.slow  # 1-3 min on 2 shared cores: a whole group
def test_srl_on_the_full_profile(full_profile, tmp_path, astforge_home):
    import dagster as dg

    from assets import DATA_ASSETS, SRL_ASSETS
    from definitions import build_resources
    from resources import CorpusResource
    from tests.test_srl_pipeline import SOURCE

    src = tmp_path / "src"
    src.mkdir()
    (src / "counters.py").write_text(SOURCE)
    resources = build_resources(corpus=CorpusResource(sources={"python": f"dir:{src}"}))
    corpus = [a for a in DATA_ASSETS if a.key.to_user_string() in ("source_files", "code_units")]
    assert dg.materialize(corpus, resources=resources, partition_key="python").success
    adapter = {"sft_steps": 2, "sft_batch_size": 2, "max_steps": 2, "num_generations": 2,
               "per_device_train_batch_size": 2, "max_completion_length": 12, "max_length": 1536}
    selected = [a for a in SRL_ASSETS if a.key.to_user_string() != "srl_ablation"]
    result = dg.materialize(selected, resources=resources, partition_key="python", selection=selected,
                            run_config={"ops": {"srl_adapter": {"config": adapter},
                                                "srl_eval": {"config": {"eval_tasks": 2, "max_new_tokens": 8}}}})
    assert result.success
    assert _meta(result, "srl_base_model")["base_model"].value == "Qwen/Qwen2.5-Coder-0.5B"


def test_gpu_check_says_no_cuda_and_exits_0_on_a_cpu_machine():
    out = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert "no CUDA" in lines[0]
    assert json.loads(lines[-1]) == {"cuda": False, "steps": [], "passed": 0, "failed": 0}
