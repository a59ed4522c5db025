"""Training outside the step's process: ``torchrun`` across N processes, launched through Dagster Pipes.

The asset's ``build(tmp)`` calls :func:`train_phase1_through_pipes` with its staging folder. The inputs go to
``_launch/inputs.json`` inside it, the worker (resources/pipes_phase1.py) trains into the staging folder itself,
and ``_launch`` is removed before the folder is versioned: a Pipes run commits the same files as an in-process one.
A failed worker raises ``dg.Failure`` out of ``build``, so publish_folder drops the staging folder and the previous
adapter stays the registered one.
"""

import json
import os
import re
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import dagster as dg

# dagster 1.13 raises it from PipesSubprocessClient.run without exporting it at the top level.
from dagster._core.errors import DagsterPipesExecutionError

from ml.compute import ComputePlan

Launcher = Literal["in_process", "pipes"]
# Config fields that choose where training runs, not what it trains: kept out of PhaseConfig and checkpoint keys.
LAUNCH_SETTINGS = frozenset({"launcher", "nproc_per_node"})
PHASE1_WORKER = "resources.pipes_phase1"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
STDERR_TAIL_LINES = 15


def torchrun_command(module: str, inputs: Path, nproc_per_node: int, log_dir: Path) -> list[str]:
    """``torchrun`` from this interpreter (so the venv's torch runs it), each rank's stderr also kept under
    ``log_dir`` so a failure can quote it."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
            f"--log-dir={log_dir}", "--redirects=2", "--tee=2", "-m", module, str(inputs)]


def checkpoint_world(nproc_per_node: int) -> dict:
    """The checkpoint-key part for the number of processes: a data-parallel run's steps see N times the batches,
    so its checkpoints are not a one-process run's (one process keeps the in-process key, and resumes it)."""
    return {"world_size": nproc_per_node} if nproc_per_node > 1 else {}


def thread_env(nproc_per_node: int) -> dict[str, str]:
    """torchrun gives each rank one CPU thread unless OMP_NUM_THREADS is set: share the machine's cores instead."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"OMP_NUM_THREADS": str(max(1, cores // nproc_per_node))}


def train_phase1_through_pipes(context: dg.AssetExecutionContext, *, staging: Path, nproc_per_node: int,
                               base_dir: str, texts: list[str], eval_texts: list[str], work_dir: Path,
                               phase_config, plan: ComputePlan, what: str):
    """``ml.training.sft.train_phase1`` in ``nproc_per_node`` torchrun processes; the adapter lands in ``staging``
    and the ``TrainResult`` comes back through Pipes. Checkpoints go to ``work_dir`` as in process: a re-run after
    a crash resumes from the last one."""
    launch = staging / "_launch"
    launch.mkdir()
    inputs = launch / "inputs.json"
    inputs.write_text(json.dumps({
        "what": what, "base_dir": str(base_dir), "tokenizer_dir": str(base_dir), "texts": texts,
        "eval_texts": eval_texts, "out_dir": str(staging), "scratch_dir": str(launch / "scratch"),
        "work_dir": str(work_dir), "phase_config": asdict(phase_config), "compute_plan": asdict(plan),
    }))
    command = torchrun_command(PHASE1_WORKER, inputs, nproc_per_node, launch / "logs")
    context.log.info(f"{what}: {' '.join(command[1:6])} -m {PHASE1_WORKER} through Dagster Pipes")
    try:
        invocation = dg.PipesSubprocessClient(cwd=str(PROJECT_ROOT)).run(
            context=context, command=command, env=thread_env(nproc_per_node))
    except DagsterPipesExecutionError as exc:
        raise dg.Failure(
            description=crash_message(what, nproc_per_node, str(exc), launch / "logs"),
            metadata={"launcher": "pipes", "processes": nproc_per_node, "checkpoints": str(work_dir)},
        ) from exc
    finally:
        shutil.rmtree(launch, ignore_errors=True)
    return _reported_result(invocation, staging, what)


def crash_message(what: str, nproc_per_node: int, error: str, log_dir: Path) -> str:
    found = re.search(r"code (-?\d+)", error)
    code = found.group(1) if found else "unknown"
    head = (f"{what}: the torchrun job ({nproc_per_node} processes, launched through Dagster Pipes) failed with exit "
            f"code {code}; nothing was published, the previous adapter stays the latest.")
    tails = stderr_tails(log_dir)
    if not tails:
        return head + " No worker wrote to stderr: torchrun's own output is in the step's stderr."
    return head + "".join(f"\nLast stderr lines of rank {rank}:\n{tail}" for rank, tail in tails.items())


def stderr_tails(log_dir: Path, lines: int = STDERR_TAIL_LINES) -> dict[int, str]:
    """Rank -> the last ``lines`` lines of its stderr (torchrun's ``--log-dir`` layout ``.../attempt_K/RANK/``);
    the ranks that died with a traceback when any did, else every rank that wrote something."""
    logs: dict[int, list[str]] = {}
    for path in sorted(log_dir.glob("**/stderr.log")):
        if path.parent.name.isdigit():
            logs[int(path.parent.name)] = [s for s in path.read_text(errors="replace").splitlines() if s.strip()]
    crashed = {rank: text for rank, text in logs.items() if any(s.startswith("Traceback") for s in text)}
    chosen = crashed or {rank: text for rank, text in logs.items() if text}
    return {rank: "\n".join(text[-lines:]) for rank, text in sorted(chosen.items())}


def _reported_result(invocation, staging: Path, what: str):
    from ml.training.sft_trainer import TrainResult

    reported = [r for r in invocation.get_results(implicit_materializations=False)
                if isinstance(r, dg.MaterializeResult) and "train_result" in (r.metadata or {})]
    if not reported:
        raise dg.Failure(f"{what}: the torchrun job exited cleanly but rank 0 reported no training result through "
                         "Pipes (see the step's stderr)")
    data = dict(reported[0].metadata["train_result"].value)
    adapter = Path(reported[0].metadata["adapter_path"].value)
    if adapter.resolve() != staging.resolve() or not (staging / "adapter_model.safetensors").is_file():
        raise dg.Failure(f"{what}: rank 0 reported an adapter at {adapter}, but {staging} holds no "
                         "adapter_model.safetensors")
    data["curve"] = [(int(step), str(metric), float(value)) for step, metric, value in data["curve"]]
    return TrainResult(**data)
