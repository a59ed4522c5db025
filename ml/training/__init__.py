"""Training: AST tokenizers, base models, TRL SFT phases and LoRA SFT, DPO, length-grouped batching, curves.
Models load through ``ml.models.loading``.

Pure library (no dagster). The names below are loaded lazily, so importing ``ml.training`` does
not import torch/transformers/trl until one of them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "assert_disjoint": "ml.training.ast_tokenizer",
    "ast_id_range": "ml.training.ast_tokenizer",
    "build_ast_tokenizer": "ml.training.ast_tokenizer",
    "TINY_CONFIGS": "ml.training.base_model",
    "build_base_model": "ml.training.base_model",
    "save_base_model": "ml.training.base_model",
    "LengthGroupedSampler": "ml.training.batching",
    "length_grouped_batches": "ml.training.batching",
    "real_token_fraction": "ml.training.batching",
    "plot_curves": "ml.training.curves",
    "PhaseConfig": "ml.training.sft_trainer",
    "TrainResult": "ml.training.sft_trainer",
    "train_phase1": "ml.training.sft",
    "train_phase2": "ml.training.sft",
    "train_lora_sft": "ml.training.lora_sft",
    "continue_lora_sft": "ml.training.lora_sft",
    "DPOSettings": "ml.training.dpo",
    "precision_args": "ml.training.glue",
    "log_callback": "ml.training.glue",
    "train_dpo": "ml.training.dpo",
}

__all__ = [
    "TINY_CONFIGS",
    "LengthGroupedSampler",
    "PhaseConfig",
    "TrainResult",
    "assert_disjoint",
    "ast_id_range",
    "build_ast_tokenizer",
    "build_base_model",
    "length_grouped_batches",
    "plot_curves",
    "real_token_fraction",
    "save_base_model",
    "train_phase1",
    "train_phase2",
]

if TYPE_CHECKING:  # pragma: no cover
    from ml.training.ast_tokenizer import assert_disjoint, ast_id_range, build_ast_tokenizer
    from ml.training.base_model import TINY_CONFIGS, build_base_model, save_base_model
    from ml.training.batching import LengthGroupedSampler, length_grouped_batches, real_token_fraction
    from ml.training.curves import plot_curves
    from ml.training.sft import train_phase1, train_phase2
    from ml.training.sft_trainer import PhaseConfig, TrainResult


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ml.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
