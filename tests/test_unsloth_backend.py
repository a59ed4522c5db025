"""backend 'unsloth' (ml/training/unsloth_backend.py): when it is refused, and what reaches unsloth's two calls.

unsloth installs only beside CUDA, so it cannot be installed on this CPU-only machine. The tests that follow the
trainer through the unsloth branch therefore put a stand-in ``unsloth`` module into ``sys.modules``: its
``FastLanguageModel.from_pretrained`` records its arguments and loads the folder with transformers, its
``get_peft_model`` records its arguments and applies a real peft LoRA with them. That checks our side (the plan's and
the LoRA settings' values reach unsloth, the model it returns trains in the same TRL trainer and saves an adapter the
platform loads), not unsloth itself: ``make gpu-check`` runs the real package on a GPU (docs/gpu.md).
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import sys
import types

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ml.compute import ComputePlan, resolve_compute
from ml.training.sft_trainer import PhaseConfig, lora_config

PAIRS = [(f"add {i} and {i + 1}\n", f"return {i} + {i + 1}") for i in range(12)]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from ml.training.ast_tokenizer import build_ast_tokenizer
    from ml.training.base_model import build_base_model, save_base_model

    texts = [p + c for p, c in PAIRS] * 4
    tok = build_ast_tokenizer("tiny:qwen2", texts, [], vocab_size=300)
    folder = tmp_path_factory.mktemp("base") / "tiny"
    save_base_model(build_base_model("tiny:qwen2", tok, seed=0), tok, folder)
    return folder, tok


class _Recorder:
    def __init__(self):
        self.calls: dict[str, dict] = {}


def _stand_in_unsloth(recorder: _Recorder) -> types.ModuleType:
    """A module named ``unsloth`` with unsloth's two entry points (see the module docstring for why)."""

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            recorder.calls["from_pretrained"] = kwargs
            name = kwargs["model_name"]
            return (AutoModelForCausalLM.from_pretrained(name, dtype=kwargs["dtype"]),
                    AutoTokenizer.from_pretrained(name))

        @staticmethod
        def get_peft_model(model, **kwargs):
            from peft import LoraConfig, get_peft_model

            recorder.calls["get_peft_model"] = kwargs
            return get_peft_model(model, LoraConfig(
                r=kwargs["r"], lora_alpha=kwargs["lora_alpha"], lora_dropout=kwargs["lora_dropout"],
                target_modules=kwargs["target_modules"], layers_to_transform=kwargs["layers_to_transform"],
                bias=kwargs["bias"], task_type="CAUSAL_LM"))

    module = types.ModuleType("unsloth")
    module.__spec__ = importlib.machinery.ModuleSpec("unsloth", None)  # find_spec answers for it
    module.FastLanguageModel = FastLanguageModel
    return module


# -- when the backend is refused -----------------------------------------------------------------------------------


def test_unsloth_is_refused_on_cpu_with_the_reason():
    for device in ("cpu",) + (() if torch.cuda.is_available() else ("auto",)):
        with pytest.raises(ValueError, match=r"backend 'unsloth' requires CUDA .* use backend 'hf'"):
            resolve_compute(device=device, backend="unsloth")
    assert resolve_compute(device="cpu").backend == "hf"  # auto never picks unsloth


def test_on_cuda_unsloth_needs_the_package_and_is_planned_with_it(monkeypatch):
    # CUDA as resolve_compute sees it; nothing here touches a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    if importlib.util.find_spec("unsloth") is None:
        with pytest.raises(ValueError, match=r"requires the unsloth package \(pip install -e '\.\[gpu\]'"):
            resolve_compute(backend="unsloth", quantization="none")
    monkeypatch.setitem(sys.modules, "unsloth", _stand_in_unsloth(_Recorder()))
    plan = resolve_compute(backend="unsloth", quantization="none")
    assert (plan.device, plan.dtype, plan.backend) == ("cuda", "bf16", "unsloth")
    assert resolve_compute(backend="auto", quantization="none").backend == "hf"  # installed is not asked for


def test_trainers_that_only_run_hf_refuse_an_unsloth_plan(base, tmp_path):
    from ml.training.dpo import DPOSettings, train_dpo
    from ml.training.lora_sft import continue_lora_sft
    from ml.training.sft import train_phase1

    folder, tok = base
    plan = ComputePlan(device="cpu", dtype="fp32", quantize_4bit=False, backend="unsloth")
    cfg = PhaseConfig(max_steps=1)
    # each refuses before it loads anything (the adapter folders do not even exist)
    with pytest.raises(ValueError, match=r"phase 1 .* trains with the hf backend only"):
        train_phase1(folder, tok, ["a"], [], tmp_path / "o", tmp_path / "w", cfg, plan)
    with pytest.raises(ValueError, match=r"phase 2 trains with the hf backend only"):
        continue_lora_sft(folder, tmp_path / "none", tok, PAIRS, [], tmp_path / "o", tmp_path / "w", cfg, plan,
                          what="phase 2")
    with pytest.raises(ValueError, match=r"DPO trains with the hf backend only"):
        train_dpo(folder, tmp_path / "none", tok, [{"prompt": "a", "chosen": "b", "rejected": "c"}],
                  tmp_path / "o", tmp_path / "w", DPOSettings(max_steps=1), plan)


