"""The srl pipeline's recipe, called by the `srl` assets and `bench/srl.py` alike: the base's tokenizer with the
step tags, supervised warm-up pairs from the teacher's traces, GRPO on the structured reward, and the evaluation of
a policy (base, warm-up only, student or teacher) on the rewrite families of one split (``test`` for srl_eval,
``dev`` for the ablation that tunes lambda and the weights), each figure an ``ml.stats.Estimate`` (n, 95% interval)
and the comparisons paired differences over the same tasks.

GRPO is TRL's ``GRPOTrainer`` with a fresh LoRA on the base with the warm-up adapter merged in; the reference of the
KL term (``beta``) is that merged model with the LoRA disabled, i.e. the policy where RL started (the base itself
when there is no warm-up). Merged, the warm-up's trained tag rows are ordinary weights, so RL trains a plain LoRA
and needs no second copy of the model. A student is therefore two stacked adapters: ``warmup/`` on the base, then
the GRPO adapter on that (:func:`load_student`).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ml.compute import ComputePlan, resolve_compute
from ml.models.loading import expose_lm_head_bias, load_base, load_base_or_merged, load_merged
from ml.srl.reward import Embed, RewardBreakdown, RewardWeights, batch_rewards, length_penalty
from ml.srl.trace import SPECIAL_TOKENS, chat_prompt, parse_step
from ml.stats import Estimate, mean, paired_difference, rate
from ml.training.glue import OnLog, curve, last_checkpoint, log_callback, precision_args, quiet_printer
from ml.training.sft_trainer import PhaseConfig, lora_config
from ml.training.trainer_config import settings_into, trl_config
from ml.training.unsloth_backend import require_hf_backend

POLICIES = ("base", "warmup", "student", "teacher")  # warmup: the supervised warm-up alone, before GRPO
DEFAULT_WEIGHTS = RewardWeights()
METRICS = ("trace_parse_rate", "trace_parse_rate_constrained", "action_fidelity", "state_faithfulness",
           "think_similarity", "brevity_penalty", "kl_per_token", "execution_success", "execution_success_constrained",
           "think_tokens", "state_tokens", "reward")
# compared with itself the teacher scores 1 / 0 by definition, and its kept steps all parse and execute by
# construction (srl_teacher_traces keeps only those): only what is measured on its own steps is reported here; its
# unfiltered rates are srl_teacher_traces' teacher_*_test figures
TEACHER_METRICS = ("think_tokens", "state_tokens")
# the paired comparisons of a report: (better, worse) over the same tasks
COMPARISONS = (("student", "base"), ("student", "warmup"), ("warmup", "base"))
COMPARED_METRICS = ("execution_success", "reward", "trace_parse_rate", "action_fidelity")


def srl_tokenizer(base: str, texts: Sequence[str] = (), vocab_size: int = 4000):
    """The base's tokenizer with the six step tags appended as atomic tokens (after the base vocabulary). They are
    added tokens but not *special* ones: decoding with ``skip_special_tokens`` (as TRL does) keeps them."""
    from ml.training.ast_tokenizer import build_ast_tokenizer

    return build_ast_tokenizer(base, texts, list(SPECIAL_TOKENS), vocab_size)


def task_prompt(tokenizer, row: Mapping[str, Any]) -> str:
    return chat_prompt(tokenizer, row["language"], row["instruction"], row["code"])


def warmup_pairs(tokenizer, traces: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(prompt, teacher step + end token) per trace: the supervised warm-up before RL."""
    return [(task_prompt(tokenizer, t), t["step"] + (tokenizer.eos_token or "")) for t in traces]


