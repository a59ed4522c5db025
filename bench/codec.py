"""Codec benchmark: round trip, speed against the parser, and sequence-length inflation per mode.

    python bench/codec.py --src DIR --lang python [--limit N]

``parse_s`` is the parser alone (``ast.parse``; tree-sitter for JavaScript/Java) over the same
files, in the same run. ``codec_s`` is encode + decode + verify of every unit, starting from its
parsed tree; ``encode_s`` and ``verify_s`` (decode + compare) split it. ``inflation`` is AST
tokens over BPE tokens of the same units with one BPE tokenizer (trained on those units' source,
the codec's structural tokens added as single tokens); it is reported per mode, ``inflation``
being the compact one.
Last line: {"units", "roundtrip_exact", "roundtrip_total", "parse_s", "codec_s", "codec_vs_parse",
"ast_tokens", "bpe_tokens", "inflation", "peak_rss_mb", ...}.
"""

from __future__ import annotations

import argparse
import ast
import random
import time
import warnings

from _common import emit, peak_rss_mb

from ml.codec.tokens import text_to_tokens, tokens_to_text
from ml.corpus.filters import FileFilter
from ml.corpus.ingest import extract_units, read_files
from ml.corpus.sources import parse_spec
from ml.languages import get_language
from ml.tokenizer import add_structural_tokens, count_tokens, train_bpe


def _parse_all(language: str, texts: list[str]) -> float:
    if language == "python":
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for t in texts:
                try:
                    ast.parse(t)
                except SyntaxError:  # counted by the extractor; the parser still did the work
                    pass
        return time.perf_counter() - start
    from ml.codec.treesitter_codec import get_parser

    parser = get_parser(language)
    data = [t.encode("utf-8") for t in texts]
    start = time.perf_counter()
    for d in data:
        parser.parse(d)
    return time.perf_counter() - start


def _roundtrips(language: str, codes: list[str], mode: str) -> tuple[list[list[str]], int, float, float, float]:
    """Encode, decode and verify every unit from its parsed tree.

    Returns (tokens, exact, seconds for all of it, seconds of encoding, seconds of decoding and verifying)."""
    if language == "python":
        from ml.codec import python_ast as pc

        trees = [ast.parse(c) for c in codes]
        encode_s = verify_s = 0.0
        start = time.perf_counter()
        all_tokens, exact = [], 0
        for tree in trees:
            t0 = time.perf_counter()
            tokens = pc.encode_tree(tree, mode)
            t1 = time.perf_counter()
            exact += pc.same_tree(pc.decode_tree(tokens, mode), tree)
            encode_s += t1 - t0
            verify_s += time.perf_counter() - t1
            all_tokens.append(tokens)
        return all_tokens, exact, time.perf_counter() - start, encode_s, verify_s
    from ml.codec.treesitter_codec import TreeSitterCodec, parse_unit_with_source

    codec = TreeSitterCodec(language)
    parsed = [parse_unit_with_source(c, language) for c in codes]
    encode_s = verify_s = 0.0
    start = time.perf_counter()
    all_tokens, exact = [], 0
    for node, src in parsed:
        t0 = time.perf_counter()
        tokens = codec.encode_node(node, src, mode)
        t1 = time.perf_counter()
        # Verifying: decode to text and compare it with the unit's source (whitespace aside). The tokens were just
        # encoded from this tree, so verify_node is handed them as the expected encoding instead of encoding again.
        exact += codec.verify_node(node, src, tokens, mode, expected=tokens)
        encode_s += t1 - t0
        verify_s += time.perf_counter() - t1
        all_tokens.append(tokens)
    return all_tokens, exact, time.perf_counter() - start, encode_s, verify_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default="default", help="a folder, a source spec (dir:, zip:), or 'default'")
    ap.add_argument("--lang", default="python")
    ap.add_argument("--limit", type=int, default=None, help="at most this many files")
    ap.add_argument("--bpe-vocab", type=int, default=16000)
    ap.add_argument("--bpe-sample", type=int, default=20000, help="units used to count BPE tokens")
    args = ap.parse_args()

    lang = get_language(args.lang)
    if args.src == "default":
        spec = lang.default_source()
    elif ":" in args.src and args.src.split(":", 1)[0] in ("dir", "zip", "hf"):
        spec = parse_spec(args.src)
    else:
        spec = parse_spec(f"dir:{args.src}")
    files = read_files(args.lang, spec, args.limit, FileFilter())
    texts = [f.text for f in files.rows if f.text is not None]
    parse_s = _parse_all(args.lang, texts)
    units, _ = extract_units(args.lang, files.rows)
    codes = [u.code for u in units]

    result: dict = {"units": len(codes)}
    per_mode = {}
    for mode in ("compact", "verbose"):
        per_mode[mode] = _roundtrips(args.lang, codes, mode)
    tokens_c, exact_c, codec_s, encode_s, verify_s = per_mode["compact"]
    exact_v = per_mode["verbose"][1]
    result |= {
        "roundtrip_exact": exact_c,
        "roundtrip_total": len(codes),
        "roundtrip_exact_verbose": exact_v,
        "parse_s": round(parse_s, 3),
        "codec_s": round(codec_s, 3),
        "codec_vs_parse": round(codec_s / parse_s, 3) if parse_s else None,
        "codec_s_verbose": round(per_mode["verbose"][2], 3),
        "encode_s": round(encode_s, 3),
        "encode_vs_parse": round(encode_s / parse_s, 3) if parse_s else None,
        "verify_s": round(verify_s, 3),  # decode + compare
        "verify_vs_parse": round(verify_s / parse_s, 3) if parse_s else None,
        "parse_us_per_unit": round(parse_s / len(codes) * 1e6, 1) if codes else None,
    }

    # One BPE tokenizer for both sides: trained on the units' source, AST tokens added on top.
    rng = random.Random(0)
    idx = sorted(rng.sample(range(len(codes)), min(args.bpe_sample, len(codes))))
    tok = train_bpe((codes[i] for i in idx), vocab_size=args.bpe_vocab)
    add_structural_tokens(tok, lang.codec.vocabulary())
    bpe_tokens = count_tokens(tok, [codes[i] for i in idx])
    for mode in ("compact", "verbose"):
        texts_mode = [tokens_to_text(per_mode[mode][0][i]) for i in idx]
        assert all(text_to_tokens(t) == per_mode[mode][0][i] for t, i in zip(texts_mode[:500], idx))
        ast_tokens = count_tokens(tok, texts_mode)
        suffix = "" if mode == "compact" else "_verbose"
        result[f"ast_tokens{suffix}"] = ast_tokens
        result[f"inflation{suffix}"] = round(ast_tokens / bpe_tokens, 3)
    result["bpe_tokens"] = bpe_tokens
    result["peak_rss_mb"] = peak_rss_mb()
    order = ["units", "roundtrip_exact", "roundtrip_total", "parse_s", "codec_s", "codec_vs_parse",
             "ast_tokens", "bpe_tokens", "inflation", "peak_rss_mb"]
    emit({k: result[k] for k in order} | {k: v for k, v in result.items() if k not in order})


if __name__ == "__main__":
    main()
