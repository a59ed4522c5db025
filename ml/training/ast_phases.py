"""The AST-first training recipe's data and settings: Phase 1 texts, Phase 2 pairs, and the mapping of a plain
settings mapping (an asset's ``dg.Config``, a bench's arguments) onto :class:`ml.training.sft.PhaseConfig`.

The assets, ``ast_eval`` and the benches all call these, so every one of them trains and scores the same split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ml.dataset import split_heldout

if TYPE_CHECKING:  # pragma: no cover
    from ml.training.sft import PhaseConfig

# Settings that choose rows, not trainer behaviour (see phase1_split / phase2_pairs).
DATA_SETTINGS = frozenset({"heldout_fraction", "max_eval_rows"})
# Settings whose name differs from PhaseConfig's; every other key must be a PhaseConfig field.
_RENAMED = {"batch_size": ("per_device_train_batch_size", "per_device_eval_batch_size")}


def phase_config(settings: Mapping[str, Any], tiny_base: bool = False) -> PhaseConfig:
    """``PhaseConfig`` from ``settings`` (e.g. ``config.model_dump()``). ``batch_size`` sets the train and eval batch
    sizes; ``trainable_embeddings: auto`` (or absent) means "all" for a random-init ``tiny:`` base and "ast" for a
    pretrained one. A key that is neither a data setting nor a PhaseConfig field is an error, never ignored."""
    from ml.training.sft import PhaseConfig

    known = {f.name for f in fields(PhaseConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in settings.items():
        if key in DATA_SETTINGS:
            continue
        names = _RENAMED.get(key, (key,))
        missing = [n for n in names if n not in known]
        if missing:
            raise ValueError(f"unknown phase setting {key!r}: PhaseConfig has no field {missing[0]!r}")
        kwargs.update(dict.fromkeys(names, value))
    if kwargs.get("trainable_embeddings", "auto") == "auto":
        kwargs["trainable_embeddings"] = "all" if tiny_base else "ast"
    return PhaseConfig(**kwargs)


def phase1_texts(tokenizer, rows: Sequence[Mapping], max_length: int) -> tuple[list[str], int]:
    """Phase 1 sequences: EOS marks the start of a tree (so sampling has a prompt), and sequences
    that would be cut are dropped — a tree cut short never teaches the model to close it."""
    texts = [tokenizer.eos_token + r["ast_text"] for r in rows]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    kept = [t for t, n in zip(texts, lengths) if n < max_length]
    return kept, len(texts) - len(kept)


def phase1_heldout_texts(tokenizer, rows: list[dict], heldout_fraction: float, max_length: int,
                         max_rows: int) -> list[str]:
    """The Phase 1 held-out sequences: the first ``max_rows`` held-out rows, those that fit in ``max_length``."""
    _, held = split_heldout(rows, heldout_fraction)
    return phase1_texts(tokenizer, held[:max_rows], max_length)[0]


def phase1_split(tokenizer, rows: list[dict], heldout_fraction: float, max_length: int,
                 max_eval_rows: int) -> tuple[list[str], list[str], int]:
    """``(train texts, held-out texts, train rows dropped as too long)`` of ``ast_corpus`` rows."""
    train, _ = split_heldout(rows, heldout_fraction)
    texts, dropped = phase1_texts(tokenizer, train, max_length)
    return texts, phase1_heldout_texts(tokenizer, rows, heldout_fraction, max_length, max_eval_rows), dropped


def phase2_pairs(rows: list[dict], heldout_fraction: float,
                 max_eval_rows: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train pairs, held-out pairs)`` of ``(docstring, AST text)`` from ``nl_ast_pairs`` rows."""
    train, held = split_heldout(rows, heldout_fraction)
    return [(r["nl"], r["ast_text"]) for r in train], [(r["nl"], r["ast_text"]) for r in held][:max_eval_rows]
