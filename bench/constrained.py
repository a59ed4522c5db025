"""Constrained sampling benchmark: validity of sampled trees with / without the grammar, and the
per-token cost of the mask.

    python bench/constrained.py [--language python|javascript|java] [--n 32] [--max-new-tokens 256]
                                [--train-steps 40] [--functions 300]

A byte-level BPE tokenizer and a tiny Qwen2 (random init, seed 0) are built on functions of the
slice's default corpus (Python: the stdlib; JavaScript: npm; Java: the JDK sources) encoded with the
compact codec, optionally trained for a few steps, and sampled from the start prompt (Python:
``<Module>``; tree-sitter slices: EOS, as ``ast_eval`` samples). ``valid_*`` = the fraction of samples
the slice's judge accepts (Python: decodes and compiles; JS/Java: decodes and re-parses without a
syntax error). The JS/Java grammar reads the committed production tables (built from the
``table_file`` half of the corpus files by scripts/build_grammar_tables.py).
``mask_us_*`` are per token and per row: advancing the grammar state by the newest token plus
fetching the mask (``GrammarLogitsProcessor.timings_us``), after a warm-up run that fills the
mask cache (``mask_us_p50_active``: replaying the samples, rows still writing only). Last line:
{"tokens", "mask_us_p50", "mask_us_p99", "valid_constrained",
"valid_unconstrained", "samples", ...}.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _common import emit  # noqa: E402

from ml.codec import python_ast as pa  # noqa: E402
from ml.codec.tokens import SEP, tokens_to_text  # noqa: E402
from ml.constrained import GrammarLogitsProcessor, PythonAstGrammar  # noqa: E402
from ml.constrained.treesitter_grammar import TreeSitterGrammar  # noqa: E402
from ml.corpus.ingest import extract_units, read_files  # noqa: E402
from ml.languages import SLICES, get_language  # noqa: E402
from ml.training.ast_tokenizer import EOS, build_ast_tokenizer  # noqa: E402
from ml.training.base_model import build_base_model  # noqa: E402


def stdlib_functions(limit: int) -> list[ast.Module]:
    """Functions of the stdlib slice, cut by the project's own extractor, each wrapped in a Module."""
    spec = get_language("python").default_source()
    units, _ = extract_units("python", read_files("python", spec, limit=max(20, limit // 10)).rows)
    return [ast.parse(u.code) for u in units[:limit]]


def slice_texts(language: str, limit: int) -> list[str]:
    """Compact AST texts of units of a tree-sitter slice's default corpus."""
    spec = get_language(language)
    units, _ = extract_units(language, read_files(language, spec.default_source(), limit=max(20, limit // 5)).rows)
    texts = []
    for u in units[:limit]:
        try:
            texts.append(tokens_to_text(spec.codec.encode(u.code, "compact")))
        except ValueError:
            continue
    return texts



def train(model, tok, texts: list[str], steps: int, seq_len: int = 256, batch: int = 8) -> float:
    if steps <= 0:
        return float("nan")
    ids = [tok.encode(t, add_special_tokens=False)[: seq_len - 1] + [tok.eos_token_id] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    g = torch.Generator().manual_seed(0)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        pick = torch.randint(len(ids), (batch,), generator=g).tolist()
        rows = [ids[i] for i in pick]
        width = max(len(r) for r in rows)
        x = torch.full((batch, width), tok.pad_token_id)
        labels = torch.full((batch, width), -100)
        for b, r in enumerate(rows):
            x[b, : len(r)] = torch.tensor(r)
            labels[b, : len(r)] = torch.tensor(r)
        loss = model(input_ids=x, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return float(loss)


def sample(model, tok, n: int, max_new: int, processor=None, seed: int = 0, start_token: str = "<Module>"):
    start = tok.convert_tokens_to_ids(start_token)
    prompt = torch.tensor([[start]] * n)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new, do_sample=True,
            logits_processor=[processor] if processor is not None else None,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
    drop = {tok.eos_token_id, tok.pad_token_id}
    texts, count, rows = [], 0, []
    for row in out.tolist():
        ids = []
        for t in row[1:]:
            if t in drop:
                break
            ids.append(t)
        count += len(ids)  # generated, without the prompt
        rows.append([start] + ids if start_token == "<Module>" else ids)
        texts.append(tok.decode([start] + ids) if start_token == "<Module>" else tok.decode(ids))
    return texts, count, rows


def replay_us(grammar, rows: list[list[int]]) -> list[float]:
    """Microseconds of advance + mask per token, replaying the constrained samples' ids on the warm grammar."""
    out = []
    for ids in rows:
        state = grammar.initial_state(None)  # Python's rows start with <Module>, which its grammar reads
        for i in ids:
            t0 = time.perf_counter()
            state = grammar.advance(state, i)
            grammar.allowed(state)
            out.append((time.perf_counter() - t0) * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--language", default="python", choices=SLICES)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--functions", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    language = args.language
    spec = get_language(language)

    if language == "python":
        texts = [tokens_to_text(pa.encode_tree(m)) for m in stdlib_functions(args.functions)]
        vocab, start_token, prompt_length = pa.structural_vocabulary(), "<Module>", 0
    else:  # the tree-sitter grammar starts after the prompt: sampled from EOS, as ast_eval does
        texts = slice_texts(language, args.functions)
        vocab, start_token, prompt_length = [*spec.codec.vocabulary(), SEP], EOS, 1
    tok = build_ast_tokenizer("tiny:qwen2", texts, vocab, vocab_size=2000)
    model = build_base_model("tiny:qwen2", tok, seed=0)
    t0 = time.perf_counter()
    loss = train(model, tok, texts, args.train_steps)
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    if language == "python":
        grammar = PythonAstGrammar(tok, vocab_size=model.config.vocab_size)
    else:
        grammar = TreeSitterGrammar(tok, language, vocab_size=model.config.vocab_size)
    build_s = time.perf_counter() - t0

    def processor():
        return GrammarLogitsProcessor(
            grammar, prompt_length=prompt_length, eos_token_id=tok.eos_token_id, vocab_size=model.config.vocab_size,
            max_new_tokens=args.max_new_tokens + 1 - prompt_length, pad_token_id=tok.pad_token_id,
        )

    def run(n, max_new, proc, seed):
        return sample(model, tok, n, max_new, proc, seed=seed, start_token=start_token)

    t0 = time.perf_counter()
    run(args.n, args.max_new_tokens, processor(), 1)  # warm-up: fills the mask cache
    warm_s = time.perf_counter() - t0
    proc = processor()
    t0 = time.perf_counter()
    constrained, tokens, rows = run(args.n, args.max_new_tokens, proc, 0)
    constrained_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    unconstrained, _, _ = run(args.n, args.max_new_tokens, None, 0)
    unconstrained_s = time.perf_counter() - t0

    times = sorted(proc.timings_us)
    active = sorted(replay_us(grammar, rows))
    ok_c = sum(spec.judge(t).valid for t in constrained)
    ok_u = sum(spec.judge(t).valid for t in unconstrained)
    for t in constrained[:2]:
        source = spec.judge(t).source or "(invalid) " + t
        print("sample:", source[:400].replace("\n", "\n        "))
    emit({
        "language": language,
        "tokens": tokens,
        "mask_us_p50": round(times[len(times) // 2], 2),
        "mask_us_p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
        # per token of a row still writing its tree (the figures above also count rows that already ended)
        "mask_us_p50_active": round(active[len(active) // 2], 2),
        "valid_constrained": round(ok_c / len(constrained), 4),
        "valid_unconstrained": round(ok_u / len(unconstrained), 4),
        "samples": len(constrained),
        "train_steps": args.train_steps,
        "train_loss": round(loss, 3),
        "train_s": round(train_s, 1),
        "grammar_build_s": round(build_s, 2),
        "warmup_s": round(warm_s, 1),
        "masks_cached": len(grammar._masks),
        "constrained_s": round(constrained_s, 1),
        "unconstrained_s": round(unconstrained_s, 1),
    })


if __name__ == "__main__":
    main()