def grpo_rows(tokenizer, traces: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """GRPO's rows: the prompt, the teacher's step, and the task (code, language, expected) that an execution
    reward runs the sampled step on."""
    return [{"prompt": task_prompt(tokenizer, t), "teacher_step": t["step"], "code": t["code"],
             "language": t["language"], "expected": t["expected"]} for t in traces]


# ------------------------------------------------------------------------------------------------------------ GRPO


@dataclass
class GRPOSettings:
    """TRL ``GRPOConfig`` field names (``beta`` is the KL coefficient lambda), plus the LoRA shape."""

    beta: float = 0.05
    max_steps: int = 20
    learning_rate: float = 1e-5
    num_generations: int = 4
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_completion_length: int = 128
    temperature: float = 1.0
    logging_steps: int = 1
    save_steps: int = 10
    save_total_limit: int = 1
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_top_layers: int = 0


@dataclass
class GRPOResult:
    out_dir: str
    steps: int
    train_loss: float
    prompts: int
    curve: list[tuple[int, str, float]]
    components: dict[str, list[float]]  # every sampled completion's reward parts, in order
    resumed_from: str | None
    seconds: float


# SrlAdapterConfig keys the recipe reads itself (the warm-up, the reward, precision), not GRPO's trainer
GRPO_RECIPE_SETTINGS = frozenset({"sft_steps", "sft_learning_rate", "sft_tag_lr_multiplier", "sft_batch_size",
                                  "sft_cpu_micro_batch_size",
                                  "max_length", "reward_action", "reward_state", "reward_think", "reward_execution",
                                  "malformed_penalty", "precision"})


def grpo_settings(settings: Mapping[str, Any]) -> GRPOSettings:
    """``GRPOSettings`` from the srl_adapter step's settings (``config.model_dump()``, TRL's field names), with a
    checkpoint halfway through the run."""
    return settings_into(GRPOSettings, settings, recipe_settings=GRPO_RECIPE_SETTINGS,
                         save_steps=max(int(settings.get("max_steps", GRPOSettings.max_steps)) // 2, 1))


GRPO_CURVE = ("loss", "reward", "reward_std", "kl", "completions/mean_length", "completions/clipped_ratio",
              "entropy", "learning_rate", "rewards/srl_reward/mean")


class StructuredReward:
    """TRL reward function (``prompts``, ``completions`` and the dataset's ``teacher_step`` column → floats) that
    keeps each completion's reward parts, for the per-component histograms."""

    __name__ = "srl_reward"

    def __init__(self, embed: Embed, weights: RewardWeights,
                 execute: Callable[[list[dict]], list[Any]] | None = None) -> None:
        self.embed, self.weights = embed, weights
        # weights.execution > 0: each well-formed step's action is run on its task (ml.srl.environment's sandbox)
        # and 1.0 / 0.0 for "did the task" enters the reward; the rows then need code, language and expected
        self.execute = execute
        if weights.execution and execute is None:
            raise ValueError("an execution weight needs an execute function (ml.srl.environment.execute_actions)")
        self.components: dict[str, list[float]] = {"total": [], "action": [], "state": [], "think": [],
                                                   "malformed": []}
        if weights.execution:
            self.components["execution"] = []
        self.calls: list[dict[str, float]] = []  # per call (one per generation round): each component's mean

    def executions(self, texts: Sequence[str], code: Sequence[str], language: Sequence[str],
                   expected: Sequence[str]) -> list[float]:
        """1.0 where the step parses and its action, run in the sandbox, turns ``code`` into ``expected``."""
        parsed = [parse_step(t) for t in texts]
        ok = [i for i, p in enumerate(parsed) if p.ok]
        reports = self.execute([{"code": code[i], "language": language[i], "expected": expected[i],
                                 "action": parsed[i].step.action} for i in ok]) if ok else []
        out = [0.0] * len(texts)
        for i, report in zip(ok, reports, strict=True):
            out[i] = float(report.executed)
        return out

    def __call__(self, prompts, completions, teacher_step, code=None, language=None, expected=None,
                 **_: Any) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        teachers = [parse_step(t).step for t in teacher_step]
        executions = None
        if self.weights.execution:
            if code is None or language is None or expected is None:
                raise ValueError("an execution weight needs the rows' code, language and expected columns")
            executions = self.executions(texts, code, language, expected)
            self.components["execution"] += executions
        scored = batch_rewards(texts, teachers, self.embed, self.weights, executions)
        call: dict[str, list[float]] = {"action": [], "state": [], "think": []}
        for r in scored:
            self.components["total"].append(r.total)
            self.components["malformed"].append(float(r.malformed))
            for part in ("action", "state", "think"):
                if getattr(r, part) is not None:
                    self.components[part].append(getattr(r, part))
                    call[part].append(getattr(r, part))
        self.calls.append({"malformed_rate": sum(r.malformed for r in scored) / max(len(scored), 1),
                           **{f"reward_{k}": statistics.fmean(v) for k, v in call.items() if v}})
        return [r.total for r in scored]

    def curve(self, steps_per_call: int = 1) -> list[tuple[int, str, float]]:
        """The per-call component means as training-curve points (step = the optimizer step of the call)."""
        return [((i + 1) * steps_per_call, name, value) for i, call in enumerate(self.calls)
                for name, value in call.items()]


def _grpo_config(cfg: GRPOSettings, plan: ComputePlan, work_dir: Path, stop_ids: Sequence[int]):
    from trl import GRPOConfig

    own = {"lora_r", "lora_alpha", "lora_top_layers", "seed"}  # the LoRA's shape; trl_config sets the seeds
    precision = precision_args(plan)
    if plan.device == "cpu":  # TRL's GRPO on CPU: use_cpu=True, bf16=False
        precision |= {"bf16": False, "fp16": False}
    return trl_config(
        GRPOConfig, cfg, plan, work_dir, [f.name for f in fields(cfg) if f.name not in own], precision=precision,
        save_strategy="steps", gradient_checkpointing=False, log_completions=False, remove_unused_columns=False,
        generation_kwargs={"eos_token_id": list(stop_ids)},
    )


def train_grpo(
    base_dir,
    start_adapter_dir,
    tokenizer,
    rows: Sequence[Mapping[str, Any]],
    out_dir,
    work_dir,
    cfg: GRPOSettings,
    plan: ComputePlan,
    reward: StructuredReward,
    on_log: OnLog | None = None,
) -> GRPOResult:
    """GRPO on ``{"prompt", "teacher_step"}`` rows (plus ``code``, ``language``, ``expected`` when the reward runs
    the steps): a fresh LoRA on the base with ``start_adapter_dir`` (the
    warm-up adapter) merged in, or on the base alone when it is None. Checkpoints in ``work_dir`` (a re-run
    resumes); adapter + tokenizer in ``out_dir``."""
    from datasets import Dataset
    from trl import GRPOTrainer

    require_hf_backend(plan, "GRPO")
    if not rows:
        raise ValueError("GRPO: no prompts")
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    model = load_base_or_merged(base_dir, start_adapter_dir or None, plan)
    peft_config = lora_config(PhaseConfig(lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                          lora_top_layers=cfg.lora_top_layers), model)
    # generation ends at the step's last tag: what follows it is never scored, so it is not sampled either
    stop = [tokenizer.convert_tokens_to_ids("</state_update>"), tokenizer.eos_token_id]
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward], args=_grpo_config(cfg, plan, work_dir, stop),
        train_dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "teacher_step", "code", "language", "expected")
                                          if k in r} for r in rows]),
        processing_class=tokenizer, peft_config=peft_config,
        callbacks=[log_callback(on_log)] if on_log is not None else [],
    )
    expose_lm_head_bias(trainer.model)
    if on_log is not None:
        quiet_printer(trainer)
    resume = last_checkpoint(work_dir, trainer.args)
    started = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    result = GRPOResult(
        out_dir=str(out_dir), steps=int(trainer.state.global_step), train_loss=float(out.training_loss),
        prompts=len(rows), curve=curve(trainer.state.log_history, GRPO_CURVE) + reward.curve(),
        components=reward.components,
        resumed_from=resume, seconds=time.perf_counter() - started,
    )
    (out_dir / "train_result.json").write_text(json.dumps({k: v for k, v in asdict(result).items()
                                                           if k != "components"}, indent=1))
    return result


