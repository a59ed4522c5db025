"""Dagster glue: each asset reads its inputs, calls ml/, writes artifacts and returns metadata."""

from assets.ast_first import ast_corpus, nl_ast_pairs
from assets.corpus import code_units, source_files

ALL_ASSETS = [source_files, code_units, ast_corpus, nl_ast_pairs]

__all__ = ["ALL_ASSETS", "ast_corpus", "code_units", "nl_ast_pairs", "source_files"]
