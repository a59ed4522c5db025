"""The slot-frequency baseline: the repair a model must beat without learning anything."""

from __future__ import annotations

import torch
from torch import nn

from ml.graph_repair.asg import HOLE, MASK, Asg
from ml.graph_repair.grammar import Vocabulary


class SlotFrequency(nn.Module):
    """The baseline without learning: a kept label stays, an unknown one takes its slot's most frequent label in
    the training graphs (``slot_priors``). No parameters; the decoders treat it like a model."""

    def __init__(self, vocab: Vocabulary, priors: dict[tuple[str, str], list[int]]) -> None:
        super().__init__()
        self.vocab, self.priors = vocab, priors

    def logits(self, graphs: list[Asg], vocab: Vocabulary) -> torch.Tensor:
        """Logits [total nodes, vocab] (the denoisers' interface; the priors were built on ``vocab`` already)."""
        return self(graphs)

    def forward(self, graphs: list[Asg]) -> torch.Tensor:
        logits = torch.zeros(sum(len(g) for g in graphs), len(self.vocab))
        row = 0
        for g in graphs:
            for i, label in enumerate(g.labels):
                p = g.parents[i]
                ranked = self.priors.get((g.labels[p] if p >= 0 else "", g.fields[i]), [])
                for rank, j in enumerate(ranked):
                    logits[row, j] = 5.0 - 0.1 * rank
                if label not in (MASK, HOLE):
                    logits[row, self.vocab.id(label)] = 10.0
                row += 1
        return logits

