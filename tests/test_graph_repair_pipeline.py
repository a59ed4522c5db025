"""The graph_repair group through Dagster on tiny models: code units -> graphs -> corruptions -> Graph U-Net and the
same-size Transformer (a few steps each) -> held-out evaluation and report; the tree-sitter slices are refused."""

import json
from pathlib import Path

import dagster as dg
import pytest

FUNCTIONS = [
    "def total_{i}(items, limit):\n    total = 0\n    for item in items:\n        if item > limit:\n"
    "            total = total + item * {i}\n        else:\n            total -= 1\n    return total\n",
    "def find_{i}(values, target):\n    index = 0\n    while index < len(values):\n"
    "        if values[index] == target:\n"
    "            return index\n        index += {i}\n    return -1\n",
    "def join_{i}(parts, sep):\n    out = []\n    for part in parts:\n        out.append(str(part).strip())\n"
    "    return sep.join(out) + '{i}'\n",
]


@pytest.fixture
def graph_resources(tmp_path, astforge_home):
    from definitions import build_resources
    from resources import CorpusResource

    src = tmp_path / "src"
    src.mkdir()
    for k in range(12):
        (src / f"mod{k}.py").write_text("\n\n".join(f.format(i=k * 3 + j) for j, f in enumerate(FUNCTIONS)) + "\n")
    (src / "broken.py").write_text("def broken(:\n    pass\n")
    return build_resources(corpus=CorpusResource(sources={"python": f"dir:{src}", "javascript": f"dir:{src}"}))


def test_group_end_to_end_on_tiny_models(graph_resources):
    from assets.corpus import code_units, source_files
    from assets.graph_repair import GRAPH_REPAIR_ASSETS
    from resources import DuckDBCatalog

    assert dg.materialize([source_files, code_units], resources=graph_resources, partition_key="python").success
    model = {"hidden": 32, "steps": 4, "batch_size": 4, "max_vocab": 300}
    run_config = {"ops": {
        "asg_corpus": {"config": {"heldout_fraction": 0.3, "min_nodes": 10}},
        "repair_dataset": {"config": {"corruptions_per_graph": 2}},
        "graph_unet_model": {"config": model}, "transformer_baseline": {"config": model},
        "graph_repair_eval": {"config": {"diffusion_steps": 2, "z3_tries": 2}},
    }}
    result = dg.materialize(GRAPH_REPAIR_ASSETS, resources=graph_resources, partition_key="python",
                            run_config=run_config)
    assert result.success
    catalog = DuckDBCatalog()
    graphs = catalog.query("SELECT * FROM asg_corpus WHERE partition = 'python'")
    assert len(graphs) == 36 and any(g["heldout"] for g in graphs) and not all(g["heldout"] for g in graphs)
    rows = catalog.query("SELECT split, noise, count(*) AS n FROM repair_dataset GROUP BY ALL")
    heldout = sum(g["heldout"] for g in graphs)
    assert {(r["split"], r["noise"]): r["n"] for r in rows if r["split"] == "heldout"} == {
        ("heldout", lv): heldout for lv in ("low", "mid", "high")}
    sizes = {}
    for asset in ("graph_unet_model", "transformer_baseline"):
        meta = json.loads((Path(catalog.require_artifact(asset, "python")["path"]) / "model.json").read_text())
        assert meta["steps"] == 4
        sizes[asset] = meta["params"]
    assert abs(sizes["transformer_baseline"] - sizes["graph_unet_model"]) <= 0.1 * sizes["graph_unet_model"]
    curve = catalog.query("SELECT count(*) AS n FROM training_metrics WHERE asset_key = 'transformer_baseline'")
    assert curve[0]["n"] == 4
    results = catalog.query("SELECT * FROM graph_repair_results WHERE partition = 'python'")
    assert {r["model"] for r in results} == {"graph_unet", "transformer", "slot_frequency"}
    masked = [r for r in results if r["procedure"] in ("one_shot_grammar", "iterative_grammar")]
    assert masked and all(r["valid"] == 1.0 for r in masked)  # the grammar mask: every repaired tree compiles
    metrics = {r["metric"] for r in catalog.query(
        "SELECT metric FROM eval_metrics WHERE asset_key = 'graph_repair_eval' AND partition = 'python'")}
    assert "graph_unet_one_shot_grammar_exact_mid" in metrics
    report = (Path(catalog.require_artifact("graph_repair_eval", "python")["path"]) / "report.md").read_text()
    assert "same-size Transformer at the middle noise level" in report and "## Z3" in report


def test_a_tree_sitter_slice_is_refused_with_a_clear_error(graph_resources):
    from assets.corpus import code_units, source_files
    from assets.graph_repair import asg_corpus

    assert dg.materialize([source_files, code_units], resources=graph_resources, partition_key="javascript").success
    result = dg.materialize([asg_corpus], resources=graph_resources, partition_key="javascript",
                            raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "python slice only" in failure.event_specific_data.error.message
