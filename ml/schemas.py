"""Column contracts of the Parquet datasets (and so of the catalog's per-row tables)."""

from __future__ import annotations

import pyarrow as pa

SOURCE_FILES = pa.schema(
    [
        ("language", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("size_bytes", pa.int64()),
        ("skip_reason", pa.string()),
        ("text", pa.large_string()),
    ]
)

CODE_UNITS = pa.schema(
    [
        ("id", pa.string()),
        ("language", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("name", pa.string()),
        ("code", pa.large_string()),
        ("docstring", pa.string()),
        ("start_line", pa.int64()),
        ("end_line", pa.int64()),
    ]
)

AST_CORPUS = pa.schema(
    [
        ("id", pa.string()),
        ("language", pa.string()),
        ("name", pa.string()),
        ("source", pa.string()),
        ("path", pa.string()),
        ("docstring", pa.string()),
        ("renamed_code", pa.large_string()),
        ("rename_map", pa.string()),
        ("mode", pa.string()),
        ("ast_text", pa.large_string()),
        ("n_tokens", pa.int64()),
        ("group_key", pa.string()),  # ml.splits.code_key of renamed_code: renamed copies share it
        ("split", pa.string()),  # train | dev | test, from group_key
    ]
)

NL_AST_PAIRS = pa.schema(
    [
        ("id", pa.string()),
        ("language", pa.string()),
        ("name", pa.string()),
        ("nl", pa.string()),
        ("target_code", pa.large_string()),
        ("mode", pa.string()),
        ("ast_text", pa.large_string()),
        ("n_tokens", pa.int64()),
        ("group_key", pa.string()),  # the ast_corpus row's: one split per function in both phases
        ("split", pa.string()),
    ]
)


# ---- dsl group: JSON values are stored as compact JSON text (queryable with DuckDB's json functions)

DSL_DOMAIN_SPECS = pa.schema(
    [("domain", pa.string()), ("split", pa.string()), ("teacher", pa.string()), ("spec_json", pa.string()),
     ("example_queries_json", pa.string())]
)

DSL_SCHEMAS = pa.schema(
    [("domain", pa.string()), ("split", pa.string()), ("schema_json", pa.string()), ("fields", pa.int64()),
     ("operators", pa.string())]
)

# domain_split: the request's domain is trained on (train) or held out (heldout_domain); the request's own
# train/dev/test split is decided in dsl_dataset, from its label (the group key).
DSL_QUERIES = pa.schema(
    [("id", pa.string()), ("domain", pa.string()), ("domain_split", pa.string()), ("lang", pa.string()),
     ("text", pa.string()), ("teacher_ast_json", pa.string())]
)

# group_key: domain + canonical target AST (both languages of a request share it); split: train/dev/test from it
# (held-out domains: all test); group: seen | heldout (the evaluation groups).
DSL_DATASET = pa.schema(
    [("id", pa.string()), ("domain", pa.string()), ("group_key", pa.string()), ("split", pa.string()),
     ("group", pa.string()), ("lang", pa.string()),
     ("query", pa.string()), ("ast_json", pa.string()), ("valid", pa.bool_()), ("mutation", pa.string()),
     ("errors", pa.string())]
)

DSL_TRAINING_CORPUS = pa.schema(
    [("id", pa.string()), ("domain", pa.string()), ("group_key", pa.string()), ("split", pa.string()),
     ("group", pa.string()),
     ("lang", pa.string()), ("query", pa.string()), ("prompt", pa.large_string()), ("completion", pa.string()),
     ("valid", pa.bool_())]
)

EVAL_RESULTS = pa.schema(
    [("asset_key", pa.string()), ("id", pa.string()), ("domain", pa.string()), ("group", pa.string()),
     ("lang", pa.string()), ("mode", pa.string()), ("query", pa.string()), ("target", pa.string()),
     ("output", pa.string()), ("prediction", pa.string()), ("parsed", pa.bool_()), ("schema_valid", pa.bool_()),
     ("exact_match", pa.bool_()), ("teacher_accept", pa.bool_()), ("semantic_pass", pa.bool_()),
     ("comparison_f1", pa.float64()), ("error", pa.string())]
)

DSL_DPO_PAIRS = pa.schema(
    [("id", pa.string()), ("domain", pa.string()), ("prompt", pa.large_string()), ("chosen", pa.string()),
     ("rejected", pa.string()), ("reason", pa.string())]
)

# Autocomplete rows: FIM / comment-to-code training rows (split train) and single-line infilling tasks (kind =
# infill_task; split dev or test), the split decided by group_key (the file; the domain's near-duplicate cluster).
# fim_samples per slice; domain_corpus for the Stage B domain.
FIM_SAMPLES = pa.schema(
    [("id", pa.string()), ("language", pa.string()), ("path", pa.string()), ("split", pa.string()),
     ("group_key", pa.string()), ("kind", pa.string()), ("order", pa.string()), ("span", pa.string()),
     ("prefix", pa.large_string()), ("middle", pa.large_string()), ("suffix", pa.large_string()),
     ("prompt", pa.large_string()), ("completion", pa.large_string())]
)

# One row per completion of autocomplete_eval; split: the split of the tasks (test; dev when tuning; HumanEval: test)
AUTOCOMPLETE_RESULTS = pa.schema(
    [("model", pa.string()), ("set", pa.string()), ("split", pa.string()), ("id", pa.string()),
     ("expected", pa.string()), ("generated", pa.string()), ("truncated", pa.string()), ("exact_match", pa.bool_()),
     ("edit_similarity", pa.float64()), ("syntax_valid", pa.bool_()), ("syntax_valid_truncated", pa.bool_()),
     ("passed", pa.bool_()), ("latency_ms", pa.float64()), ("new_tokens", pa.int64())]
)


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)

SRL_TASKS = pa.schema(
    [("id", pa.string()), ("language", pa.string()), ("family", pa.string()), ("split", pa.string()),
     ("unit_id", pa.string()), ("path", pa.string()), ("name", pa.string()), ("instruction", pa.string()),
     ("code", pa.large_string()), ("expected", pa.large_string()), ("matches", pa.int64())]
)

SRL_TRACES = pa.schema(
    [("task_id", pa.string()), ("language", pa.string()), ("family", pa.string()), ("split", pa.string()),
     ("instruction", pa.string()), ("code", pa.large_string()), ("expected", pa.large_string()),
     ("step", pa.large_string()), ("think", pa.string()), ("action", pa.string()), ("state_update", pa.string()),
     ("trace_quality", pa.float64()), ("env_report", pa.large_string())]
)

SRL_EVAL_RESULTS = pa.schema(
    [("policy", pa.string()), ("task_id", pa.string()), ("family", pa.string()), ("split", pa.string()),
     ("completion", pa.large_string()), ("parsed", pa.bool_()), ("parse_error", pa.string()),
     ("reward", pa.float64()), ("action_score", pa.float64()), ("state_score", pa.float64()),
     ("think_score", pa.float64()), ("executed", pa.bool_()), ("env_status", pa.string()), ("diff", pa.string())]
)

_GRAPH_COLUMNS = [("labels", pa.list_(pa.string())), ("parents", pa.list_(pa.int32())),
                  ("fields", pa.list_(pa.string())),
                  ("dataflow_src", pa.list_(pa.int32())), ("dataflow_dst", pa.list_(pa.int32()))]
ASG_CORPUS = pa.schema(
    [("id", pa.string()), ("language", pa.string()), ("name", pa.string()), ("group_key", pa.string()),
     ("split", pa.string()), ("n_nodes", pa.int64()), *_GRAPH_COLUMNS]
)
REPAIR_DATASET = pa.schema(
    [("id", pa.string()), ("unit_id", pa.string()), ("group_key", pa.string()), ("split", pa.string()),
     ("noise", pa.string()), ("ops", pa.list_(pa.string())), ("n_corrupted", pa.int64()), ("n_nodes", pa.int64()),
     *_GRAPH_COLUMNS,
     ("targets", pa.list_(pa.string())), ("corrupted", pa.list_(pa.bool_())),
     *[(f"clean_{name}", typ) for name, typ in _GRAPH_COLUMNS]]
)
GRAPH_REPAIR_RESULTS = pa.schema(
    [("model", pa.string()), ("noise", pa.string()), ("procedure", pa.string()), ("split", pa.string()),
     ("n", pa.int64()),
     *[(f"{m}{suffix}", pa.float64()) for m in ("node_accuracy", "exact", "valid") for suffix in ("", "_ci_low",
                                                                                                   "_ci_high")]]
)
