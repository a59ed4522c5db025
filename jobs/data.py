"""The data job (corpus + the data half of ast_first), one run per language slice."""

import dagster as dg

from assets.partitions import language_slices

DATA_SELECTION = dg.AssetSelection.groups("corpus") | dg.AssetSelection.assets(
    "ast_corpus", "nl_ast_pairs"
)

ast_data_job = dg.define_asset_job(
    "ast_data_job",
    selection=DATA_SELECTION,
    partitions_def=language_slices,
    description="Source files -> code units -> AST corpus -> NL/AST pairs for one language slice.",
)
