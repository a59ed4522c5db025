"""Phase 1 training as the external side of Dagster Pipes: one process per torchrun rank.

``assets/pipes_training.py`` writes the inputs (texts, base folder, the resolved ``PhaseConfig`` and compute plan,
the output and checkpoint folders) into a JSON file and launches, through ``dagster.PipesSubprocessClient``::

    python -m torch.distributed.run --standalone --nproc_per_node N -m resources.pipes_phase1 INPUTS.json

Every rank calls the same ``ml.training.sft.train_phase1`` as the in-process asset: Hugging Face's Trainer reads
torchrun's ``LOCAL_RANK``/``WORLD_SIZE`` and trains data-parallel (gloo on CPU, NCCL on CUDA). Rank 0 alone opens
Pipes, streams the log entries, saves the adapter into the staging folder and reports the training result; the
other ranks save into scratch folders that the launcher drops.

This module speaks the Pipes protocol through ``dagster_pipes`` and imports nothing of ``dagster`` itself: it is
meant to run where no orchestrator does (a pod launched by ``PipesK8sClient``, another machine). It lives here rather
than in ml/ (which must stay free of orchestration); ``python -m`` still loads ``resources/__init__``, which imports
dagster, so the image that runs it is the astforge image.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

# Fault injection for the tests and for drills: the rank named here raises once it has logged a training step, so
# the launcher's handling of a crashed worker can be exercised on a real torchrun job.
FAULT_RANK_ENV = "ASTFORGE_FAULT_PHASE1_RANK"

OnLog = Callable[[int, dict], None]


def _faulty_rank() -> int | None:
    value = os.environ.get(FAULT_RANK_ENV, "").strip()
    return int(value) if value else None


def _crash_after_first_step(rank: int) -> OnLog:
    def on_log(step: int, logs: dict) -> None:
        if step >= 1:  # step 0 is the evaluation before training
            raise RuntimeError(f"injected fault ({FAULT_RANK_ENV}={rank}): rank {rank} stops after step {step}")

    return on_log


def _log_to(logger, what: str) -> OnLog:
    """The in-process asset's progress lines (assets/publish.log_progress: ``step N/MAX``), sent through Pipes."""
    from ml.training.glue import MAX_STEPS

    def on_log(step: int, logs: dict) -> None:
        total = logs.get(MAX_STEPS)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in logs.items() if isinstance(v, int | float) and k != MAX_STEPS)
        logger.info(f"{what} step {step}{f'/{total}' if total else ''}: {shown}")

    return on_log


def _chain(callbacks: Sequence[OnLog]) -> OnLog | None:
    if not callbacks:
        return None

    def on_log(step: int, logs: dict) -> None:
        for callback in callbacks:
            callback(step, logs)

    return on_log


def run(inputs_path: Path) -> None:
    from ml.compute import ComputePlan
    from ml.models.loading import load_tokenizer
    from ml.training.sft import train_phase1
    from ml.training.sft_trainer import PhaseConfig

    spec = json.loads(Path(inputs_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    # Every rank runs _run's save at the end; only rank 0's copy is the artifact, the others must not race it.
    out_dir = Path(spec["out_dir"]) if rank == 0 else Path(spec["scratch_dir"]) / f"rank{rank}"
    if rank == 0:
        from dagster_pipes import open_dagster_pipes

        pipes_cm = open_dagster_pipes()
    else:
        pipes_cm = nullcontext(None)
    with pipes_cm as pipes:
        callbacks: list[OnLog] = []
        if pipes is not None:
            callbacks.append(_log_to(pipes.log, spec["what"]))
            pipes.log.info(f"{spec['what']}: rank 0 of {world_size}, {len(spec['texts'])} sequences")
        if _faulty_rank() == rank:
            callbacks.append(_crash_after_first_step(rank))
        tokenizer = load_tokenizer(spec["tokenizer_dir"])
        result = train_phase1(
            spec["base_dir"], tokenizer, spec["texts"], spec["eval_texts"], out_dir, spec["work_dir"],
            PhaseConfig(**spec["phase_config"]), ComputePlan(**spec["compute_plan"]), on_log=_chain(callbacks),
        )
        if pipes is not None:
            pipes.report_asset_materialization(metadata={
                "train_result": {"raw_value": asdict(result), "type": "json"},
                "adapter_path": {"raw_value": str(out_dir), "type": "path"},
                "world_size": {"raw_value": world_size, "type": "int"},
            })


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resources.pipes_phase1", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", type=Path, help="the JSON file assets/pipes_training.py staged")
    run(parser.parse_args(argv).inputs)


if __name__ == "__main__":
    main()
