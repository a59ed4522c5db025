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
