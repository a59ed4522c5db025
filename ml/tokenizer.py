"""BPE tokenizers trained on the corpus (the ``tokenizers`` library), with AST tokens as added tokens."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = 8000,
    special_tokens: Sequence[str] = ("<|endoftext|>", "<|pad|>"),
    min_frequency: int = 2,
) -> Tokenizer:
    """A byte-level BPE tokenizer trained on ``texts`` (no hub download: the corpus is the data)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def add_structural_tokens(tok: Tokenizer, tokens: Sequence[str]) -> int:
    """Append AST tokens after the BPE vocabulary; each becomes one id, matched before BPE runs."""
    return tok.add_tokens([AddedToken(t, single_word=False, normalized=False, special=False) for t in tokens])


def count_tokens(tok: Tokenizer, texts: Sequence[str]) -> int:
    return sum(len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False))