# ------------------------------------------------------------------------------------------------------ evaluation


@dataclass
class PolicyEval:
    metrics: dict[str, Estimate | float]
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvalInputs:
    """What a policy is judged on: the tasks of one split with the teacher's reference step."""

    tasks: list[dict[str, Any]]
    teacher_steps: list[str]
    split: str = "test"


def split_inputs(traces: Sequence[Mapping[str, Any]], split: str, n: int, seed: int) -> EvalInputs:
    """Up to ``n`` traces of ``split``'s families (a seeded sample, in family order) as tasks with the teacher's
    steps."""
    import random

    if split not in ("dev", "test"):
        raise ValueError(f"evaluate on dev or test, not {split!r}")
    pool = [t for t in traces if t["split"] == split]
    picked = sorted(random.Random(seed).sample(pool, min(n, len(pool))), key=lambda t: (t["family"], t["task_id"]))
    tasks = [{"id": t["task_id"], "language": t["language"], "family": t["family"], "split": t["split"],
              "instruction": t["instruction"], "code": t["code"], "expected": t["expected"]} for t in picked]
    return EvalInputs(tasks=tasks, teacher_steps=[t["step"] for t in picked], split=split)


def row_estimates(rows: Sequence[Mapping[str, Any]], split: str) -> dict[str, Estimate]:
    """Each metric of one policy's per-step rows as an :class:`~ml.stats.Estimate` (rates: Wilson; means: bootstrap).
    Scores of a step that did not parse count 0; lengths and the brevity penalty are over the steps that parsed."""
    parsed = [r for r in rows if r["parsed"]]
    return {
        "trace_parse_rate": rate([r["parsed"] for r in rows], split=split),
        "execution_success": rate([r["executed"] for r in rows], split=split),
        "action_fidelity": mean([r["action_score"] or 0.0 for r in rows], split=split),
        "state_faithfulness": mean([r["state_score"] or 0.0 for r in rows], split=split),
        "think_similarity": mean([r["think_similarity"] for r in rows], split=split),
        "brevity_penalty": mean([r["brevity_penalty"] for r in parsed], split=split),
        "think_tokens": mean([r["think_tokens"] for r in parsed], split=split),
        "state_tokens": mean([r["state_tokens"] for r in parsed], split=split),
        "reward": mean([r["reward"] for r in rows], split=split),
    }


