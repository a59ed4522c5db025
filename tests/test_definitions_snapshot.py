"""Snapshot of the Definitions: every asset key with its group and partitioning, every asset check.

Asset keys and check names are a contract (ARCHITECTURE.md, the catalog's ``asset_key`` column, run-config YAMLs,
schedules): a rename, a move to another group or a change of partitions must show up here as a failing test and
be made on purpose, by editing the literal below.
"""

from __future__ import annotations

import dagster as dg
import pytest

from definitions import defs

SLICES = ("StaticPartitionsDefinition", ("python", "javascript", "java"))

# asset key -> (group, partitioning): None, ("StaticPartitionsDefinition", keys) or ("dynamic", name)
EXPECTED_ASSETS: dict[str, tuple[str, tuple | None]] = {
    # models
    "pretrained_base": ("models", None),
    # corpus
    "source_files": ("corpus", SLICES),
    "code_units": ("corpus", SLICES),
    # ast_first
    "ast_corpus": ("ast_first", SLICES),
    "nl_ast_pairs": ("ast_first", SLICES),
    "ast_tokenizer": ("ast_first", SLICES),
    "ast_base_model": ("ast_first", SLICES),
    "ast_phase1_adapter": ("ast_first", SLICES),
    "ast_phase2_adapter": ("ast_first", SLICES),
    "ast_eval": ("ast_first", SLICES),
    "ast_vs_text_eval": ("ast_first", SLICES),
    # dsl
    "dsl_domain_specs": ("dsl", None),
    "dsl_schemas": ("dsl", None),
    "dsl_queries": ("dsl", None),
    "dsl_dataset": ("dsl", None),
    "dsl_training_corpus": ("dsl", None),
    "dsl_base_model": ("dsl", None),
    "dsl_base_eval": ("dsl", None),
    "dsl_sft_adapter": ("dsl", None),
    "dsl_sft_eval": ("dsl", None),
    "dsl_dpo_pairs": ("dsl", None),
    "dsl_dpo_adapter": ("dsl", None),
    "dsl_dpo_eval": ("dsl", None),
    "dsl_report": ("dsl", None),
    # autocomplete
    "fim_samples": ("autocomplete", SLICES),
    "domain_corpus": ("autocomplete", SLICES),
    "autocomplete_base_model": ("autocomplete", None),
    "autocomplete_stage_a_adapter": ("autocomplete", None),
    "autocomplete_stage_b_adapter": ("autocomplete", None),
    "autocomplete_eval": ("autocomplete", None),
    "autocomplete_stage_a_gguf": ("serving", None),
    "autocomplete_stage_b_gguf": ("serving", None),
    "dsl_student_gguf": ("serving", None),
    # srl
    "srl_tasks": ("srl", SLICES),
    "srl_teacher_traces": ("srl", SLICES),
    "srl_base_model": ("srl", None),
    "srl_adapter": ("srl", SLICES),
    "srl_eval": ("srl", SLICES),
    "srl_ablation": ("srl", SLICES),
    # graph_repair
    "asg_corpus": ("graph_repair", SLICES),
    "repair_dataset": ("graph_repair", SLICES),
    "graph_unet_model": ("graph_repair", SLICES),
    "transformer_baseline": ("graph_repair", SLICES),
    "graph_repair_eval": ("graph_repair", SLICES),
}

# (asset key, check name) -> blocking
EXPECTED_CHECKS: dict[tuple[str, str], bool] = {
    ("ast_corpus", "roundtrip_exact"): True,
    ("ast_corpus", "no_duplicate_ids"): True,
    ("ast_corpus", "non_empty_slice"): False,
    # issue 25: no test or dev row's group key (near-duplicates together) occurs in train
    ("ast_corpus", "no_split_leak"): True,
    ("nl_ast_pairs", "no_split_leak"): True,
    ("fim_samples", "no_split_leak"): True,
    ("domain_corpus", "no_split_leak"): True,
    ("srl_tasks", "no_split_leak"): True,
    ("srl_teacher_traces", "no_split_leak"): True,
    ("asg_corpus", "no_split_leak"): True,
    ("repair_dataset", "no_split_leak"): True,
    ("dsl_dataset", "no_split_leak"): True,
    ("dsl_training_corpus", "no_split_leak"): True,
    # reported by the export itself: a failing export raises before it is published, so nothing downstream waits
    ("autocomplete_stage_a_gguf", "greedy_matches_hf"): False,
    ("autocomplete_stage_b_gguf", "greedy_matches_hf"): False,
    ("dsl_student_gguf", "greedy_matches_hf"): False,
}


def _partitioning(pd: dg.PartitionsDefinition | None) -> tuple | None:
    if pd is None:
        return None
    if isinstance(pd, dg.DynamicPartitionsDefinition):
        return ("dynamic", pd.name)
    return (type(pd).__name__, tuple(pd.get_partition_keys()))


@pytest.fixture(scope="module")
def graph():
    return defs.resolve_asset_graph()


def test_every_asset_key_group_and_partitioning(graph):
    actual = {
        key.to_user_string(): (graph.get(key).group_name, _partitioning(graph.get(key).partitions_def))
        for key in graph.get_all_asset_keys()
    }
    missing = sorted(set(EXPECTED_ASSETS) - set(actual))
    unexpected = sorted(set(actual) - set(EXPECTED_ASSETS))
    assert not missing and not unexpected, f"missing: {missing}; not in the snapshot: {unexpected}"
    changed = {k: (EXPECTED_ASSETS[k], v) for k, v in actual.items() if EXPECTED_ASSETS[k] != v}
    assert not changed, f"asset -> (expected, actual): {changed}"


def test_every_asset_check_and_whether_it_blocks(graph):
    actual = {
        (key.asset_key.to_user_string(), key.name): bool(graph.get_check_spec(key).blocking)
        for key in graph.asset_check_keys
    }
    assert actual == EXPECTED_CHECKS
