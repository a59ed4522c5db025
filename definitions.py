"""astforge's Dagster definitions: `dagster dev` (see workspace.yaml) and `make demo` load this."""

import dagster as dg

from assets import ALL_ASSETS
from jobs import ALL_JOBS, corpus_change_sensor, daily_ast_eval, daily_dsl_eval
from jobs.executor import selected_executor
from resources import ArtifactStore, CorpusResource, DuckDBCatalog
from resources.compute import ComputeResource
from resources.teacher import TeacherResource


def build_resources(**overrides) -> dict:
    resources = {
        "catalog": DuckDBCatalog(),
        "artifacts": ArtifactStore(),
        "corpus": CorpusResource(),
        "compute": ComputeResource(),
        "teacher": TeacherResource(),
    }
    resources.update(overrides)
    return resources


defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=ALL_JOBS,
    schedules=[daily_ast_eval, daily_dsl_eval],
    sensors=[corpus_change_sensor],
    resources=build_resources(),
    # Dagster's default executor, plus: a run killed while holding a pool slot (gpu) does not block later runs;
    # ASTFORGE_EXECUTOR=k8s: a Kubernetes Job per step (deploy/).
    executor=selected_executor(),
)
