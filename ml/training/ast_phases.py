"""The AST-first training recipe's data and settings: Phase 1 texts, Phase 2 pairs, and the mapping of a plain
settings mapping (an asset's ``dg.Config``, a bench's arguments) onto :class:`ml.training.sft_trainer.PhaseConfig`.

The assets, ``ast_eval`` and the benches all call these, and all of them read the ``split`` column that
``ast_corpus`` / ``nl_ast_pairs`` decided once: training on ``train``, its validation loss on ``dev``, the evaluation on
``test``. There is no fraction to set here, so no two steps can disagree about what was held out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ml.dataset import evaluation_rows, split_rows
from ml.training.sft_trainer import PhaseConfig, resolve_trainable_embeddings
from ml.training.trainer_config import settings_into

# Settings that choose rows, not trainer behaviour (see phase1_split / phase2_pairs).
DATA_SETTINGS = frozenset({"max_eval_rows"})
# Settings whose name differs from PhaseConfig's; every other key must be a PhaseConfig field.
_RENAMED = {"batch_size": ("per_device_train_batch_size", "per_device_eval_batch_size")}


def phase_config(settings: Mapping[str, Any], tiny_base: bool = False) -> PhaseConfig:
    """``PhaseConfig`` from ``settings`` (e.g. ``config.model_dump()``). ``batch_size`` sets the train and eval batch
    sizes; ``trainable_embeddings: auto`` (or absent) means "all" for a random-init ``tiny:`` base and "added" (the
    AST rows) for a pretrained one. A key that is neither a data setting nor a PhaseConfig field is an error, never
    ignored."""
    embeddings = resolve_trainable_embeddings(settings.get("trainable_embeddings", "auto"), tiny_base=tiny_base,
                                              pretrained="added")
    return settings_into(PhaseConfig, settings, recipe_settings=DATA_SETTINGS, renamed=_RENAMED,
                         trainable_embeddings=embeddings)


def phase1_texts(tokenizer, rows: Sequence[Mapping], max_length: int) -> tuple[list[str], int]:
    """Phase 1 sequences: EOS marks the start of a tree (so sampling has a prompt), and sequences
    that would be cut are dropped — a tree cut short never teaches the model to close it."""
    texts = [tokenizer.eos_token + r["ast_text"] for r in rows]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    kept = [t for t, n in zip(texts, lengths) if n < max_length]
    return kept, len(texts) - len(kept)


def phase1_eval_texts(tokenizer, rows: Sequence[Mapping], split: str, max_length: int,
                      max_rows: int) -> list[str]:
    """Phase 1 sequences of ``split`` to score: one per group key, in ``id`` order, those that fit in
    ``max_length``, at most ``max_rows``."""
    return phase1_texts(tokenizer, evaluation_rows(rows, split), max_length)[0][:max_rows]


def phase1_split(tokenizer, rows: Sequence[Mapping], max_length: int,
                 max_eval_rows: int) -> tuple[list[str], list[str], int]:
    """``(train texts, dev texts, train rows dropped as too long)`` of ``ast_corpus`` rows."""
    texts, dropped = phase1_texts(tokenizer, split_rows(rows, "train"), max_length)
    return texts, phase1_eval_texts(tokenizer, rows, "dev", max_length, max_eval_rows), dropped


def phase2_pairs(rows: Sequence[Mapping],
                 max_eval_rows: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train pairs, dev pairs)`` of ``(docstring, AST text)`` from ``nl_ast_pairs`` rows."""
    train, dev = split_rows(rows, "train"), evaluation_rows(rows, "dev")[:max_eval_rows]
    return [(r["nl"], r["ast_text"]) for r in train], [(r["nl"], r["ast_text"]) for r in dev]
