"""The graph_repair recipe, step by step, and where each step lives; the asset bodies and
``bench/graph_repair.py`` call these functions.

1. rows (:mod:`ml.graph_repair.rows`): ``graph_rows`` (graphs of code units, split decided once by group key),
   ``repair_rows`` (graded corruptions, inheriting the split);
2. training (:func:`fit_denoiser` here: vocabulary → slot priors → model → ``train_denoiser`` of
   :mod:`ml.graph_repair.training`, which also saves and loads the result);
3. repair (:mod:`ml.graph_repair.decoding`: one-shot and iterative, grammar mask, Z3 resampling);
4. scoring and evaluation (:mod:`ml.graph_repair.evaluation`), against the slot-frequency baseline
   (:mod:`ml.graph_repair.baseline`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ml.graph_repair.backend import backend_for
from ml.graph_repair.grammar import Vocabulary
from ml.graph_repair.models import count_parameters
from ml.graph_repair.rows import graph_of, slot_priors
from ml.graph_repair.training import TrainSettings, build_model, train_denoiser


@dataclass
class FittedDenoiser:
    """A trained denoiser with the vocabulary and slot priors it was built on. ``stats``: ``train_denoiser``'s
    (``loss_curve``, ``train_s``, ``final_loss``)."""

    kind: str
    model: nn.Module
    vocab: Vocabulary
    priors: dict[tuple[str, str], list[int]]
    params: int
    stats: dict


def fit_denoiser(kind: str, train_rows: Sequence[dict], settings: TrainSettings, *, hidden: int, depth: int = 2,
                 max_vocab: int = 4000, target_params: int | None = None, device: torch.device | str | None = None,
                 log: Callable[[str], None] = print, language: str = "python") -> FittedDenoiser:
    """Vocabulary and slot priors of the clean graphs of ``train_rows`` (repair rows, one graph per ``unit_id``),
    a ``kind`` model seeded with ``settings.seed`` (the transformer sized to ``target_params``), trained on
    ``train_rows`` with ``settings``. ``language``: whose graphs the rows hold (``ml.graph_repair.backend``)."""
    clean = {r["unit_id"]: graph_of(r, "clean_") for r in train_rows}
    vocab = Vocabulary.build([g.labels for g in clean.values()], max_size=max_vocab, language=language,
                             node_labels=backend_for(language).node_labels)
    priors = slot_priors(clean.values(), vocab)
    torch.manual_seed(settings.seed)
    model = build_model(kind, len(vocab), hidden, depth, target_params, language)
    if device is not None:
        model = model.to(device)
    params = count_parameters(model)
    log(f"{params:,} parameters, {settings.steps} steps of {settings.batch_size} over {len(train_rows)} rows")
    stats = train_denoiser(model, train_rows, vocab, settings, log=log)
    return FittedDenoiser(kind, model, vocab, priors, params, stats)
