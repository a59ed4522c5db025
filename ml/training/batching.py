"""Length-grouped batching: sort by length inside mega-batches, cut into batches, shuffle the batches.

Sequences of similar length share a batch, so padding to the longest one in the batch wastes little
compute, while shuffling whole batches keeps the order random from step to step. Used by the
trainer in :mod:`ml.training.sft_trainer` as its train sampler (the ``SFTTrainer._get_train_sampler`` hook
of transformers 5 / TRL 1.16), and by ``bench/train_throughput.py``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence

from torch.utils.data import Sampler


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, mega_batch_mult: int = 64, seed: int = 0
) -> list[list[int]]:
    """Indices cut into batches of ``batch_size`` (the last may be smaller): shuffle, split into
    mega-batches of ``mega_batch_mult * batch_size``, sort each by length (longest first), cut, then
    shuffle the full batches. The single partial batch, if any, comes last, so a ``DataLoader``
    that re-chunks the flat order at ``batch_size`` sees exactly these batches."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = max(1, mega_batch_mult) * batch_size
    full: list[list[int]] = []
    partial: list[int] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        for b in range(0, len(chunk), batch_size):
            batch = chunk[b : b + batch_size]
            (full.append(batch) if len(batch) == batch_size else partial.extend(batch))
    rng.shuffle(full)
    if partial:  # only the last mega-batch can be short (mega is a multiple of batch_size)
        full.append(partial)
    return full


def random_batches(lengths: Sequence[int], batch_size: int, seed: int = 0) -> list[list[int]]:
    """The naive baseline: a random permutation cut into batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def real_token_fraction(batches: Iterable, lengths: Sequence[int] | None = None) -> float:
    """Real (non-pad) tokens / padded tokens over ``batches``, each padded to its longest member.

    A batch is a list of indices into ``lengths``, a list of lengths (when ``lengths`` is None), or a
    collated dict holding an ``attention_mask`` tensor."""
    real = padded = 0
    for batch in batches:
        if isinstance(batch, dict):
            mask = batch["attention_mask"]
            real += int(mask.sum())
            padded += int(mask.numel())
            continue
        lens = [lengths[i] for i in batch] if lengths is not None else list(batch)
        if lens:
            real += sum(lens)
            padded += max(lens) * len(lens)
    return real / padded if padded else 1.0


class LengthGroupedSampler(Sampler[int]):
    """A ``Sampler`` yielding the flat order of :func:`length_grouped_batches` (new order each epoch)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, mega_batch_mult: int = 64, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.mega_batch_mult = mega_batch_mult
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        return length_grouped_batches(
            self.lengths, self.batch_size, self.mega_batch_mult, self.seed + self.epoch
        )

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return len(self.lengths)
