"""Jobs over the language slices: the data graph alone, the whole AST-first graph, and its evaluation."""

import dagster as dg

from assets.partitions import language_slices

DATA_SELECTION = dg.AssetSelection.groups("corpus") | dg.AssetSelection.assets("ast_corpus", "nl_ast_pairs")
# on demand only: it trains two more models per run, so the slice's jobs (and `make demo`) leave it out
AST_VS_TEXT = dg.AssetSelection.assets("ast_vs_text_eval")

ast_data_job = dg.define_asset_job(
    "ast_data_job",
    selection=DATA_SELECTION,
    partitions_def=language_slices,
    description="Source files -> code units -> AST corpus -> NL/AST pairs for one language slice.",
)

ast_first_job = dg.define_asset_job(
    "ast_first_job",
    selection=dg.AssetSelection.groups("corpus", "ast_first") - AST_VS_TEXT,
    partitions_def=language_slices,
    description="Data, tokenizer, base model, Phase 1 and Phase 2 adapters and evaluation for one slice.",
)

ast_model_job = dg.define_asset_job(
    "ast_model_job",
    selection=dg.AssetSelection.groups("ast_first") - DATA_SELECTION - AST_VS_TEXT,
    partitions_def=language_slices,
    description="Tokenizer, base model, Phase 1/Phase 2 adapters and evaluation, on the slice's current data.",
)

ast_eval_job = dg.define_asset_job(
    "ast_eval_job",
    selection=dg.AssetSelection.assets("ast_eval"),
    partitions_def=language_slices,
    description="Re-evaluate the current adapters of a slice.",
)

ast_vs_text_job = dg.define_asset_job(
    "ast_vs_text_job",
    selection=AST_VS_TEXT,
    partitions_def=language_slices,
    description="AST-first vs plain text on the python slice's current base and data (two arms trained and measured).",
)

models_job = dg.define_asset_job(
    "models_job",
    selection=dg.AssetSelection.groups("models"),
    description="Convert the packaged pretrained bases (GGUF) into Hugging Face folders; a no-op when done before.",
)

dsl_job = dg.define_asset_job(
    "dsl_job",
    selection=dg.AssetSelection.groups("dsl"),
    description="Schema-conditioned NL -> JSON AST: teacher data, SFT student, evaluation, DPO, report.",
)

dsl_eval_job = dg.define_asset_job(
    "dsl_eval_job",
    selection=dg.AssetSelection.assets("dsl_base_eval", "dsl_sft_eval", "dsl_dpo_eval", "dsl_report"),
    description="Re-evaluate the current DSL adapters (e.g. after changing the teacher) and rebuild the report.",
)

autocomplete_data_job = dg.define_asset_job(
    "autocomplete_data_job",
    selection=dg.AssetSelection.assets("fim_samples", "domain_corpus"),
    partitions_def=language_slices,
    description="FIM and comment-to-code rows (and held-out infilling tasks) of one slice: from its code units "
                "(fim_samples) and from its domain examples (domain_corpus, AWS CDK by default).",
)

autocomplete_job = dg.define_asset_job(
    "autocomplete_job",
    selection=dg.AssetSelection.groups("autocomplete") - dg.AssetSelection.assets("fim_samples", "domain_corpus"),
    description="Base with FIM tokens (M0), Stage A (M1), Stage B (M2), M0/M1/M2 evaluation and report, on the "
                "current fim_samples and domain_corpus of the slices in the stages' `languages`.",
)

gguf_export_job = dg.define_asset_job(
    "gguf_export_job",
    selection=dg.AssetSelection.groups("serving"),
    description="Export the current autocomplete M1/M2 and DSL student as GGUF (f16 + quantized, Ollama Modelfile) "
                "and check that each answers like its Hugging Face model.",
)

srl_job = dg.define_asset_job(
    "srl_job",
    selection=dg.AssetSelection.groups("srl") - dg.AssetSelection.assets("srl_ablation"),
    partitions_def=language_slices,
    description="Rewrite tasks, sandboxed teacher traces, the base with step tags, the warm-up + GRPO student and "
                "the base / student / teacher evaluation on held-out rewrite families, for one slice.",
)

srl_eval_job = dg.define_asset_job(
    "srl_eval_job",
    selection=dg.AssetSelection.assets("srl_eval"),
    partitions_def=language_slices,
    description="Re-evaluate a slice's current SRL student against the base and the teacher.",
)

srl_ablation_job = dg.define_asset_job(
    "srl_ablation_job",
    selection=dg.AssetSelection.assets("srl_ablation"),
    partitions_def=language_slices,
    description="The GRPO ablation sweep (lambda, malformed penalty, reward weights) on a slice's current warm-up "
                "adapter, compared in one report.",
)

graph_repair_job = dg.define_asset_job(
    "graph_repair_job",
    selection=dg.AssetSelection.groups("graph_repair"),
    partitions_def=language_slices,
    description="Abstract syntax graphs of a slice's code_units, graded corruptions, the Graph U-Net and the "
                "same-size Transformer, and their held-out repair report.",
)
