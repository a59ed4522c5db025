"""`dsl` group: schema-conditioned natural language → JSON AST. Teacher-made data (assets/dsl_data.py), a LoRA SFT
student, teacher evaluation, DPO on teacher verdicts and a report (assets/dsl_models.py); each asset's recipe is in
ml/dsl/recipe.py. This module gathers the group under its old name: ``from assets.dsl import ...`` keeps working."""

from assets.dsl_data import (
    DslDatasetConfig,
    DslDomainSpecsConfig,
    DslQueriesConfig,
    DslSchemasConfig,
    DslTrainingCorpusConfig,
    dsl_dataset,
    dsl_domain_specs,
    dsl_queries,
    dsl_schemas,
    dsl_training_corpus,
)
from assets.dsl_models import (
    DslBaseModelConfig,
    DslDpoConfig,
    DslDpoPairsConfig,
    DslEvalConfig,
    DslSftConfig,
    dsl_base_eval,
    dsl_base_model,
    dsl_dpo_adapter,
    dsl_dpo_eval,
    dsl_dpo_pairs,
    dsl_report,
    dsl_sft_adapter,
    dsl_sft_eval,
)

DSL_ASSETS = [dsl_domain_specs, dsl_schemas, dsl_queries, dsl_dataset, dsl_training_corpus, dsl_base_model,
              dsl_base_eval, dsl_sft_adapter, dsl_sft_eval, dsl_dpo_pairs, dsl_dpo_adapter, dsl_dpo_eval, dsl_report]

__all__ = [
    "DSL_ASSETS", "DslBaseModelConfig", "DslDatasetConfig", "DslDomainSpecsConfig", "DslDpoConfig", "DslDpoPairsConfig",
    "DslEvalConfig", "DslQueriesConfig", "DslSchemasConfig", "DslSftConfig", "DslTrainingCorpusConfig", "dsl_base_eval",
    "dsl_base_model", "dsl_dataset", "dsl_domain_specs", "dsl_dpo_adapter", "dsl_dpo_eval", "dsl_dpo_pairs",
    "dsl_queries", "dsl_report", "dsl_schemas", "dsl_sft_adapter", "dsl_sft_eval", "dsl_training_corpus",
]
