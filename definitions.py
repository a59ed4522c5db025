"""astforge's Dagster definitions: `dagster dev` (see workspace.yaml) and `make demo` load this."""

import dagster as dg

from assets import ALL_ASSETS
from jobs import ast_data_job, corpus_change_sensor
from resources import ArtifactStore, CorpusResource, DuckDBCatalog


def build_resources(**overrides) -> dict:
    resources = {"catalog": DuckDBCatalog(), "artifacts": ArtifactStore(), "corpus": CorpusResource()}
    resources.update(overrides)
    return resources


defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[ast_data_job],
    sensors=[corpus_change_sensor],
    resources=build_resources(),
)
