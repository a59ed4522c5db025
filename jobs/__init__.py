"""Jobs, schedules and sensors."""

from jobs.data import (
    ast_data_job,
    ast_eval_job,
    ast_first_job,
    ast_model_job,
    ast_vs_text_job,
    autocomplete_data_job,
    autocomplete_job,
    dsl_eval_job,
    dsl_job,
    gguf_export_job,
    graph_repair_job,
    models_job,
    srl_ablation_job,
    srl_eval_job,
    srl_job,
)
from jobs.schedules import daily_ast_eval, daily_dsl_eval
from jobs.sensors import corpus_change_sensor

ALL_JOBS = [models_job, ast_data_job, ast_model_job, ast_first_job, ast_eval_job, ast_vs_text_job, dsl_job,
            dsl_eval_job,
            autocomplete_data_job, autocomplete_job, gguf_export_job, srl_job, srl_eval_job,
            srl_ablation_job, graph_repair_job]

__all__ = ["ALL_JOBS", "ast_data_job", "ast_eval_job", "ast_first_job", "ast_model_job", "ast_vs_text_job",
           "autocomplete_data_job",
           "autocomplete_job", "corpus_change_sensor",
           "daily_ast_eval", "daily_dsl_eval", "dsl_eval_job", "dsl_job", "gguf_export_job", "graph_repair_job",
           "models_job",
           "srl_ablation_job", "srl_eval_job", "srl_job"]
