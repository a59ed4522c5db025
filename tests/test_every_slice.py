"""Every language-partitioned asset materializes on the javascript and java slices, as a UI backfill of all slices
runs them: one run per slice over every partitioned asset (and the shared bases they read), tiny models, a few steps.
The python slice runs the same assets in each group's own end-to-end test."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

pytestmark = pytest.mark.slow

# One function per k: a doc comment (the docstring -> code pairs), enough nodes for a graph, a distinct literal (no two
# alike after alpha-renaming), and one statement of an SRL rewrite family of each split, by k (train, dev, test).
_JS = '''/**
 * Sums the first values of the list, number {k}, when it has any.
 */
function total{k}(items, limit) {{
  let sum = {k};
  if (items.length === 0) {{
    return sum;
  }}
  {srl}
  for (let i = 0; i < limit; i++) {{
    sum = sum + items[i] * {k};
  }}
  return sum;
}}
'''
_JS_SRL = ["const empty = rows.length === 0;", "const label = name || '';", "const present = !!value;"]

_JAVA = '''    /**
     * Sums the first values of the array, number {k}, when it has any.
     */
    static int total{k}(int[] items, int limit) {{
        int sum = {k};
        {srl}
        for (int i = 0; i < limit; i++) {{
            sum = sum + items[i] * {k};
        }}
        return (sum);
    }}
'''
_JAVA_SRL = ["sum = sum + limit;", "limit += 1;", "if (items.length == 0) { return (sum); }"]


def _write_sources(root: Path, language: str, functions: int = 24) -> str:
    folder = root / language
    folder.mkdir(parents=True)
    if language == "javascript":
        for k in range(functions):
            (folder / f"mod{k}.js").write_text(_JS.format(k=k, srl=_JS_SRL[k % 3]))
    else:  # a file per four methods: the FIM rows split by file
        for f in range(0, functions, 4):
            body = "\n".join(_JAVA.format(k=k, srl=_JAVA_SRL[k % 3]) for k in range(f, min(f + 4, functions)))
            (folder / f"Totals{f}.java").write_text(f"class Totals{f} {{\n{body}}}\n")
    return f"dir:{folder}"


_CDK_WORDS = ["topic", "vpc", "role", "alarm", "cluster", "bucket", "key", "stream", "rule", "secret", "table", "zone",
              "queue", "graph", "pipe", "fleet", "cache", "mesh", "trail", "vault"]


def _write_tablet(root: Path, examples: int = 36) -> str:
    """A jsii tablet as the aws-cdk-lib npm package carries it (gzipped JSON): TypeScript originals ("$"), a third
    of them TypeScript-only (a type annotation), and their Java translations; as an npm: domain source."""
    import gzip
    import json
    import random

    rng = random.Random(3)
    snippets = {}
    for i in range(examples):
        w = rng.sample(_CDK_WORDS, 6)
        typed = ": iam.IRole" if i % 3 == 0 else ""
        head = f"// a {w[0]} for the {w[1]} service\n"
        grant = f"{w[0]}{i}.grant{w[1].title()}({w[2]}Role);\n"
        ts = (f"{head}const {w[0]}{i}{typed} = new {w[2]}.{w[3].title()}(this, '{w[4].title()}{i}', {{\n"
              f"  {w[5]}: {i},\n}});\n{grant}")
        java = (f"{head}{w[3].title()} {w[0]}{i} = {w[3].title()}.Builder.create(this, \"{w[4].title()}{i}\")\n"
                f"        .{w[5]}({i})\n        .build();\n{grant}")
        snippets[f"s{i:03d}"] = {"translations": {"$": {"source": ts, "version": "0"},
                                                  "java": {"source": java, "version": "1"}},
                                 "location": {"api": {"api": "type", "fqn": f"aws-cdk-lib.aws_{w[2]}.{w[3].title()}"}}}
    path = root / "tablet" / ".jsii.tabl.json.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(json.dumps({"version": "2", "snippets": snippets}).encode()))
    return f"npm:{path.parent}"


def _partitioned_assets():
    from assets import ALL_ASSETS
    from assets.partitions import language_slices

    return [a for a in ALL_ASSETS if a.partitions_def == language_slices]


TINY = {"max_steps": 3, "batch_size": 4, "eval_steps": 3, "save_steps": 3, "logging_steps": 1}
SRL = {"sft_steps": 2, "sft_batch_size": 2, "max_steps": 2, "num_generations": 2, "per_device_train_batch_size": 2,
       "max_completion_length": 12, "precision": "fp32", "max_length": 1536}
GRAPH = {"hidden": 16, "steps": 3, "batch_size": 4, "max_vocab": 400}
RUN_CONFIG = {"ops": {
    "ast_tokenizer": {"config": {"vocab_size": 400}},
    "ast_phase1_adapter": {"config": TINY},
    "ast_phase2_adapter": {"config": TINY},
    "ast_eval": {"config": {"samples": 3, "max_new_tokens": 40}},
    "ast_vs_text_eval": {"config": {"phase1_steps": 3, "phase2_steps": 3, "batch_size": 4, "curve_points": 3,
                                    "max_test_functions": 6, "nl2code_samples": 3, "humaneval_n": 3,
                                    "max_new_tokens": 48, "lora_r": 8, "lora_alpha": 16}},
    "asg_corpus": {"config": {"min_nodes": 10, "max_nodes": 400}},
    "repair_dataset": {"config": {"corruptions_per_graph": 1}},
    "graph_unet_model": {"config": GRAPH},
    "transformer_baseline": {"config": GRAPH},
    "graph_repair_eval": {"config": {"diffusion_steps": 1, "z3_tries": 1, "relabel_thresholds": [0.7]}},
    "srl_base_model": {"config": {"base_model": "tiny:qwen2", "vocab_size": 300}},
    "srl_adapter": {"config": SRL},
    "srl_eval": {"config": {"eval_tasks": 2, "max_new_tokens": 12}},
    "srl_ablation": {"config": {**SRL, "max_steps": 1, "betas": [0.05], "malformed_penalties": [-0.2],
                                "reward_weights": ["0.5,0.3,0.2"], "eval_tasks": 2, "max_new_tokens": 8}},
}}


@pytest.mark.parametrize("language", ["javascript", "java"])
def test_every_partitioned_asset_materializes_on_the_slice(tmp_path, astforge_home, language):
    from assets import ALL_ASSETS
    from definitions import build_resources
    from resources import CorpusResource, DuckDBCatalog

    resources = build_resources(corpus=CorpusResource(sources={language: _write_sources(tmp_path, language)}))
    partitioned = _partitioned_assets()
    names = {a.key.to_user_string() for a in partitioned}
    # the groups' per-slice assets: a new one joins this run by being partitioned
    assert {"ast_eval", "ast_vs_text_eval", "fim_samples", "domain_corpus", "graph_repair_eval", "srl_eval",
            "srl_ablation"} <= names
    shared = [a for a in ALL_ASSETS if a.key.to_user_string() == "srl_base_model"]  # the SRL slices' one base
    run_config = {"ops": {**RUN_CONFIG["ops"], "domain_corpus": {"config": {"source": _write_tablet(tmp_path)}}}}
    result = dg.materialize([*shared, *partitioned], resources=resources, partition_key=language,
                            run_config=run_config, raise_on_error=False)
    failures = [e.step_key + ": " + str(e.step_failure_data.error.message)[:400]
                for e in result.all_events if e.is_step_failure]
    assert result.success, failures
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert names <= materialized
    assert all(c.passed for c in result.get_asset_check_evaluations())  # the split-leak checks among them
    catalog = DuckDBCatalog()
    for name in names:
        entry = catalog.latest_artifact(name, language)
        assert entry is not None, name
    evidence = catalog.query("SELECT asset_key, metric, n, ci_low, ci_high, split FROM eval_metrics "
                             "WHERE partition = ?", [language])
    reported = {r["asset_key"] for r in evidence}
    assert {"ast_eval", "ast_vs_text_eval", "graph_repair_eval", "srl_eval"} <= reported
    assert all(r["split"] in ("dev", "test") and r["n"] is not None for r in evidence)
    vs_text = {r["metric"] for r in evidence if r["asset_key"] == "ast_vs_text_eval"}
    assert "ast_constrained_valid_rate" in vs_text  # the slice's grammar automaton constrains the AST arm
    assert not any("humaneval" in m for m in vs_text)  # HumanEval is Python: no empty figure elsewhere
    repair = {r["metric"] for r in evidence if r["asset_key"] == "graph_repair_eval"}
    assert "graph_unet_one_shot_grammar_exact_mid" in repair
    assert not any("z3" in m for m in repair)  # the Z3 check is Python's: no procedure that would repeat another
    domain = result.asset_materializations_for_node("domain_corpus")[-1].metadata
    # the tablet's TypeScript-only third is counted, not used, on javascript; Java has every translation
    assert domain["examples"].value == (24 if language == "javascript" else 36)
    if language == "javascript":
        assert domain["skipped_typescript_only"].value == 12

    # the unpartitioned autocomplete models on this slice alone: M0 / M1 / M2 and the evaluation of its two sets
    models = [a for a in ALL_ASSETS if a.key.to_user_string() in (
        "autocomplete_base_model", "autocomplete_stage_a_adapter", "autocomplete_stage_b_adapter", "autocomplete_eval")]
    stage = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 512, "save_steps": 2,
             "logging_steps": 1, "precision": "fp32"}
    result = dg.materialize(models, resources=resources, raise_on_error=False, run_config={"ops": {
        "autocomplete_base_model": {"config": {"base_model": "tiny:qwen2", "vocab_size": 400,
                                               "languages": [language]}},
        "autocomplete_stage_a_adapter": {"config": {**stage, "languages": [language]}},
        "autocomplete_stage_b_adapter": {"config": stage},
        "autocomplete_eval": {"config": {"tasks_per_set": 2, "max_new_tokens": 6, "languages": [language]}}}})
    failures = [e.step_key + ": " + str(e.step_failure_data.error.message)[:400]
                for e in result.all_events if e.is_step_failure]
    assert result.success, failures
    metrics = {r["metric"]: r for r in catalog.query("SELECT metric, n, split FROM eval_metrics "
                                                     "WHERE asset_key = 'autocomplete_eval'")}
    for model in ("m0", "m1", "m2"):
        for kind in ("generic", "domain"):
            assert metrics[f"{model}_{kind}_{language}_exact_match"]["n"] >= 1
    assert f"diff_m2_vs_m0_domain_{language}_edit_similarity" in metrics
    assert not any("humaneval" in m or m.startswith("m0_generic_exact") for m in metrics)  # python's sets: absent
    report = result.asset_materializations_for_node("autocomplete_eval")[-1].metadata["report"].value
    assert f"| domain_{language} | exact_match |" in report
