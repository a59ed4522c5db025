"""What every trainer here (SFT phases, DSL SFT, DPO; GRPO later) shares: precision flags from the compute plan,
the log callback that streams to the caller, resume-from-checkpoint, curve extraction from the log history.
Loading models (base, adapter, merged) is ml.models.loading's."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ml.compute import ComputePlan

OnLog = Callable[[int, dict], None]


def precision_args(plan: ComputePlan) -> dict:
    """The TRL/transformers config flags for ``plan``: bf16 (on CUDA, or autocast on a CPU with bfloat16 units, which
    ml.compute only allows where it exists), fp16 on CUDA only, and ``use_cpu``."""
    return {
        "bf16": plan.dtype == "bf16",
        "fp16": plan.device == "cuda" and plan.dtype == "fp16",
        "use_cpu": plan.device == "cpu",
    }


MAX_STEPS = "max_steps"  # added to each log entry: the run's planned steps, for a progress bar


def log_callback(on_log: OnLog):
    """A ``TrainerCallback`` that hands each log entry to ``on_log(step, logs)``, with the run's ``max_steps``."""
    from transformers import TrainerCallback

    class StreamLogs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                on_log(int(state.global_step), {**logs, MAX_STEPS: int(state.max_steps)})

    return StreamLogs()


def quiet_printer(trainer) -> None:
    """Drop transformers' stdout printer: the caller streams the logs itself (Dagster's log, a bench's JSON)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def last_checkpoint(work_dir: Path, args=None) -> str | None:
    """The newest ``checkpoint-N`` folder in ``work_dir`` (a re-run resumes from it), or None. Given the run's
    ``TrainingArguments``, refuses (``ValueError``, saying why and what to do) a checkpoint that a resume with
    ``args`` would not continue faithfully: see :func:`resume_refusal`."""
    from transformers.trainer_utils import get_last_checkpoint

    work_dir = Path(work_dir)
    checkpoint = get_last_checkpoint(str(work_dir)) if work_dir.is_dir() else None
    refusal = resume_refusal(checkpoint, args) if checkpoint is not None and args is not None else None
    if refusal:
        raise ValueError(refusal)
    return checkpoint


def resume_refusal(checkpoint: str | Path, args) -> str | None:
    """Why resuming ``checkpoint`` with ``args`` would not be the run ``args`` describe, or None when it would.

    Trainer rebuilds the learning-rate schedule for ``args.max_steps`` and then restores the checkpoint's scheduler
    step. When the checkpoint was trained toward another ``max_steps`` and the schedule depends on it (linear or
    cosine decay, a warmup ratio), the steps already taken had other learning rates than the new schedule gives
    them, and the rest restarts the decay mid-run (a cosine decayed to 0 at step 2 jumps back to half the peak):
    the result is neither the shorter run nor the longer one. A schedule that does not depend on ``max_steps``
    (``constant``, a warmup counted in steps) continues exactly, so a longer run may resume it."""
    import json

    state_file = Path(checkpoint) / "trainer_state.json"
    if args.max_steps <= 0 or not state_file.is_file():  # an epoch-based run: its planned steps are not in args
        return None
    state = json.loads(state_file.read_text())
    planned, done = int(state.get("max_steps", 0)), int(state.get("global_step", 0))
    if planned in (0, args.max_steps):
        return None
    had, would = _learning_rates(args, planned, done), _learning_rates(args, args.max_steps, done)
    changed = [(step, a, b) for step, (a, b) in enumerate(zip(had, would, strict=True))
               if abs(a - b) > 1e-9 * max(abs(a), abs(b), 1e-30)]
    if not changed:  # the steps taken are those of a max_steps=args.max_steps run: the rest follows its schedule
        return None
    step, had_lr, new_lr = changed[0]
    schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    return (f"{checkpoint} was trained toward max_steps={planned} ({done} steps done) with the {schedule} "
            f"learning-rate schedule, which depends on max_steps: resuming it with max_steps={args.max_steps} would "
            f"not continue that run (step {step} was taken at learning rate {had_lr:.3g}, a {args.max_steps}-step "
            f"run takes it at {new_lr:.3g}, and the rest of the schedule would restart from there). Set max_steps "
            f"back to {planned} to resume it, or delete {Path(checkpoint).parent} (or start a new version) to train "
            f"{args.max_steps} steps from the start.")


def _learning_rates(args, max_steps: int, steps: int) -> list[float]:
    """The learning rates of the first ``steps`` optimizer steps of a ``max_steps`` run: the scheduler Trainer
    builds (``Trainer.create_scheduler``), stepped on a one-parameter optimizer."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer,
                              num_warmup_steps=args.get_warmup_steps(max_steps), num_training_steps=max_steps,
                              scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    rates = []
    for _ in range(steps):
        rates.append(float(scheduler.get_last_lr()[0]))
        optimizer.step()
        scheduler.step()
    return rates


def curve(log_history: Iterable[dict], names: Iterable[str], prefixes: tuple[str, ...] = ()) -> list[tuple]:
    """``(step, metric, value)`` for every numeric entry named in ``names`` or starting with one of ``prefixes``."""
    names = set(names)
    out: list[tuple[int, str, float]] = []
    for entry in log_history:
        step = int(entry.get("step", 0))
        for key, value in entry.items():
            if (key in names or (prefixes and key.startswith(prefixes))) and isinstance(value, int | float):
                out.append((step, key, float(value)))
    return out
