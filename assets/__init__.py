"""Dagster glue: each asset reads its inputs, calls ml/, writes artifacts and returns metadata."""

from assets.ast_first import ast_corpus, nl_ast_pairs
from assets.ast_models import (
    ast_base_model,
    ast_eval,
    ast_phase1_adapter,
    ast_phase2_adapter,
    ast_tokenizer,
)
from assets.ast_vs_text import ast_vs_text_eval
from assets.autocomplete import AUTOCOMPLETE_MODEL_ASSETS
from assets.autocomplete_data import AUTOCOMPLETE_DATA_ASSETS
from assets.corpus import code_units, source_files
from assets.dsl import DSL_ASSETS
from assets.gguf_exports import GGUF_ASSETS
from assets.graph_repair import GRAPH_REPAIR_ASSETS
from assets.models import MODELS_ASSETS
from assets.srl import SRL_ASSETS as _SRL
from assets.srl_ablation import srl_ablation

SRL_ASSETS = _SRL + [srl_ablation]  # per slice, except the shared srl_base_model
DATA_ASSETS = [source_files, code_units, ast_corpus, nl_ast_pairs]
MODEL_ASSETS = [ast_tokenizer, ast_base_model, ast_phase1_adapter, ast_phase2_adapter, ast_eval]
AST_ASSETS = DATA_ASSETS + MODEL_ASSETS  # partitioned by language slice
# on demand only (trains two models per run): no job but its own selects it
AST_EXPERIMENT_ASSETS = [ast_vs_text_eval]
AUTOCOMPLETE_ASSETS = AUTOCOMPLETE_DATA_ASSETS + AUTOCOMPLETE_MODEL_ASSETS  # fim_samples per slice, the rest not
ALL_ASSETS = (MODELS_ASSETS + AST_ASSETS + AST_EXPERIMENT_ASSETS + DSL_ASSETS + AUTOCOMPLETE_ASSETS + GGUF_ASSETS
              + SRL_ASSETS + GRAPH_REPAIR_ASSETS)

__all__ = ["ALL_ASSETS", "AST_ASSETS", "AST_EXPERIMENT_ASSETS",
           "AUTOCOMPLETE_ASSETS", "DATA_ASSETS", "DSL_ASSETS", "GGUF_ASSETS",
           "GRAPH_REPAIR_ASSETS",
           "MODELS_ASSETS", "MODEL_ASSETS", "SRL_ASSETS"]