def test_trainable_embedding_rows_are_refused_under_unsloth(base, tmp_path, monkeypatch):
    from ml.training.lora_sft import train_lora_sft

    folder, tok = base
    monkeypatch.setitem(sys.modules, "unsloth", _stand_in_unsloth(_Recorder()))
    plan = ComputePlan(device="cpu", dtype="fp32", quantize_4bit=False, backend="unsloth")
    with pytest.raises(ValueError, match=r"trains LoRA only, but trainable_embeddings='all'"):
        train_lora_sft(folder, tok, PAIRS, [], tmp_path / "o", tmp_path / "w",
                       PhaseConfig(max_steps=1, trainable_embeddings="all", per_device_train_batch_size=4), plan)


# -- what reaches unsloth ------------------------------------------------------------------------------------------


def test_the_plan_and_the_lora_settings_reach_unsloth_and_the_adapter_is_plain_peft(base, tmp_path, monkeypatch):
    from ml.models.loading import load_adapter
    from ml.training.lora_sft import train_lora_sft

    folder, tok = base
    recorder = _Recorder()
    monkeypatch.setitem(sys.modules, "unsloth", _stand_in_unsloth(recorder))
    # every value off its default, so a hard-coded argument shows
    cfg = PhaseConfig(max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=4, logging_steps=1,
                      eval_steps=2, save_steps=2, max_length=200, lora_r=4, lora_alpha=12, lora_dropout=0.1,
                      lora_target_modules=["q_proj", "v_proj"], lora_top_layers=1, seed=7,
                      trainable_embeddings="none", learning_rate=1e-3, warmup_steps=0)
    # a CPU plan naming unsloth: one resolve_compute never makes, so that the trainer runs here
    plan = ComputePlan(device="cpu", dtype="fp32", quantize_4bit=False, backend="unsloth")
    result = train_lora_sft(folder, tok, PAIRS[:8], PAIRS[8:], tmp_path / "adapter", tmp_path / "work", cfg, plan)

    assert recorder.calls["from_pretrained"] == {"model_name": str(folder), "max_seq_length": 200,
                                                 "dtype": torch.float32, "load_in_4bit": False}
    peft_args = recorder.calls["get_peft_model"]
    assert peft_args == {"r": 4, "lora_alpha": 12, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"],
                         "layers_to_transform": [1], "bias": "none", "use_gradient_checkpointing": False,
                         "random_state": 7}
    from transformers import AutoModelForCausalLM

    hf = lora_config(cfg, AutoModelForCausalLM.from_pretrained(folder))  # what the hf backend would train
    assert (hf.r, hf.lora_alpha, hf.lora_dropout, sorted(hf.target_modules), hf.layers_to_transform) == (
        peft_args["r"], peft_args["lora_alpha"], peft_args["lora_dropout"], peft_args["target_modules"],
        peft_args["layers_to_transform"])

    assert result.steps == 2
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"], sorted(saved["target_modules"])) == (4, 12, ["q_proj", "v_proj"])
    # the platform's loader (shape checks against the base, then PeftModel) takes it as any other adapter
    model = load_adapter(folder, tmp_path / "adapter", resolve_compute(device="cpu"))
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_unsloth_call_arguments_on_a_gpu_plan(monkeypatch):
    from ml.training.unsloth_backend import from_pretrained_kwargs, get_peft_model_kwargs, trainer_settings

    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process: its own GPU
    plan = ComputePlan(device="cuda", dtype="bf16", quantize_4bit=True, backend="unsloth")
    cfg = PhaseConfig(max_length=32768, gradient_checkpointing=True)
    assert from_pretrained_kwargs("/m", cfg, plan) == {"model_name": "/m", "max_seq_length": 32768,
                                                       "dtype": torch.bfloat16, "load_in_4bit": True,
                                                       "device_map": {"": 1}}

    class _Model:  # lora_config reads the layer count only
        config = types.SimpleNamespace(get_text_config=lambda: types.SimpleNamespace(num_hidden_layers=24))

    args = get_peft_model_kwargs(lora_config(cfg, _Model()), cfg)
    assert args["use_gradient_checkpointing"] == "unsloth" and args["layers_to_transform"] is None
    assert args["target_modules"] == sorted(cfg.lora_target_modules)
    # unsloth checkpoints and computes the loss itself: TRL must do neither on top
    trl_side = trainer_settings(cfg)
    assert (trl_side.gradient_checkpointing, trl_side.fused_lm_head) == (False, False)
    assert trainer_settings(PhaseConfig(fused_lm_head=True)).fused_lm_head is True  # an explicit choice stays
