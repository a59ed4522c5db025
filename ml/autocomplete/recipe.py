"""The autocomplete pipeline's recipe, called by the `autocomplete` assets and the bench alike: the FIM tokenizer,
Stage A / Stage B training pairs, completion with latency, and the M0/M1/M2 evaluation of one model on one set.

Sets, per language slice: ``generic`` (single-line infilling of held-out files of the slice), ``domain`` (the same
on held-out domain examples of the slice), named bare for python and ``generic_{slice}`` / ``domain_{slice}`` for
the others (:func:`eval_set_name`); ``humaneval`` (one masked line of each HumanEval canonical solution, scored by
running the problem's tests in :mod:`ml.sandbox`). Generic and domain tasks are the ``test`` split's (``dev`` when
tuning); HumanEval is evaluation-only, all of it test. Metric names: ``{set}_{metric}``, the rates and means as
:class:`ml.stats.Estimate` (n and 95% interval); the asset prefixes the model (``m0``, ``m1``, ``m2``). Models are
compared by :func:`paired_differences` on the same tasks: ``diff_{a}_vs_{b}_{set}_{metric}``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ml.autocomplete.fim import FIM_TOKENS, fim_prompt
from ml.autocomplete.metrics import edit_similarity, exact_match, syntax_valid, truncate_syntax_aware
from ml.stats import Estimate, mean, paired_difference, quantile, rate, ratio
from ml.training.sft_trainer import PhaseConfig, resolve_trainable_embeddings
from ml.training.trainer_config import settings_into

TRAINING_KINDS = ("fim", "comment_to_code")


def fim_tokenizer(base: str, texts: Sequence[str] = (), vocab_size: int = 4000):
    """The base's tokenizer with the FIM tokens: the base's own where it has them (Qwen2.5 / Qwen2.5-Coder: the
    format it was trained on), else appended (atomic, in an id range after the base vocabulary; the ``tiny:`` bases
    train a BPE on ``texts`` first)."""
    from ml.training.ast_tokenizer import build_ast_tokenizer

    return build_ast_tokenizer(base, texts, list(FIM_TOKENS), vocab_size, reuse_base_tokens=True)


def training_pairs(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(prompt, completion) of the training rows (FIM and comment-to-code)."""
    return [(r["prompt"], r["completion"]) for r in rows if r["kind"] in TRAINING_KINDS]


def stage_b_rows(domain_rows: Sequence[Mapping], stage_a_rows: Sequence[Mapping], replay_ratio: float,
                 seed: int) -> list[Mapping]:
    """Domain training rows plus Stage A rows replayed against forgetting: ``replay_ratio`` of the mix (0.2: one
    row in five is general code), shuffled with ``seed``."""
    if not 0 <= replay_ratio < 1:
        raise ValueError(f"replay_ratio must be in [0, 1), not {replay_ratio}")
    domain = [r for r in domain_rows if r["kind"] in TRAINING_KINDS]
    general = [r for r in stage_a_rows if r["kind"] in TRAINING_KINDS]
    rng = random.Random(seed)
    n_replay = min(len(general), round(len(domain) * replay_ratio / (1 - replay_ratio)))
    mixed = domain + rng.sample(general, n_replay)
    rng.shuffle(mixed)
    return mixed


def complete(model, tokenizer, prompt: str, *, max_new_tokens: int = 48, single_line: bool = True,
             temperature: float = 0.0) -> tuple[str, float, int]:
    """One completion of ``prompt`` (batch 1, as an editor asks): (text, seconds, new tokens). ``single_line``
    stops at the first newline (kept), as single-line infilling is scored."""
    import torch

    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    kwargs: dict = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
                    "eos_token_id": tokenizer.eos_token_id}
    if temperature > 0:
        kwargs |= {"do_sample": True, "temperature": temperature}
    else:
        kwargs |= {"do_sample": False}
    if single_line:
        kwargs |= {"stop_strings": ["\n"], "tokenizer": tokenizer}
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    seconds = time.perf_counter() - started
    new = out[0, enc["input_ids"].shape[1]:]
    text = tokenizer.decode(new, skip_special_tokens=True)
    if single_line and "\n" in text:
        text = text[: text.index("\n") + 1]
    return text, seconds, int(new.shape[0])


def complete_batch(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 48,
                   batch_size: int = 8) -> list[tuple[str, int]]:
    """Greedy single-line completions of ``prompts`` in left-padded batches: (text up to and including its first
    newline, new tokens) per prompt. The same choices as :func:`complete` up to floating-point ties; a row ends
    at its newline while the batch goes on."""
    import torch

    from ml.evaluation.lm import left_padded_batches

    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[tuple[str, int]] = []
    for _, enc, width in left_padded_batches(tokenizer, prompts, batch_size, model.device):
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                 eos_token_id=tokenizer.eos_token_id, stop_strings=["\n"], tokenizer=tokenizer)
        for row in gen[:, width:].tolist():
            kept = []
            for t in row:
                if t in (pad, tokenizer.eos_token_id):
                    break
                kept.append(t)
            text = tokenizer.decode(kept, skip_special_tokens=True)
            out.append((text[: text.index("\n") + 1] if "\n" in text else text, len(kept)))
    return out


