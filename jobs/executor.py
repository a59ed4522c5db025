"""The executor of every astforge job: Dagster's default (multiprocess, or in-process by config) with two additions
around pools (``gpu``).

- Before the first step, runs of this machine whose processes are gone are failed and their slots freed
  (resources/recovery.py): a killed training run no longer blocks the next one for ever.
- A step that waits for a pool says so at INFO, with the limit and the runs holding the slots (Dagster's own line,
  ``Step blocked by limit for pool gpu``, is DEBUG and names nobody); while it waits, the dead-run check repeats
  every run-monitoring poll interval, so a holder killed meanwhile frees the slot too.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator, Mapping

import dagster as dg

from resources.recovery import HOST_TAG, DeadRun, describe_pool_wait, recover_dead_runs

_DEFAULT_POLL_S = 30


def _waited_pool(event: dg.DagsterEvent) -> str | None:
    """The pool of Dagster's ``Step blocked by limit for pool ...`` engine event; None for any other event."""
    if not event.is_engine_event or event.engine_event_data is None:
        return None
    pool = (event.engine_event_data.metadata or {}).get("pool")
    return None if pool is None else str(pool.value)


class _Watchdog(threading.Thread):
    """Repeats the dead-run check while a step waits; what it recovered is logged by the run's own thread."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, interval_s: float) -> None:
        super().__init__(name="astforge-dead-run-check", daemon=True)
        self.instance, self.run_id, self.interval_s = instance, run_id, interval_s
        self.stop = threading.Event()
        self.recovered: list[DeadRun] = []
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                found = recover_dead_runs(self.instance, exclude_run_id=self.run_id)
            except Exception:  # a storage hiccup must not end the run; the next poll tries again
                continue
            with self._lock:
                self.recovered += found

    def drain(self) -> list[DeadRun]:
        with self._lock:
            out, self.recovered = self.recovered, []
        return out


class PoolRecoveringExecutor(dg.Executor):
    def __init__(self, inner: dg.Executor) -> None:
        self._inner = inner

    @property
    def retries(self):
        return self._inner.retries

    @property
    def step_dependency_config(self):
        return self._inner.step_dependency_config

    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:
        instance, run_id, log = plan_context.instance, plan_context.run_id, plan_context.log
        try:
            instance.add_run_tags(run_id, {HOST_TAG: socket.gethostname()})
            recover_dead_runs(instance, log, exclude_run_id=run_id)
        except Exception as exc:  # a storage hiccup in the check must not fail the run it protects
            log.warning(f"dead-run check skipped: {type(exc).__name__}: {exc}")
        watchdog: _Watchdog | None = None
        try:
            for event in self._inner.execute(plan_context, execution_plan):
                yield event
                if watchdog is not None:
                    for dead in watchdog.drain():
                        log.warning(dead.message())
                pool = _waited_pool(event)
                if pool is None:
                    continue
                log.info(describe_pool_wait(instance, pool, event.step_key or "a step"))
                if watchdog is None:
                    poll = instance.run_monitoring_poll_interval_seconds if instance.run_monitoring_enabled else 0
                    watchdog = _Watchdog(instance, run_id, float(poll or _DEFAULT_POLL_S))
                    watchdog.start()
        finally:
            if watchdog is not None:
                watchdog.stop.set()


def _create(init_context: dg.InitExecutorContext) -> dg.Executor:
    inner = dg.multi_or_in_process_executor.executor_creation_fn(init_context)
    return PoolRecoveringExecutor(inner)


pool_recovering_executor = dg.ExecutorDefinition(
    name="pool_recovering_executor",
    config_schema=dg.multi_or_in_process_executor.config_schema,
    requirements=dg.multi_or_in_process_executor.get_requirements,
    executor_creation_fn=_create,
    description="Dagster's multi_or_in_process_executor (same config), which first fails runs of this machine "
    "whose processes are gone and frees their pool slots, and says at INFO why a step waits for a pool.",
)

EXECUTOR_ENV = "ASTFORGE_EXECUTOR"


def selected_executor(env: Mapping[str, str] = os.environ) -> dg.ExecutorDefinition:
    """The executor ``ASTFORGE_EXECUTOR`` names: ``local`` (the default) or ``k8s``.

    ``k8s`` is dagster-k8s's ``k8s_job_executor``: one Kubernetes Job per step, sized by the step's
    ``dagster-k8s/config`` tag (assets/k8s_tags.py); set in deploy/helm/values.yaml. It is not wrapped in the
    dead-run check: that judges runs by the pids of this machine, while under the K8sRunLauncher the daemon's run
    monitoring sees a dead run pod and frees its pool slots. Pools themselves hold across pods (instance storage).
    """
    name = (env.get(EXECUTOR_ENV) or "local").strip().lower()
    if name == "local":
        return pool_recovering_executor
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"{EXECUTOR_ENV}={env.get(EXECUTOR_ENV)!r} is not an executor: use 'local' (the default, "
                     "this machine's processes) or 'k8s' (a Kubernetes Job per step; see deploy/README.md)")


__all__ = ["EXECUTOR_ENV", "PoolRecoveringExecutor", "pool_recovering_executor", "selected_executor"]
