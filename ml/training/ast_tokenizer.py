"""Tokenizers for AST text: a base vocabulary (BPE trained on the corpus, or a pretrained one)
with the structural AST tokens appended as added (non-special) tokens, each mapping to one id
strictly above every base id."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ml.tokenizer import train_bpe

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def is_tiny(base_model: str) -> bool:
    return base_model.startswith("tiny:")


def build_ast_tokenizer(
    base_model: str,
    corpus_texts: Iterable[str],
    ast_vocabulary: Sequence[str],
    vocab_size: int = 4000,
    reuse_base_tokens: bool = False,
    **bpe_options,
) -> PreTrainedTokenizerFast:
    """Base tokenizer + the AST vocabulary appended with ``add_tokens``.

    ``reuse_base_tokens``: a token the base already holds as one atomic id keeps that id instead of being appended
    (Qwen2.5-Coder's ``<|fim_prefix|>``...: its FIM format is the one the model was trained on); the reused tokens
    are listed in ``init_kwargs["astforge_reused_tokens"]`` and sit below the base size, the appended ones above.

    ``tiny:<arch>``: byte-level BPE trained on ``corpus_texts``. Anything else: ``AutoTokenizer``
    (hub id or local folder). The base vocabulary size (incl. base special tokens) is recorded in
    ``tokenizer.init_kwargs["astforge_base_vocab_size"]`` so it survives save/reload. ``bpe_options`` go to
    :func:`ml.tokenizer.train_bpe` (``split``, ``max_token_length``, ``min_frequency``).
    """
    if is_tiny(base_model):
        # The BPE trainer must not learn merges across AST tokens: strip them from the corpus text.
        vocab = list(dict.fromkeys(ast_vocabulary))
        texts = _strip_structural(corpus_texts, vocab)
        raw = train_bpe(texts, vocab_size=vocab_size, special_tokens=(EOS, PAD), **bpe_options)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=raw,
            eos_token=EOS,
            bos_token=EOS,
            pad_token=PAD,
            unk_token=None,
            model_max_length=1 << 20,
        )
        tok.padding_side = "right"
        tok.init_kwargs["astforge_base_model"] = base_model  # saved: load_tokenizer knows a trained BPE by it
    else:
        tok = AutoTokenizer.from_pretrained(base_model)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    base_size = len(tok)
    wanted = list(dict.fromkeys(ast_vocabulary))
    reused = [t for t in wanted if _atomic_in(tok, t)] if reuse_base_tokens else []
    new = [t for t in wanted if t not in reused and t not in tok.get_vocab()]
    tok.add_tokens(new, special_tokens=False)
    tok.init_kwargs["astforge_base_vocab_size"] = base_size
    if reused:
        tok.init_kwargs["astforge_reused_tokens"] = reused
    assert_disjoint(tok, [t for t in wanted if t not in reused])
    return tok


def _atomic_in(tokenizer, token: str) -> bool:
    """Whether the base already encodes ``token`` as the one id its vocabulary gives it."""
    vocab = tokenizer.get_vocab()
    return token in vocab and tokenizer.encode(token, add_special_tokens=False) == [vocab[token]]


def _strip_structural(texts: Iterable[str], vocab: Sequence[str]) -> Iterable[str]:
    import re

    if not vocab:
        yield from texts
        return
    pat = re.compile("|".join(re.escape(t) for t in sorted(vocab, key=len, reverse=True)))
    for t in texts:
        yield pat.sub(" ", t)


def base_vocab_ids(tokenizer) -> set[int]:
    """Ids of the base vocabulary: everything except the tokens added after the base (non-special)."""
    vocab = tokenizer.get_vocab()
    base_size = tokenizer.init_kwargs.get("astforge_base_vocab_size")
    if base_size is not None:
        return {i for i in vocab.values() if i < base_size}
    added = set(tokenizer.get_added_vocab())
    specials = set(tokenizer.all_special_tokens)
    return {i for t, i in vocab.items() if t not in added or t in specials}


def ast_ids(tokenizer, ast_vocabulary: Sequence[str]) -> list[int]:
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in dict.fromkeys(ast_vocabulary)]


def ast_id_range(tokenizer, ast_vocabulary: Sequence[str]) -> tuple[int, int]:
    """(lowest, highest) id of the AST tokens (inclusive)."""
    ids = ast_ids(tokenizer, ast_vocabulary)
    if not ids:
        raise ValueError("empty AST vocabulary")
    return min(ids), max(ids)


def assert_disjoint(tokenizer, ast_vocabulary: Sequence[str]) -> None:
    """Raise ``ValueError`` if an AST token does not encode to exactly one id, or if any AST id is
    not strictly above every base id (the base vocabulary incl. its special tokens)."""
    vocab = tokenizer.get_vocab()
    bad = []
    for t in dict.fromkeys(ast_vocabulary):
        ids = tokenizer.encode(t, add_special_tokens=False)
        if len(ids) != 1 or t not in vocab or vocab[t] != ids[0]:
            bad.append((t, ids))
    if bad:
        raise ValueError(f"{len(bad)} AST tokens do not map to exactly one id, e.g. {bad[:5]}")
    base = base_vocab_ids(tokenizer)
    ids = ast_ids(tokenizer, ast_vocabulary)
    if base and ids:
        top = max(base)
        overlap = sorted(i for i in ids if i <= top)
        if overlap:
            inv = {i: t for t, i in vocab.items()}
            raise ValueError(
                f"{len(overlap)} AST token ids overlap the base vocabulary (max base id {top}), "
                f"e.g. {[(inv.get(i), i) for i in overlap[:5]]}"
            )