def evaluate_set(model, tokenizer, tasks: Sequence[Mapping[str, Any]], set_name: str, *, language: str = "python",
                 max_new_tokens: int = 48, score: Callable[[Sequence[Mapping], list[str]], list[bool]] | None = None,
                 on_progress: Callable[[str], None] | None = None,
                 split: str = "test", latency_tasks: int | None = None,
                 batch_size: int = 8) -> tuple[dict[str, Estimate], list[dict]]:
    """Single-line infilling of ``tasks`` (``id prefix middle suffix``, PSM prompts; of ``split``), greedy:
    metrics ``{set}_exact_match``, ``_edit_similarity``, ``_syntax_valid_rate`` (and ``_truncated``: after
    syntax-aware truncation), ``_latency_ms_p50/_p95``, ``_tokens_per_s``; with ``score`` (HumanEval: run the
    tests), ``{set}_pass_at_1`` from the truncated middles. Returns the metrics (:func:`set_metrics`) and one row
    per task.

    The first ``latency_tasks`` tasks (default: all) are completed one at a time, as an editor asks, and timed:
    the latency and tokens/s figures are theirs. The rest go in batches of ``batch_size`` (one decoding pass serves
    the whole batch), untimed (``latency_ms`` None)."""
    timed = len(tasks) if latency_tasks is None else min(latency_tasks, len(tasks))
    prompts = [fim_prompt(t["prefix"], t["suffix"]) for t in tasks]
    answers: list[tuple[str, float | None, int]] = []
    for i, prompt in enumerate(prompts[:timed]):
        answers.append(complete(model, tokenizer, prompt, max_new_tokens=max_new_tokens))
        if on_progress is not None and (i + 1) % 8 == 0:
            on_progress(f"{set_name}: {i + 1}/{len(tasks)} completions (timed)")
    for start in range(timed, len(prompts), 4 * batch_size):
        chunk = prompts[start : start + 4 * batch_size]
        answers += [(text, None, n_new) for text, n_new in
                    complete_batch(model, tokenizer, chunk, max_new_tokens=max_new_tokens, batch_size=batch_size)]
        if on_progress is not None:
            on_progress(f"{set_name}: {len(answers)}/{len(tasks)} completions")
    rows = []
    for task, (text, seconds, n_new) in zip(tasks, answers):
        lang = task.get("language") or language
        truncated = truncate_syntax_aware(task["prefix"], text, task["suffix"], lang)
        rows.append({"set": set_name, "split": split, "id": task["id"], "expected": task["middle"], "generated": text,
                     "truncated": truncated, "exact_match": exact_match(truncated, task["middle"]),
                     "edit_similarity": edit_similarity(truncated, task["middle"]),
                     "syntax_valid": syntax_valid(task["prefix"] + text + task["suffix"], lang),
                     "syntax_valid_truncated": syntax_valid(task["prefix"] + truncated + task["suffix"], lang),
                     "passed": None, "latency_ms": None if seconds is None else seconds * 1000,
                     "new_tokens": n_new})
    if score is not None and rows:
        for row, passed in zip(rows, score(tasks, [r["truncated"] for r in rows])):
            row["passed"] = passed
    return set_metrics(rows, set_name, split=split), rows


# metric name -> the per-task result column it is the rate or mean of
RATES = {"exact_match": "exact_match", "syntax_valid_rate": "syntax_valid",
         "syntax_valid_rate_truncated": "syntax_valid_truncated", "pass_at_1": "passed"}
MEANS = {"edit_similarity": "edit_similarity"}
# the comparisons the report makes (better-hoped, baseline) and the metrics it compares them on
COMPARISONS = (("m1", "m0"), ("m2", "m1"), ("m2", "m0"))
PAIRED_METRICS = ("exact_match", "edit_similarity", "pass_at_1")


def set_metrics(rows: Sequence[Mapping[str, Any]], set_name: str, *,
                split: str = "test") -> dict[str, Estimate]:
    """The ``{set}_*`` metrics of per-task result rows: rates (Wilson) and means (bootstrap) as
    :class:`~ml.stats.Estimate` with n and 95% interval, latency percentiles and tokens/s (a ratio of sums over
    tasks) too, by bootstrap (n=0 for no rows). ``pass_at_1`` only where the rows were scored."""
    out: dict[str, float | Estimate] = {}
    for name, column in RATES.items():
        if column != "passed" or any(r.get("passed") is not None for r in rows):
            out[f"{set_name}_{name}"] = rate([bool(r[column]) for r in rows], split=split)
    for name, column in MEANS.items():
        out[f"{set_name}_{name}"] = mean([float(r[column]) for r in rows], split=split)
    timed = [r for r in rows if r["latency_ms"] is not None]  # batched rows carry no latency of their own
    if not timed:
        return out
    latencies = [r["latency_ms"] for r in timed]
    out |= {f"{set_name}_latency_ms_p50": quantile(latencies, 50, split=split),
            f"{set_name}_latency_ms_p95": quantile(latencies, 95, split=split),
            f"{set_name}_tokens_per_s": ratio([r["new_tokens"] for r in timed], [ms / 1000 for ms in latencies],
                                              split=split)}
    return out


