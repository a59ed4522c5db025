"""The srl student end to end, as ``srl_adapter`` and ``srl_ablation`` both run it: a warm-up (SFT on the teacher
traces, or a warm-up adapter reused) → GRPO → a student folder (the GRPO adapter, its warm-up in ``warmup/``) →
loaded (:func:`ml.srl.recipe.load_student`, as ``srl_eval`` loads it) and scored."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.compute import ComputePlan
from ml.srl.recipe import (
    DEFAULT_WEIGHTS,
    EvalInputs,
    GRPOResult,
    GRPOSettings,
    PolicyEval,
    StructuredReward,
    evaluate_policy,
    grpo_rows,
    load_student,
    train_grpo,
    warmup_pairs,
)
from ml.srl.reward import Embed, RewardWeights
from ml.training.glue import OnLog


@dataclass
class StudentTraining:
    grpo: GRPOResult
    sft: Any = None  # train_lora_sft's result when the warm-up was trained here


def train_student(base_dir, tokenizer, traces: Sequence[Mapping[str, Any]], out_dir, work_dir,
                  settings: GRPOSettings, plan: ComputePlan, reward: StructuredReward, *, warmup_config=None,
                  warmup_from=None, on_log: OnLog | None = None) -> StudentTraining:
    """Make ``out_dir`` a student folder. The warm-up adapter goes to ``out_dir/warmup``: trained on ``traces``
    with ``warmup_config`` (an ``ml.training.sft_trainer.PhaseConfig``), or copied from ``warmup_from`` (a student's
    ``warmup/``, when it holds an adapter), or none (GRPO starts from the base). Then GRPO on ``traces``' prompts
    over the base with that warm-up merged, its adapter saved at ``out_dir``. Checkpoints under ``work_dir``
    (``warmup/``, ``grpo/``: a re-run resumes)."""
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    start, sft = None, None
    if warmup_config is not None:
        from ml.training.lora_sft import train_lora_sft

        sft = train_lora_sft(base_dir, tokenizer, warmup_pairs(tokenizer, traces), [], out_dir / "warmup",
                             work_dir / "warmup", warmup_config, plan, on_log=on_log)
        start = out_dir / "warmup"
    elif warmup_from is not None and (Path(warmup_from) / "adapter_config.json").is_file():
        # the same adapter files: GRPO continues exactly the warm-up it was given, and the folder loads alone
        shutil.copytree(warmup_from, out_dir / "warmup")
        start = out_dir / "warmup"
    grpo = train_grpo(base_dir, start, tokenizer, grpo_rows(tokenizer, traces), out_dir, work_dir / "grpo", settings,
                      plan, reward, on_log=on_log)
    return StudentTraining(grpo=grpo, sft=sft)


def evaluate_student(base_dir, student_dir, plan: ComputePlan, tokenizer, inputs: EvalInputs, embed: Embed,
                     execute: Callable[[list[dict]], list[Any]], *, max_new_tokens: int = 160,
                     weights: RewardWeights = DEFAULT_WEIGHTS) -> PolicyEval:
    """The student of ``student_dir`` loaded (:func:`load_student`) and scored as policy ``student`` on ``inputs``
    with ``weights``; the model is released when this returns."""
    student = load_student(base_dir, student_dir, plan)
    return evaluate_policy("student", student, tokenizer, inputs, embed, execute, max_new_tokens=max_new_tokens,
                           weights=weights)
