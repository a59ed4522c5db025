"""BPE tokenizers trained on the corpus (the ``tokenizers`` library), with AST tokens as added tokens."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = 8000,
    special_tokens: Sequence[str] = ("<|endoftext|>", "<|pad|>"),
    min_frequency: int = 2,
    split: str = "words",
    max_token_length: int | None = None,
) -> Tokenizer:
    """A byte-level BPE tokenizer trained on ``texts`` (no hub download: the corpus is the data).

    ``split="words"``: GPT-2 style pre-tokenization (letters, digits and punctuation runs apart).
    ``split="whitespace"``: merges may cross punctuation, only whitespace separates; with ``max_token_length``
    this learns JSON pieces such as ``","value":"`` (DSL prompts and completions get about 40% shorter)."""
    from tokenizers import Regex

    tok = Tokenizer(models.BPE())
    if split == "words":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif split == "whitespace":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\s+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif split == "wordpunct":  # letters/digits, punctuation runs and whitespace apart: values tokenize alike
        tok.pre_tokenizer = pre_tokenizers.Sequence([  # in a request and in a JSON completion
            pre_tokenizers.Split(Regex(r"[A-Za-z0-9_]+|[^\sA-Za-z0-9_]+|\s+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        raise ValueError(f"split must be 'words', 'whitespace' or 'wordpunct', not {split!r}")
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        max_token_length=max_token_length,
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