_ROW_VALUE = {"execution_success": lambda r: float(r["executed"]), "reward": lambda r: float(r["reward"]),
              "trace_parse_rate": lambda r: float(r["parsed"]),
              "action_fidelity": lambda r: float(r["action_score"] or 0.0)}


def paired_differences(rows: Sequence[Mapping[str, Any]], better: str, worse: str, split: str,
                       metrics: Sequence[str] = COMPARED_METRICS) -> dict[str, Estimate]:
    """``{better}_minus_{worse}_{metric}``: the paired bootstrap difference of two policies' per-task values, aligned
    on ``task_id`` (both policies must have scored the same tasks)."""
    a = {r["task_id"]: r for r in rows if r["policy"] == better}
    b = {r["task_id"]: r for r in rows if r["policy"] == worse}
    if set(a) != set(b):
        raise ValueError(f"{better} and {worse} were scored on different tasks")
    ids = sorted(a)
    return {f"{better}_minus_{worse}_{m}": paired_difference([_ROW_VALUE[m](a[i]) for i in ids],
                                                             [_ROW_VALUE[m](b[i]) for i in ids], split=split)
            for m in metrics}


def kl_per_token(policy, reference, tokenizer, prompts: Sequence[str], completions: Sequence[str], *,
                 split: str = "test") -> Estimate:
    """Mean over the completions' tokens of log p_policy - log p_reference (a Monte-Carlo estimate of
    KL(policy || reference) on the policy's own outputs): a ratio of sums over completions, with its bootstrap
    interval over them (n = completions with tokens)."""
    import torch

    from ml.stats import ratio

    sums, counts = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if not c_ids:
            continue
        ids = torch.tensor([p_ids + c_ids], device=next(policy.parameters()).device)
        with torch.no_grad():
            logps = [torch.log_softmax(m(ids).logits[0, len(p_ids) - 1: -1].float(), -1)
                     .gather(1, ids[0, len(p_ids):, None]).squeeze(1) for m in (policy, reference)]
        sums.append(float((logps[0] - logps[1]).sum()))
        counts.append(len(c_ids))
    return ratio(sums, counts, split=split)


def score_steps(
    policy: str,
    inputs: EvalInputs,
    completions: Sequence[str],
    embed: Embed,
    tokenizer,
    execute: Callable[[list[dict]], list[Any]],
    weights: RewardWeights = DEFAULT_WEIGHTS,
) -> PolicyEval:
    """The metrics of one policy's steps (``completions``, one per task) against the teacher's: one row per step
    and the :func:`row_estimates` of those rows (on ``inputs.split``)."""
    teachers = [parse_step(t).step for t in inputs.teacher_steps]
    parsed = [parse_step(c) for c in completions]
    rewards: list[RewardBreakdown] = batch_rewards(list(completions), teachers, embed, weights)
    ok = [i for i, p in enumerate(parsed) if p.ok]
    reports = dict(zip(ok, execute([{**inputs.tasks[i], "action": parsed[i].step.action} for i in ok]),
                       strict=True))

    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    rows = []
    for i, (task, text) in enumerate(zip(inputs.tasks, completions, strict=True)):
        report, step = reports.get(i), parsed[i].step
        penalty = length_penalty(step.think, teachers[i].think) if step else None
        rows.append({
            "policy": policy, "task_id": task["id"], "family": task["family"], "split": task["split"],
            "completion": text, "parsed": parsed[i].ok, "parse_error": parsed[i].error,
            "reward": rewards[i].total, "action_score": rewards[i].action, "state_score": rewards[i].state,
            "think_score": rewards[i].think, "executed": bool(report and report.executed),
            "env_status": report.status if report else None, "diff": report.diff if report else None,
            # the similarity alone (the penalty is its own metric); 0 for a step that did not parse
            "think_similarity": rewards[i].think + penalty if step else 0.0, "brevity_penalty": penalty,
            "think_tokens": tokens(step.think) if step else None,
            "state_tokens": tokens(json.dumps(step.state, separators=(",", ":"))) if step else None,
        })
    metrics: dict[str, Estimate | float] = dict(row_estimates(rows, inputs.split))
    if policy == "teacher":
        metrics = {k: v for k, v in metrics.items() if k in TEACHER_METRICS}
    return PolicyEval(metrics=metrics, rows=rows)


