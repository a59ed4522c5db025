"""The AST-first evaluation recipe: held-out loss of the base and the Phase 1 model, sampled-AST validity with
and without the slice's grammar constraint, and docstring → AST quality of the Phase 2 model.

The ``ast_eval`` asset and the benches call :func:`evaluate_ast_models`; the held-out rows are the ones Phase 1
and Phase 2 training held out (the same ``split_heldout`` by row id).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ml.dataset import split_heldout
from ml.evaluation.ast_metrics import Judged, PairScore, score_prediction
from ml.languages import LanguageSpec
from ml.training.ast_phases import phase1_heldout_texts

ModelLoader = Callable[[], Any]  # -> a causal LM ready for evaluation (e.g. an adapter merged into its base)


@dataclass(frozen=True)
class AstEvalSettings:
    samples: int = 16  # sampled trees per setting, and held-out docstrings scored
    max_new_tokens: int = 256
    heldout_fraction: float = 0.05  # must equal the training phases' own, or "held out" rows were trained on
    max_length: int = 512  # tokens of a held-out sequence in the loss
    seed: int = 0
    max_heldout_texts: int = 64  # held-out functions in the loss
    separator: str = "\n"  # between docstring and AST: PhaseConfig.separator, what Phase 2 trained on


@dataclass
class AstEvalResult:
    metrics: dict[str, float]  # the stable metric names below, rounded to 4 places
    samples: dict[str, list[tuple[str, Judged]]]  # "unconstrained" / "constrained" -> (text, verdict)
    pairs: list[dict]  # the held-out nl_ast_pairs rows scored
    predictions: list[str]
    scores: list[PairScore]

    def report(self, language: str, curve_files: Mapping[str, str]) -> str:
        from ml.evaluation.report import ast_eval_report

        return ast_eval_report(language, self.metrics, self.samples, self.pairs, self.predictions, self.scores,
                               curve_files)


def evaluate_ast_models(
    base_model_loader: ModelLoader,
    phase1_model_loader: ModelLoader,
    phase2_model_loader: ModelLoader,
    tokenizer,
    corpus_rows: list[dict],
    pairs: list[dict],
    spec: LanguageSpec,
    settings: AstEvalSettings,
    on_log: Callable[[str], None] | None = None,
) -> AstEvalResult:
    """Evaluate the untrained base, Phase 1 and Phase 2 models of one slice.

    ``corpus_rows`` are ``ast_corpus`` rows (``id``, ``ast_text``), ``pairs`` are ``nl_ast_pairs`` rows (``id``,
    ``nl``, ``ast_text``). The models are loaded one at a time, in that order, and released before the next.
    Metrics: ``heldout_loss_initial`` (base) and ``heldout_loss_final`` (Phase 1) on held-out functions;
    ``valid_rate_unconstrained`` and, where ``spec.grammar_factory`` exists, ``valid_rate_constrained`` of
    ``settings.samples`` trees sampled from EOS; ``nl2ast_valid_rate``, ``nl2ast_exact_match`` and
    ``nl2ast_tree_similarity`` of greedy (grammar-constrained where possible) Phase 2 answers to held-out
    docstrings. Raises ``ValueError`` when there is nothing held out to evaluate."""
    from ml.evaluation.lm import generate_texts, heldout_loss

    log = on_log or (lambda _msg: None)
    s = settings
    held_texts = phase1_heldout_texts(tokenizer, corpus_rows, s.heldout_fraction, s.max_length, s.max_heldout_texts)
    if not held_texts:
        raise ValueError(f"no held-out functions fit in {s.max_length} tokens")
    held_pairs = split_heldout(pairs, s.heldout_fraction)[1][: s.samples]
    if not held_pairs:
        raise ValueError("nl_ast_pairs has no held-out pairs")

    model = base_model_loader()
    metrics = {"heldout_loss_initial": heldout_loss(model, tokenizer, held_texts, s.max_length)}
    del model

    model = phase1_model_loader()
    metrics["heldout_loss_final"] = heldout_loss(model, tokenizer, held_texts, s.max_length)
    vocab_size = model.get_output_embeddings().weight.shape[0]
    grammar = spec.grammar_factory
    factory = None if grammar is None else grammar(tokenizer, vocab_size, s.max_new_tokens)
    prompts = [tokenizer.eos_token] * s.samples
    samples: dict[str, list[tuple[str, Judged]]] = {}
    for label, proc in (("unconstrained", None), ("constrained", factory)):
        if label == "constrained" and proc is None:
            continue  # no grammar for this slice: no constrained metric, rather than a copy of the unconstrained one
        texts = generate_texts(model, tokenizer, prompts, s.max_new_tokens, do_sample=True, seed=s.seed,
                               processor_factory=proc)
        judged = [spec.judge(t) for t in texts]
        metrics[f"valid_rate_{label}"] = sum(j.valid for j in judged) / len(judged)
        samples[label] = list(zip(texts, judged))
        log(f"{label} sampling valid {metrics[f'valid_rate_{label}']:.2f}")
    del model

    model = phase2_model_loader()
    preds = generate_texts(model, tokenizer, [p["nl"] + s.separator for p in held_pairs], s.max_new_tokens,
                           do_sample=False, processor_factory=factory)
    del model
    scores = [score_prediction(spec.name, pred, p["ast_text"]) for pred, p in zip(preds, held_pairs)]
    metrics["nl2ast_valid_rate"] = sum(sc.valid for sc in scores) / len(scores)
    metrics["nl2ast_exact_match"] = sum(sc.exact for sc in scores) / len(scores)
    metrics["nl2ast_tree_similarity"] = sum(sc.similarity for sc in scores) / len(scores)
    metrics = {k: round(float(v), 4) for k, v in metrics.items()}
    return AstEvalResult(metrics, samples, held_pairs, preds, scores)