def paired_differences(results: Sequence[Mapping[str, Any]], *, split: str = "test",
                       comparisons: Sequence[tuple[str, str]] = COMPARISONS,
                       metrics: Sequence[str] = PAIRED_METRICS) -> dict[str, Estimate]:
    """``diff_{a}_vs_{b}_{set}_{metric}``: the mean of a's per-task score minus b's over the tasks both models
    answered (aligned on ``(set, id)``), with its paired-bootstrap 95% interval. ``pass_at_1`` where tasks were
    scored (HumanEval)."""
    columns = {**RATES, **MEANS}
    by_model: dict[str, dict[tuple[str, str], Mapping[str, Any]]] = {}
    for r in results:
        key = (r["set"], r["id"])
        if key in by_model.setdefault(r["model"], {}):
            raise ValueError(f"two results of model {r['model']} for task {key}: cannot pair them")
        by_model[r["model"]][key] = r
    sets = list(dict.fromkeys(r["set"] for r in results))
    out = {}
    for a, b in comparisons:
        if a not in by_model or b not in by_model:
            continue
        for set_name in sets:
            keys = [k for k in by_model[a] if k[0] == set_name and k in by_model[b]]
            for metric in metrics:
                column = columns[metric]
                if not keys or any(by_model[m][k].get(column) is None for m in (a, b) for k in keys):
                    continue
                out[f"diff_{a}_vs_{b}_{set_name}_{metric}"] = paired_difference(
                    [float(by_model[a][k][column]) for k in keys], [float(by_model[b][k][column]) for k in keys],
                    split=split)
    return out


def eval_set_name(kind: str, language: str) -> str:
    """The name of a slice's ``generic`` or ``domain`` set: the bare kind for python (the names the metrics had
    before there were other slices), ``{kind}_{language}`` for the others."""
    return kind if language == "python" else f"{kind}_{language}"


def sample_tasks(rows: Sequence[Mapping[str, Any]], n: int, seed: int, *,
                 split: str = "test") -> list[Mapping[str, Any]]:
    """Up to ``n`` infilling tasks of ``split`` (test to report, dev to tune), a seeded sample (the same for every
    model). Training rows are never tasks."""
    tasks = [r for r in rows if r["kind"] == "infill_task" and r["split"] == split]
    return random.Random(seed).sample(tasks, min(n, len(tasks)))


STAGE_LANGUAGES = "stage_languages.json"  # in a stage's adapter folder: the fim_samples slices it trained on


def write_stage_languages(folder, languages: Sequence[str]) -> None:
    """Record in a stage's adapter ``folder`` the fim_samples slices it trained on (Stage B replays Stage A's)."""
    (Path(folder) / STAGE_LANGUAGES).write_text(json.dumps({"languages": list(languages)}))


def stage_languages(folder) -> list[str]:
    """The fim_samples slices the stage adapter in ``folder`` trained on; ``ValueError`` when it did not record them
    (an adapter trained before the record existed: materialize it again)."""
    path = Path(folder) / STAGE_LANGUAGES
    if not path.is_file():
        raise ValueError(f"{folder} does not record the languages it trained on ({STAGE_LANGUAGES} missing): "
                         "materialize autocomplete_stage_a_adapter again")
    return list(json.loads(path.read_text())["languages"])


# Stage settings that choose rows or precision, not trainer behaviour
STAGE_RECIPE_SETTINGS = frozenset({"precision", "languages", "replay_ratio"})


def phase_config(settings: Mapping[str, Any], *, tiny: bool) -> PhaseConfig:
    """The trainer config of a stage from its settings (``PhaseConfig`` field names; a key that is neither one nor a
    recipe setting is refused), plus the recipe's fixed choices: completion-only loss on ``prompt`` → ``completion +
    eos`` tokenized apart (a FIM cut inside a word must not merge tokens across it), linear decay, and the FIM token
    rows trained (all rows for a random-init ``tiny:`` base)."""
    return settings_into(PhaseConfig, settings, recipe_settings=STAGE_RECIPE_SETTINGS, separator="", add_eos=True,
                         lr_scheduler_type="linear", tokenize_separately=True, per_device_eval_batch_size=1,
                         trainable_embeddings=resolve_trainable_embeddings("auto", tiny_base=tiny,
                                                                           pretrained="added"))
