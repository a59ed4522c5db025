"""AST-first vs plain text on one base: the recipe the ``ast_vs_text_eval`` asset and ``bench/ast_vs_text.py`` call.

Two arms, same everything else. Both start from the same base folder and tokenizer (``ast_base_model``: the base
with the AST tokens appended; the text arm never meets those tokens), train the same functions (the ``train`` split
of ``ast_corpus`` / ``nl_ast_pairs``: alpha-renamed, docstrings removed from the code-only phase; a function is kept
only when both its forms fit ``max_length``, so both arms see the same set), with the same LoRA settings, learning
rate, batch size and steps, and the same trainable parameters (LoRA + the AST embedding rows on a pretrained base,
all rows on a ``tiny:`` one):

- ``text``: Phase 1 on ``EOS + source``, Phase 2 on ``docstring + "\\n" → source``.
- ``ast``: Phase 1 on ``EOS + AST text``, Phase 2 on ``docstring + "\\n" → AST text`` (the existing phases).

Equal functions and steps means unequal tokens (one tree is a different number of tokens than its text): the
tokens each arm saw are reported beside its wall time. Everything is measured on the ``test`` split, which neither
arm saw, per function, so the arms compare as paired differences (:mod:`ml.stats`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ml.ast_vs_text.evaluation import AST, TEXT, Answers, answer, heldout_bits, representation
from ml.ast_vs_text.humaneval import HUMANEVAL_LANGUAGE, HumanEvalTask
from ml.dataset import evaluation_rows, split_rows
from ml.languages import get_language
from ml.stats import Estimate, mean, paired_difference, rate, verdict

ARMS = (TEXT, AST)
SPLIT = "test"
OnLog = Callable[[str], None]


@dataclass(frozen=True)
class ExperimentSettings:
    arms: tuple[str, ...] = ARMS  # the switch: which arms train and get measured
    language: str = "python"  # the slice: its codec, judge and grammar automaton (ml.languages)
    phase1_steps: int = 30
    phase2_steps: int = 30
    batch_size: int = 8
    learning_rate: float = 1e-3
    lora_r: int = 16
    lora_alpha: int = 32
    max_length: int = 256  # tokens of a training / scored sequence, in either form
    curve_points: int = 3  # checkpoints per phase scored for the learning curve (plus the phase's start)
    max_test_functions: int = 32  # test functions in the bits-per-character figures
    nl2code_samples: int = 24  # test docstrings answered
    max_new_tokens: int = 192
    separator: str = "\n"  # between docstring and code, as Phase 2 trains
    seed: int = 0
    workers: int = 2  # sandbox processes for the HumanEval tests
    logging_steps: int = 10


@dataclass
class ArmData:
    """The same functions for both arms: rows whose both forms fit, and the test rows scored."""

    phase1_rows: list[dict]
    phase2_rows: list[dict]
    test_functions: list[dict]
    test_pairs: list[dict]
    dropped: dict[str, int]


@dataclass
class ArmRun:
    arm: str
    train_s: float
    tokens_seen: int
    phase_tokens: dict[str, int]
    steps: int
    curve: list[tuple[int, str, float]]  # (step over both phases, metric, mean value on test)
    train_curves: dict[str, list[tuple[int, str, float]]]  # phase -> the trainer's logged curve
    bits: list[float]  # per test function, after Phase 1
    nl2code_bits: list[float]  # per test pair, after Phase 2, given the docstring
    answers: dict[str, Answers] = field(default_factory=dict)  # "unconstrained" / "constrained"


def _fits(tokenizer, texts: Sequence[str], limit: int) -> list[bool]:
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    return [len(x) < limit for x in ids]


def _both_fit(tokenizer, rows: Sequence[dict], limit: int, prompt: Callable[[dict], str]) -> list[dict]:
    eos = tokenizer.eos_token
    ok = [True] * len(rows)
    for arm in ARMS:
        fits = _fits(tokenizer, [prompt(r) + representation(arm, r) + eos for r in rows], limit)
        ok = [a and b for a, b in zip(ok, fits)]
    return [r for r, keep in zip(rows, ok) if keep]


def select_rows(tokenizer, corpus_rows: Sequence[dict], pairs: Sequence[dict],
                settings: ExperimentSettings) -> ArmData:
    """Train and test rows of both arms: a function whose text or tree does not fit ``max_length`` tokens is left
    out of both (never truncated: a cut function would teach, and score, less than the function)."""
    s = settings
    eos, sep = tokenizer.eos_token, s.separator
    p1 = split_rows(corpus_rows, "train")
    p2 = split_rows(pairs, "train")
    kept1 = _both_fit(tokenizer, p1, s.max_length, lambda r: eos)
    kept2 = _both_fit(tokenizer, p2, s.max_length, lambda r: r["nl"] + sep)
    tests = _both_fit(tokenizer, evaluation_rows(corpus_rows, SPLIT), s.max_length, lambda r: eos)
    test_pairs = _both_fit(tokenizer, evaluation_rows(pairs, SPLIT), s.max_length, lambda r: r["nl"] + sep)
    if not kept1 or not kept2:
        raise ValueError(f"no train functions fit in {s.max_length} tokens in both forms")
    if not tests or not test_pairs:
        raise ValueError(f"no test functions fit in {s.max_length} tokens in both forms")
    return ArmData(kept1, kept2, tests[:s.max_test_functions], test_pairs[:s.nl2code_samples],
                   {"phase1": len(p1) - len(kept1), "phase2": len(p2) - len(kept2)})


def _phase_config(settings: ExperimentSettings, steps: int, tiny_base: bool):
    from ml.training.ast_phases import phase_config

    s = settings
    return phase_config({
        "max_steps": steps, "learning_rate": s.learning_rate, "batch_size": s.batch_size,
        "max_length": s.max_length, "lora_r": s.lora_r, "lora_alpha": s.lora_alpha, "seed": s.seed,
        "trainable_embeddings": "auto", "logging_steps": s.logging_steps, "separator": s.separator,
        # checkpoints are the learning curve's points: keep every one of them
        "save_steps": max(1, steps // s.curve_points), "save_total_limit": s.curve_points + 2,
    }, tiny_base=tiny_base)


def _tokens_seen(result) -> int:
    # tokens_per_s = real tokens / forward-backward seconds; step_seconds = those seconds per step
    return int(round(result.tokens_per_s * result.step_seconds * result.steps))


def _checkpoints(work_dir: Path, final_dir: Path, steps: int) -> list[tuple[int, Path]]:
    points = {int(p.name.split("-")[1]): p for p in work_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()}
    points[steps] = final_dir  # the published adapter is the last point
    return sorted(points.items())


def _trainer_log(log: OnLog, what: str):
    def on_log(step: int, logs: dict) -> None:
        log(f"{what} step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in logs.items() if isinstance(v, int | float)))

    return on_log


def train_arm(arm: str, base_dir, tokenizer, data: ArmData, settings: ExperimentSettings, plan, work_dir,
              on_log: OnLog | None = None) -> ArmRun:
    """Phase 1 then Phase 2 of one arm, the learning curve on the test functions at every checkpoint (held-out
    bits per character: of the code alone after Phase 1 checkpoints, of the code given its docstring after Phase 2
    ones), and the per-function figures of the final models."""
    from ml.models.loading import load_base, load_merged
    from ml.training.sft import train_phase1, train_phase2

    log = on_log or (lambda _m: None)
    s, work = settings, Path(work_dir) / arm
    tiny = str(tokenizer.init_kwargs.get("astforge_base_model", "")).startswith("tiny:")
    texts = [tokenizer.eos_token + representation(arm, r) for r in data.phase1_rows]
    pairs = [(r["nl"], representation(arm, r)) for r in data.phase2_rows]
    started = time.perf_counter()
    r1 = train_phase1(base_dir, tokenizer, texts, [], work / "phase1", work / "phase1_ckpt",
                      _phase_config(s, s.phase1_steps, tiny), plan, on_log=_trainer_log(log, f"{arm} phase 1"))
    r2 = train_phase2(base_dir, work / "phase1", tokenizer, pairs, [], work / "phase2", work / "phase2_ckpt",
                      _phase_config(s, s.phase2_steps, tiny), plan, on_log=_trainer_log(log, f"{arm} phase 2"))
    train_s = time.perf_counter() - started
    tokens = {"phase1": _tokens_seen(r1), "phase2": _tokens_seen(r2)}
    log(f"{arm}: trained in {train_s:.0f}s on {sum(tokens.values())} tokens")

    prompts = [r["nl"] + s.separator for r in data.test_pairs]
    curve: list[tuple[int, str, float]] = []
    bits: list[float] = []
    model = load_base(base_dir, plan)
    for step, folder in [(0, None), *_checkpoints(work / "phase1_ckpt", work / "phase1", r1.steps)]:
        if folder is not None:
            model = load_merged(base_dir, folder, plan)
        bits = heldout_bits(model, tokenizer, arm, data.test_functions, s.max_length)
        curve.append((step, "bits_per_char", float(sum(bits) / len(bits))))
        log(f"{arm} phase 1 step {step}: {curve[-1][2]:.3f} bits/char")
    nl2code: list[float] = []
    for step, folder in [(0, None), *_checkpoints(work / "phase2_ckpt", work / "phase2", r2.steps)]:
        if folder is not None:
            model = load_merged(base_dir, folder, plan)
        nl2code = heldout_bits(model, tokenizer, arm, data.test_pairs, s.max_length, prompts)
        curve.append((r1.steps + step, "nl2code_bits_per_char", float(sum(nl2code) / len(nl2code))))
        log(f"{arm} phase 2 step {step}: {curve[-1][2]:.3f} bits/char given the docstring")
    del model
    return ArmRun(arm, train_s, sum(tokens.values()), tokens, r1.steps + r2.steps, curve,
                  {"phase1": r1.curve, "phase2": r2.curve}, bits, nl2code)


def answer_arm(run: ArmRun, base_dir, tokenizer, data: ArmData, tasks: Sequence[HumanEvalTask],
               settings: ExperimentSettings, plan, work_dir, on_log: OnLog | None = None) -> None:
    """The final (Phase 2) model's answers to the test docstrings and HumanEval: greedy, and for the AST arm also
    with the grammar mask."""
    from ml.models.loading import load_merged

    s = settings
    model = load_merged(base_dir, Path(work_dir) / run.arm / "phase2", plan)
    constrains = run.arm == AST and get_language(s.language).grammar_automaton is not None
    for label in ("unconstrained", "constrained") if constrains else ("unconstrained",):
        started = time.perf_counter()
        run.answers[label] = answer(model, tokenizer, run.arm, data.test_pairs, tasks, separator=s.separator,
                                    max_new_tokens=s.max_new_tokens, constrained=label == "constrained",
                                    language=s.language, workers=s.workers)
        passed = run.answers[label].humaneval_passed
        if on_log:
            on_log(f"{run.arm} {label}: HumanEval {sum(passed)}/{len(passed)} in {time.perf_counter() - started:.0f}s")
    del model


def _prefix(run: ArmRun, label: str) -> str:
    return run.arm if label == "unconstrained" else f"{run.arm}_constrained"


def arm_metrics(runs: Sequence[ArmRun], seed: int = 0) -> tuple[dict[str, Estimate | float], dict[str, str]]:
    """Every figure with its n and 95% interval on test; with both arms, their paired differences and verdicts."""
    metrics: dict[str, Estimate | float] = {}
    for run in runs:
        metrics[f"{run.arm}_bits_per_char"] = mean(run.bits, split=SPLIT, seed=seed)
        metrics[f"{run.arm}_nl2code_bits_per_char"] = mean(run.nl2code_bits, split=SPLIT, seed=seed)
        for label, a in run.answers.items():
            p = _prefix(run, label)
            metrics[f"{p}_valid_rate"] = rate([sc.valid for sc in a.scores], split=SPLIT)
            metrics[f"{p}_exact_match"] = rate([sc.exact for sc in a.scores], split=SPLIT)
            metrics[f"{p}_tree_similarity"] = mean([sc.similarity for sc in a.scores], split=SPLIT, seed=seed)
            if a.humaneval_passed:  # none on a slice other than Python's: no empty figure
                metrics[f"{p}_humaneval_pass_at_1"] = rate(a.humaneval_passed, split=SPLIT)
        metrics[f"{run.arm}_tokens_seen"] = float(run.tokens_seen)
        metrics[f"{run.arm}_train_s"] = round(run.train_s, 1)
    verdicts: dict[str, str] = {}
    by_arm = {r.arm: r for r in runs}
    if TEXT in by_arm and AST in by_arm:
        text, tree = by_arm[TEXT], by_arm[AST]
        # text - AST: > 0 when the AST arm needs fewer bits for the same characters
        for name, a, b in (("bits_per_char", text.bits, tree.bits),
                           ("nl2code_bits_per_char", text.nl2code_bits, tree.nl2code_bits)):
            metrics[f"{name}_text_minus_ast"] = d = paired_difference(a, b, split=SPLIT, seed=seed)
            verdicts[f"{name}_text_minus_ast"] = verdict(d, "the AST arm", "the text arm")
        base = text.answers.get("unconstrained")
        for label, ans in tree.answers.items():
            if base is None:
                continue
            p = _prefix(tree, label)
            for name, get in (("humaneval_pass_at_1", lambda x: [float(v) for v in x.humaneval_passed]),
                              ("tree_similarity", lambda x: [sc.similarity for sc in x.scores])):
                if not get(ans):
                    continue
                key = f"{p}_minus_text_{name}"
                metrics[key] = d = paired_difference(get(ans), get(base), split=SPLIT, seed=seed)
                verdicts[key] = verdict(d, f"the {p} arm", "the text arm")
    return metrics, verdicts


@dataclass
class ExperimentResult:
    settings: ExperimentSettings
    runs: list[ArmRun]
    data: ArmData
    tasks: list[HumanEvalTask]
    metrics: dict[str, Estimate | float]
    verdicts: dict[str, str]
    # figures a grammar guarantees: checks of the automaton, not results (Python's; JS/Java's are measured)
    by_construction: tuple[str, ...] = ()

    def curve_points(self) -> dict[str, list[tuple[int, str, float]]]:
        return {r.arm: r.curve for r in self.runs}

    def summary(self) -> dict:
        """The bench's JSON fields (values; NaN where an arm was not run)."""
        def value(name):
            m = self.metrics.get(name)
            return None if m is None else round(m.value if isinstance(m, Estimate) else m, 4)

        s = self.settings
        out = {k: value(k) for k in (
            "text_bits_per_char", "ast_bits_per_char", "text_valid_rate", "ast_valid_rate",
            "ast_constrained_valid_rate", "text_humaneval_pass_at_1", "ast_humaneval_pass_at_1",
            "ast_constrained_humaneval_pass_at_1")}
        out |= {"steps": s.phase1_steps + s.phase2_steps, "phase1_steps": s.phase1_steps,
                "phase2_steps": s.phase2_steps}
        out |= {f"{r.arm}_tokens_seen": r.tokens_seen for r in self.runs}
        out |= {f"{r.arm}_train_s": round(r.train_s, 1) for r in self.runs}
        out["humaneval_n"] = len(self.tasks)
        out["curve"] = {r.arm: [[step, name, round(v, 4)] for step, name, v in r.curve] for r in self.runs}
        return out


