"""Evaluating one arm's models: held-out bits per source character, docstring → code on test functions, and
HumanEval pass@1 with the tests run in :mod:`ml.sandbox`. The recipe (:mod:`ml.ast_vs_text.recipe`) calls these."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ml.ast_vs_text.humaneval import HumanEvalTask, program, truncate_text_completion
from ml.ast_vs_text.metrics import bits_per_char, score_source, sequence_nats
from ml.evaluation.ast_metrics import PairScore, score_prediction
from ml.evaluation.lm import left_padded_batches
from ml.languages import get_language, grammar_processors
from ml.sandbox import run_many

TEXT, AST = "text", "ast"


def representation(arm: str, row: dict) -> str:
    """What an arm's model reads of a function: its renamed source without docstring, or its compact AST text."""
    if arm == TEXT:
        return row["target_code"] if "target_code" in row else row["renamed_code"]
    if arm == AST:
        return row["ast_text"]
    raise ValueError(f"unknown arm {arm!r}: 'text' or 'ast'")


def source_chars(row: dict) -> int:
    """The denominator of bits per character: the characters of the function's source text (the text arm's
    sequence), the same for both arms."""
    return len(row["target_code"] if "target_code" in row else row["renamed_code"])


def heldout_bits(model, tokenizer, arm: str, rows: Sequence[dict], max_length: int,
                 prompts: Sequence[str] | None = None) -> list[float]:
    """Bits per source character of each row's function under ``model`` (after its docstring prompt when
    ``prompts`` are given): the sequence as in training, EOS first for the code-only phase."""
    texts = [representation(arm, r) for r in rows]
    if prompts is None:
        texts = [tokenizer.eos_token + t for t in texts]
    nats = sequence_nats(model, tokenizer, texts, prompts, max_length)
    return [bits_per_char(n, source_chars(r)) for (n, _), r in zip(nats, rows)]


@torch.no_grad()
def top_level_stopping(tokenizer, prompt_width: int):
    """A ``transformers.StoppingCriteria`` marking a row done once its new text (after the ``prompt_width``
    left-padded prompt columns) reaches a line that starts at column 0: what :func:`truncate_text_completion` cuts
    away anyway, so stopping there changes no answer and saves the batch the rest of its token budget."""
    from transformers import StoppingCriteria

    class TopLevelLine(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for row in range(input_ids.shape[0]):
                new = tokenizer.decode(input_ids[row, prompt_width:].tolist(), skip_special_tokens=True)
                done[row] = truncate_text_completion(new) != new
            return done

    return TopLevelLine()


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, prefix_lengths: Sequence[int] = (),
             grammar: Callable[[int], Callable[[list[int]], object]] | None = None, batch_size: int = 8,
             stop_at_top_level: bool = False) -> list[str]:
    """Greedy continuations of ``prompts``. With ``grammar`` (a length budget -> processor factory), each row is
    constrained from where its tree starts: the last ``prefix_lengths[i]`` tokens of prompt ``i`` are the start of
    the tree, and the grammar's budget counts them (the batch's shortest prefix: no row is promised more room than
    ``max_new_tokens`` gives it). ``stop_at_top_level``: a row ends at its first column-0 line
    (:func:`top_level_stopping`)."""
    from transformers import LogitsProcessorList

    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    for i, enc, width in left_padded_batches(tokenizer, prompts, batch_size, device):
        rows = enc["input_ids"].shape[0]
        prefixes = [prefix_lengths[i + r] if prefix_lengths else 0 for r in range(rows)]
        processors = LogitsProcessorList()
        if grammar is not None:
            processors.append(grammar(max_new_tokens + min(prefixes))([width - n for n in prefixes]))
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, top_k=None, top_p=None,
                             temperature=None, logits_processor=processors, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id,
                             stopping_criteria=[top_level_stopping(tokenizer, width)] if stop_at_top_level else None)
        out += [tokenizer.decode(row, skip_special_tokens=True) for row in gen[:, width:]]
    return out


def grammar_for(language: str, tokenizer, model) -> Callable[[int], Callable[[list[int]], object]] | None:
    """length budget -> the slice's grammar constraint's processor factory (the automaton and its masks built
    once); None where the slice has no grammar automaton."""
    spec = get_language(language)
    if spec.grammar_automaton is None:
        return None
    vocab_size = model.get_output_embeddings().weight.shape[0]
    automaton = spec.grammar_automaton(tokenizer, vocab_size)
    return lambda budget: grammar_processors(automaton, tokenizer, vocab_size, budget)


@dataclass
class Answers:
    """One decoding setting's answers to the test docstrings and to HumanEval."""

    nl2code: list[str]  # decoded source (None-safe: "" when the tree does not decode)
    scores: list[PairScore]
    humaneval_passed: list[bool]
    humaneval_sources: list[str | None]


def _decoded(arm: str, text: str, language: str, prefix: str = "") -> str | None:
    """Source of an answer: the text arm's text, or the AST arm's tree decoded (None when it does not decode)."""
    if arm == TEXT:
        return prefix + text
    judged = get_language(language).judge(prefix + text)
    return judged.source if judged.valid else None


def answer(model, tokenizer, arm: str, pairs: Sequence[dict], tasks: Sequence[HumanEvalTask], *, separator: str,
           max_new_tokens: int, constrained: bool, language: str = "python", workers: int = 2,
           timeout_s: float = 10.0) -> Answers:
    """Greedy docstring → code on test ``pairs`` and HumanEval ``tasks`` (Python only); the tests run in the
    sandbox. ``constrained``: the AST arm decodes under the slice's grammar automaton."""
    grammar = grammar_for(language, tokenizer, model) if constrained else None
    if constrained and grammar is None:
        raise ValueError(f"the {language} slice has no grammar automaton to constrain decoding with")
    outputs = generate(model, tokenizer, [p["nl"] + separator for p in pairs], max_new_tokens, grammar=grammar)
    if arm == TEXT:
        scores = [score_source(o, p["ast_text"], language) for o, p in zip(outputs, pairs)]
    else:
        scores = [score_prediction(language, o, p["ast_text"]) for o, p in zip(outputs, pairs)]
    sources = [s.prediction_source or (o if arm == TEXT else "") for s, o in zip(scores, outputs)]

    prefixes = [t.text_prefix if arm == TEXT else t.ast_prefix for t in tasks]
    prompts = [t.docstring + separator + prefix for t, prefix in zip(tasks, prefixes)]
    lengths = [len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) for prefix in prefixes]
    # batches of similar prefix length: the grammar's budget is set by a batch's shortest prefix
    order = sorted(range(len(tasks)), key=lambda k: lengths[k])
    # the text arm's HumanEval body ends at the next top-level line (Codex's stop sequences): stop generating there
    done = generate(model, tokenizer, [prompts[k] for k in order], max_new_tokens, [lengths[k] for k in order],
                    grammar, stop_at_top_level=arm == TEXT) if tasks else []
    completions = [""] * len(tasks)
    for k, text in zip(order, done):
        completions[k] = text
    if arm == TEXT:
        completions = [truncate_text_completion(c) for c in completions]
    he_sources = [_decoded(arm, c, language, prefix) for c, prefix in zip(completions, prefixes)]
    programs = [program(t, s) for t, s in zip(tasks, he_sources)]
    runnable = [i for i, p in enumerate(programs) if p is not None]
    results = run_many([programs[i] for i in runnable], workers=workers, timeout_s=timeout_s) if runnable else []
    passed = [False] * len(tasks)
    for i, r in zip(runnable, results):
        passed[i] = r.ok
    return Answers(sources, scores, passed, he_sources)

