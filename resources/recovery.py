"""Runs whose process is gone: mark them failed and give their pool slots back.

A run killed with SIGKILL (Ctrl-C twice, the OOM killer, a reboot) never records its end: it stays STARTED and keeps
its concurrency slots, so every later step in its pool (``gpu``: one slot) waits for ever. Dagster's run monitoring
(on in config/dagster.yaml) finds dead run workers only for launchers that can ask their workers (k8s, docker, ECS);
the default launcher, ``dagster asset materialize`` and ``dg.materialize`` run steps in local processes, so here
the operating system is asked: a local run none of whose recorded processes is alive is dead.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dagster as dg

# Set by jobs/executor.py on every run it orchestrates: only runs of this machine are judged by pid.
HOST_TAG = "astforge/host"
# A pid seen in an event is the same process only if that process started before the event (plus clock slack).
_PID_REUSE_SLACK_S = 5.0


@dataclass(frozen=True)
class DeadRun:
    run_id: str
    job_name: str
    pids: tuple[int, ...]
    slots: dict[str, int]  # pool -> slots the run held

    def message(self) -> str:
        held = ", ".join(f"{n} in pool '{p}'" for p, n in sorted(self.slots.items()))
        return (
            f"run {self.run_id} ({self.job_name}) was STARTED but its processes (pid "
            f"{', '.join(map(str, self.pids))}) are gone (killed, out of memory, or the machine restarted): "
            f"marked it failed" + (f" and freed its slots ({held})" if held else "")
        )


@cache
def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def process_alive(pid: int, seen_at: float | None = None) -> bool:
    """Whether ``pid`` is a live process that was already running at ``seen_at`` (a Unix time): a pid that a newer
    process reuses after a reboot or a long time does not count. Zombies (exited, not yet reaped) are dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(pid, 0) is all there is
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces: cut after it
    if fields[0] in ("Z", "X"):
        return False
    boot = _boot_time()
    if seen_at is not None and boot is not None:
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        if started > seen_at + _PID_REUSE_SLACK_S:
            return False
    return True


def _judged_here(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    host = run.tags.get(HOST_TAG)
    if host is not None:
        return host == socket.gethostname()
    # Untagged (``dg.materialize``): only an instance whose storage is a local file runs here.
    from dagster._core.storage.runs import SqliteRunStorage

    return isinstance(instance.run_storage, SqliteRunStorage)


def _processes(instance: dg.DagsterInstance, run_id: str) -> list[tuple[int, float]]:
    """``(pid, when)`` of each process that worked for the run: the one that started it, and each step's."""
    entries = instance.all_logs(run_id, of_type={dg.DagsterEventType.RUN_START, dg.DagsterEventType.STEP_START})
    return sorted({(e.dagster_event.pid, e.timestamp) for e in entries
                   if e.dagster_event is not None and e.dagster_event.pid is not None})


def slots_held(instance: dg.DagsterInstance, run_id: str) -> dict[str, int]:
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    held = {}
    for pool in sorted(storage.get_concurrency_keys()):
        n = sum(s.run_id == run_id for s in storage.get_concurrency_info(pool).claimed_slots)
        if n:
            held[pool] = n
    return held


def find_dead_runs(instance: dg.DagsterInstance, exclude_run_id: str | None = None) -> list[DeadRun]:
    dead = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        run = record.dagster_run
        if run.run_id == exclude_run_id or not _judged_here(instance, run):
            continue
        procs = _processes(instance, run.run_id)
        if not procs or any(process_alive(pid, at) for pid, at in procs):
            continue
        pids = tuple(sorted({pid for pid, _ in procs}))
        dead.append(DeadRun(run.run_id, run.job_name, pids, slots_held(instance, run.run_id)))
    return dead


def recover_dead_runs(
    instance: dg.DagsterInstance, log: logging.Logger | dg.DagsterLogManager | None = None,
    exclude_run_id: str | None = None,
) -> list[DeadRun]:
    """Mark each dead local run failed (its own log says why) and free its concurrency slots; one warning each to
    ``log`` when given. Call it before work that claims a pool slot: a run's executor does (jobs/executor.py); so
    should a script that runs ``dg.materialize`` on a persistent instance (demo.py)."""
    dead = find_dead_runs(instance, exclude_run_id)
    for d in dead:
        run = instance.get_run_by_id(d.run_id)
        if run is None or run.status != dg.DagsterRunStatus.STARTED:
            continue  # it ended while we looked
        instance.report_run_failed(run, d.message())
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(d.run_id)
        if log is not None:
            log.warning(d.message())
    return dead


def describe_pool_wait(instance: dg.DagsterInstance, pool: str, step_key: str) -> str:
    """One line for a step that waits for ``pool``: the limit, and which runs and steps hold its slots."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    holders = []
    for slot in info.claimed_slots:
        run = instance.get_run_by_id(slot.run_id)
        status = run.status.value if run else "unknown"
        holders.append(f"run {slot.run_id} ({status}) step {slot.step_key}")
    limit = info.limit if info.limit is not None else info.slot_count
    return (
        f"{step_key} waits for a slot in pool '{pool}' (limit {limit}; held by "
        f"{'; '.join(holders) or 'no run yet'}). It starts when a slot frees; a holder whose process is gone is "
        f"failed and its slot freed automatically. The limit is `concurrency: pools:` in $DAGSTER_HOME/dagster.yaml."
    )
