"""The AST-first evaluation recipe: test-split loss of the base and the Phase 1 model (and their paired difference),
sampled-AST validity with and without the slice's grammar constraint, and docstring → AST quality of the Phase 2
model. Every figure is an :class:`ml.stats.Estimate` (value, n, 95% interval, split ``test``).

The ``ast_eval`` asset and the benches call :func:`evaluate_ast_models`. It scores the ``test`` rows of
``ast_corpus`` / ``nl_ast_pairs`` (the ``split`` column decided when the rows were made; training read ``train``
and ``dev`` only), one row per group key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ml.dataset import evaluation_rows
from ml.evaluation.ast_metrics import Judged, PairScore, score_prediction
from ml.languages import LanguageSpec
from ml.stats import Estimate, mean, paired_difference, rate, verdict
from ml.training.ast_phases import phase1_eval_texts

ModelLoader = Callable[[], Any]  # -> a causal LM ready for evaluation (e.g. an adapter merged into its base)
SPLIT = "test"
# base loss - Phase 1 loss on the same test functions: > 0 when Phase 1 models them better
LOSS_DIFFERENCE = "heldout_loss_reduction"


@dataclass(frozen=True)
class AstEvalSettings:
    samples: int = 16  # sampled trees per setting, and test docstrings scored
    max_new_tokens: int = 256
    max_length: int = 512  # tokens of a test sequence in the loss
    seed: int = 0
    max_test_texts: int = 64  # test functions in the loss
    separator: str = "\n"  # between docstring and AST: PhaseConfig.separator, what Phase 2 trained on


@dataclass
class AstEvalResult:
    metrics: dict[str, Estimate]  # the stable metric names below, each with its n and 95% interval on test
    samples: dict[str, list[tuple[str, Judged]]]  # "unconstrained" / "constrained" -> (text, verdict)
    pairs: list[dict]  # the test nl_ast_pairs rows scored
    predictions: list[str]
    scores: list[PairScore]
    verdicts: dict[str, str] = field(default_factory=dict)  # comparison metric -> what a report may claim
    by_construction: tuple[str, ...] = ()  # metrics the grammar guarantees: checks, not results

    def report(self, language: str, curve_files: Mapping[str, str]) -> str:
        from ml.evaluation.report import ast_eval_report

        return ast_eval_report(language, self.metrics, self.samples, self.pairs, self.predictions, self.scores,
                               curve_files, verdicts=self.verdicts, by_construction=self.by_construction)


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
    """Evaluate the untrained base, Phase 1 and Phase 2 models of one slice on the test split.

    ``corpus_rows`` are ``ast_corpus`` rows (``id``, ``ast_text``, ``group_key``, ``split``), ``pairs`` are
    ``nl_ast_pairs`` rows (the same plus ``nl``). The models are loaded one at a time, in that order, and released
    before the next. Metrics (all :class:`~ml.stats.Estimate` s on ``test``): ``heldout_loss_initial`` (base) and
    ``heldout_loss_final`` (Phase 1), the mean over test functions of each function's per-token loss, and
    ``heldout_loss_reduction``, their paired difference (base - Phase 1) over the same functions;
    ``valid_rate_unconstrained`` and, where ``spec.grammar_factory`` exists, ``valid_rate_constrained`` of
    ``settings.samples`` trees sampled from EOS; ``nl2ast_valid_rate``, ``nl2ast_exact_match`` and
    ``nl2ast_tree_similarity`` of greedy (grammar-constrained where possible) Phase 2 answers to test docstrings.
    Raises ``ValueError`` when the test split has nothing to evaluate."""
    from ml.evaluation.lm import generate_texts, text_losses

    log = on_log or (lambda _msg: None)
    s = settings
    test_texts = phase1_eval_texts(tokenizer, corpus_rows, SPLIT, s.max_length, s.max_test_texts)
    if not test_texts:
        raise ValueError(f"no test functions fit in {s.max_length} tokens")
    test_pairs = evaluation_rows(pairs, SPLIT)[: s.samples]
    if not test_pairs:
        raise ValueError("nl_ast_pairs has no test pairs")

    model = base_model_loader()
    base_losses = text_losses(model, tokenizer, test_texts, s.max_length)
    del model

    model = phase1_model_loader()
    phase1_losses = text_losses(model, tokenizer, test_texts, s.max_length)
    metrics: dict[str, Estimate] = {
        "heldout_loss_initial": mean(base_losses, split=SPLIT, seed=s.seed),
        "heldout_loss_final": mean(phase1_losses, split=SPLIT, seed=s.seed),
        LOSS_DIFFERENCE: paired_difference(base_losses, phase1_losses, split=SPLIT, seed=s.seed),
    }
    verdicts = {LOSS_DIFFERENCE: verdict(metrics[LOSS_DIFFERENCE], "Phase 1", "the base")}
    log(f"test loss base {metrics['heldout_loss_initial']}, Phase 1 {metrics['heldout_loss_final']}: "
        f"{verdicts[LOSS_DIFFERENCE]}")
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
        metrics[f"valid_rate_{label}"] = rate([j.valid for j in judged], split=SPLIT)
        samples[label] = list(zip(texts, judged))
        log(f"{label} sampling valid {metrics[f'valid_rate_{label}']}")
    del model

    model = phase2_model_loader()
    preds = generate_texts(model, tokenizer, [p["nl"] + s.separator for p in test_pairs], s.max_new_tokens,
                           do_sample=False, processor_factory=factory)
    del model
    scores = [score_prediction(spec.name, pred, p["ast_text"]) for pred, p in zip(preds, test_pairs)]
    metrics["nl2ast_valid_rate"] = rate([sc.valid for sc in scores], split=SPLIT)
    metrics["nl2ast_exact_match"] = rate([sc.exact for sc in scores], split=SPLIT)
    metrics["nl2ast_tree_similarity"] = mean([sc.similarity for sc in scores], split=SPLIT, seed=s.seed)
    # Where the grammar guarantees validity these rates check the automaton, they measure no model; where it only
    # guarantees decoding (JS/Java) the re-parse is a measurement, reported as one.
    guaranteed = factory is not None and spec.grammar_guarantees_validity
    by_construction = ("valid_rate_constrained", "nl2ast_valid_rate") if guaranteed else ()
    return AstEvalResult(metrics, samples, test_pairs, preds, scores, verdicts, by_construction)