def run_experiment(base_dir, tokenizer, corpus_rows: Sequence[dict], pairs: Sequence[dict],
                   problems: Sequence[dict], settings: ExperimentSettings, plan, work_dir=None,
                   on_log: OnLog | None = None) -> ExperimentResult:
    """Train and measure the arms of ``settings.arms`` (see the module docstring). ``corpus_rows`` are
    ``ast_corpus`` rows, ``pairs`` ``nl_ast_pairs`` rows of ``settings.language``'s slice, ``problems`` the
    HumanEval problems to answer (``ml.autocomplete.humaneval.sample_problems`` picks a seeded sample; Python only,
    none on another slice)."""
    from ml.ast_vs_text.humaneval import make_task

    unknown = [a for a in settings.arms if a not in ARMS]
    if unknown or not settings.arms:
        raise ValueError(f"arms must be a non-empty subset of {ARMS}, got {settings.arms}")
    if settings.curve_points < 1:
        raise ValueError("curve_points must be >= 1")
    if problems and settings.language != HUMANEVAL_LANGUAGE:
        raise ValueError(f"HumanEval is a {HUMANEVAL_LANGUAGE} benchmark: no problems on the {settings.language} slice")
    data = select_rows(tokenizer, corpus_rows, pairs, settings)
    tasks = [make_task(p) for p in problems]
    log = on_log or (lambda _m: None)
    log(f"{len(data.phase1_rows)} code-only and {len(data.phase2_rows)} docstring -> code train functions "
        f"(dropped as too long in either form: {data.dropped}); {len(data.test_functions)} test functions, "
        f"{len(data.test_pairs)} test docstrings, {len(tasks)} HumanEval problems")
    with tempfile.TemporaryDirectory(prefix="ast-vs-text-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        runs = []
        for arm in settings.arms:
            run = train_arm(arm, base_dir, tokenizer, data, settings, plan, work, log)
            answer_arm(run, base_dir, tokenizer, data, tasks, settings, plan, work, log)
            runs.append(run)
    metrics, verdicts = arm_metrics(runs, settings.seed)
    guaranteed = get_language(settings.language).grammar_guarantees_validity
    return ExperimentResult(settings, runs, data, tasks, metrics, verdicts,
                            ("ast_constrained_valid_rate",) if guaranteed else ())

