"""ml/models/loading.py's placement rule and the one settings -> trainer -> TRL config mapper
(ml/training/trainer_config.py) as every training path calls it."""

import os

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from ml.compute import resolve_compute
from ml.models.loading import device_map, local_device_index


def _rank_device(rank: int, world: int, init_file: str, out_dir: str) -> None:
    # what torchrun gives each process: its own LOCAL_RANK, RANK and WORLD_SIZE
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        got = [None] * world
        dist.all_gather_object(got, (dist.get_rank(), local_device_index()))
        if rank == 0:
            with open(os.path.join(out_dir, "devices"), "w") as f:
                f.write(repr(got))
    finally:
        dist.destroy_process_group()


def test_each_torchrun_process_places_its_model_on_its_own_device(tmp_path):
    mp.spawn(_rank_device, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    assert eval((tmp_path / "devices").read_text()) == [(0, 0), (1, 1)]


def test_local_device_index_defaults_and_refusals():
    assert local_device_index({}) == 0
    assert local_device_index({"LOCAL_RANK": "3"}) == 3
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        local_device_index({"LOCAL_RANK": "x"})
    with pytest.raises(ValueError, match=">= 0"):
        local_device_index({"LOCAL_RANK": "-1"})


def test_device_map_is_none_on_cpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device_map(resolve_compute(device="cpu")) is None


# ------------------------------------------------------------------------------------------- settings -> TRL configs


def _sft_args(cfg):
    from ml.training.sft_trainer import sft_config

    return sft_config(cfg, resolve_compute(device="cpu"), "/tmp/unused", has_eval=False)


def test_ast_phases_refuse_an_unknown_key_and_pass_a_known_one_to_sft_config():
    from ml.training.ast_phases import phase_config

    with pytest.raises(ValueError, match=r"\['max_stpes'\].*valid keys: .*'batch_size'.*'max_steps'"):
        phase_config({"max_stpes": 3})
    cfg = phase_config({"max_steps": 7, "batch_size": 3, "max_eval_rows": 5})
    args = _sft_args(cfg)
    assert (args.max_steps, args.per_device_train_batch_size, args.per_device_eval_batch_size) == (7, 3, 3)


def test_dsl_sft_and_dpo_refuse_an_unknown_key_and_pass_a_known_one():
    from ml.dsl.recipe import dpo_settings, sft_phase_config
    from ml.training.dpo import dpo_config

    with pytest.raises(ValueError, match=r"\['lerning_rate'\].*valid keys"):
        sft_phase_config({"per_device_train_batch_size": 2, "lerning_rate": 1.0}, tiny_base=True)
    with pytest.raises(ValueError, match=r"\['bta'\].*valid keys: .*'beta'"):
        dpo_settings({"bta": 0.3})
    sft = _sft_args(sft_phase_config({"per_device_train_batch_size": 2, "warmup_steps": 9, "precision": "fp32"},
                                     tiny_base=True))
    assert (sft.warmup_steps, sft.per_device_eval_batch_size) == (9, 2)
    dpo = dpo_config(dpo_settings({"beta": 0.3, "precision": "fp32"}), resolve_compute(device="cpu"), "/tmp/unused")
    assert dpo.beta == 0.3


def test_autocomplete_stages_refuse_an_unknown_key_and_pass_a_known_one():
    from ml.autocomplete.recipe import phase_config

    with pytest.raises(ValueError, match=r"\['max_lenght'\].*valid keys: .*'max_length'"):
        phase_config({"max_lenght": 64}, tiny=True)
    args = _sft_args(phase_config({"max_length": 64, "languages": ["python"], "replay_ratio": 0.2,
                                   "precision": "auto"}, tiny=True))
    assert args.max_length == 64


def test_srl_grpo_refuses_an_unknown_key_and_passes_a_known_one():
    from ml.srl.recipe import _grpo_config, grpo_settings

    with pytest.raises(ValueError, match=r"\['temprature'\].*valid keys: .*'temperature'"):
        grpo_settings({"temprature": 0.5})
    cfg = grpo_settings({"temperature": 0.5, "max_steps": 8, "sft_steps": 3, "reward_action": 0.5})
    args = _grpo_config(cfg, resolve_compute(device="cpu"), "/tmp/unused", [0])
    assert (args.temperature, args.max_steps, args.save_steps) == (0.5, 8, 4)


def test_trl_config_refuses_a_name_trl_does_not_have():
    from dataclasses import dataclass

    from trl import SFTConfig

    from ml.training.trainer_config import trl_config

    @dataclass
    class Settings:
        seed: int = 0
        lora_r: int = 8

    with pytest.raises(ValueError, match="SFTConfig has no fields \\['lora_r'\\]"):
        trl_config(SFTConfig, Settings(), resolve_compute(device="cpu"), "/tmp/unused", ["lora_r"])


def test_trainable_embeddings_one_vocabulary():
    from ml.training.sft_trainer import resolve_trainable_embeddings

    assert resolve_trainable_embeddings("auto", tiny_base=True, pretrained="added") == "all"
    assert resolve_trainable_embeddings("auto", tiny_base=False, pretrained="none") == "none"
    with pytest.raises(ValueError, match="none.*added.*all"):
        resolve_trainable_embeddings("ast", tiny_base=False, pretrained="added")
