"""What every trainer here (SFT phases, DSL SFT, DPO; GRPO later) shares: precision flags from the compute plan,
the log callback that streams to the caller, resume-from-checkpoint, curve extraction from the log history, and
a trained adapter loaded merged into its base."""

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


def last_checkpoint(work_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` folder in ``work_dir`` (a re-run resumes from it), or None."""
    from transformers.trainer_utils import get_last_checkpoint

    work_dir = Path(work_dir)
    return get_last_checkpoint(str(work_dir)) if work_dir.is_dir() else None


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


def load_merged(base_dir, adapter_dir, plan: ComputePlan | None = None):
    """The model at ``base_dir`` with the LoRA adapter at ``adapter_dir`` merged in, for generation: merged weights
    generate several times faster than the adapter wrappers, with the same outputs. Raises ``ValueError`` with the
    reason when the adapter is missing or does not fit the base (see ``ml.training.sft.load_adapter``)."""
    from ml.training.sft import load_adapter  # sft imports this module

    return load_adapter(base_dir, adapter_dir, plan).merge_and_unload()


def load_for_generation(base_dir, adapter_dir=None, plan: ComputePlan | None = None):
    """(model, tokenizer) to generate with: the base with the adapter merged in (:func:`load_merged`), or the base
    alone; the tokenizer the adapter saved (its added tokens), else the base's. One rule for the completion server
    and the GGUF export, which must see the same model."""
    from ml.compute import resolve_compute
    from ml.training.ast_tokenizer import load_tokenizer
    from ml.training.sft import load_base  # sft imports this module

    plan = plan or resolve_compute(device="cpu", quantization="none")
    if adapter_dir is None:
        return load_base(base_dir, plan), load_tokenizer(str(base_dir))
    adapter_dir = Path(adapter_dir)
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    return (load_merged(base_dir, adapter_dir, plan),
            load_tokenizer(str(adapter_dir if has_tokenizer else base_dir)))