def load_warmup(base_dir, adapter_dir, plan: ComputePlan | None = None):
    """The warm-up-only student (the base with the ``warmup/`` adapter of a student folder merged), or None when
    the student had no warm-up."""
    warmup = Path(adapter_dir) / "warmup"
    return load_merged(base_dir, warmup, plan) if (warmup / "adapter_config.json").is_file() else None


def load_student(base_dir, adapter_dir, plan: ComputePlan | None = None):
    """The student for generation: the base, its ``warmup/`` adapter merged (when the student has one), then the
    GRPO adapter at ``adapter_dir`` merged. Raises ``ValueError`` when an adapter does not fit."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    warmup = adapter_dir / "warmup"
    if (warmup / "adapter_config.json").is_file():
        model = load_merged(base_dir, warmup, plan)
    else:
        model = load_base(base_dir, plan if plan is not None else resolve_compute(device="cpu"))
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"{adapter_dir} holds no adapter (adapter_config.json missing)")
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def generate_steps(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 160,
                   batch_size: int = 8, constrained: bool = False) -> list[str]:
    """Greedy steps, ended at ``</state_update>`` or the end token (decoded; the tags survive, the end token
    does not). ``constrained``: held to :func:`ml.srl.trace.step_grammar` with llguidance, so that a step that
    ends within ``max_new_tokens`` parses."""
    from ml.evaluation.lm import generate_texts

    stop = [tokenizer.convert_tokens_to_ids("</state_update>"), tokenizer.eos_token_id]
    factory = None
    if constrained:
        from ml.dsl.constrained import JsonSchemaLogitsProcessor
        from ml.srl.trace import step_grammar

        grammar = step_grammar()

        def factory(lengths: list[int]):
            return JsonSchemaLogitsProcessor(tokenizer, [grammar] * len(lengths), lengths, tokenizer.eos_token_id,
                                             greedy=True)

    texts = generate_texts(model, tokenizer, prompts, max_new_tokens, do_sample=False, batch_size=batch_size,
                           eos_token_id=stop, processor_factory=factory)
    # the grammar ends at </state_update>; a constrained row's forced end token is not part of the step
    return [t.removesuffix(tokenizer.eos_token or "\0") for t in texts]


def evaluate_policy(policy: str, model, tokenizer, inputs: EvalInputs, embed: Embed,
                    execute: Callable[[list[dict]], list[Any]], *, reference=None, max_new_tokens: int = 160,
                    batch_size: int = 8, weights: RewardWeights = DEFAULT_WEIGHTS,
                    constrained: bool = False) -> PolicyEval:
    """Greedy steps of ``model`` on the inputs' tasks, scored; ``kl_per_token`` against ``reference`` when given.
    ``constrained``: also with grammar-constrained decoding, whose metrics get a ``_constrained`` suffix (its rows
    are not kept: the unconstrained steps are the policy's own)."""
    prompts = [task_prompt(tokenizer, t) for t in inputs.tasks]
    completions = generate_steps(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    scored = score_steps(policy, inputs, completions, embed, tokenizer, execute, weights)
    if reference is not None:  # pooled over all tokens of all steps, its interval from resampling the steps
        scored.metrics["kl_per_token"] = kl_per_token(model, reference, tokenizer, prompts, completions,
                                                      split=inputs.split)
    if constrained:
        held = generate_steps(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              constrained=True)
        extra = score_steps(policy, inputs, held, embed, tokenizer, execute, weights).metrics
        scored.metrics |= {f"{k}_constrained": extra[k] for k in ("trace_parse_rate", "execution_success",
                                                                   "action_fidelity", "reward")}
    return scored


def _measured(value: Estimate | float) -> bool:
    if isinstance(value, Estimate):
        return value.n > 0
    return not (isinstance(value, float) and math.isnan(value))


def metric_rows(policy: str, metrics: Mapping[str, Estimate | float]) -> dict[str, Estimate | float]:
    """``{policy}_{metric}`` names, as in ``eval_metrics``; estimates stay estimates, unmeasured ones are dropped."""
    return {f"{policy}_{k}": (v if isinstance(v, Estimate) else float(v)) for k, v in metrics.items() if _measured(v)}
