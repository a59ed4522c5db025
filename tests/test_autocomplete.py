"""The autocomplete recipe: FIM formatting and span policies, file split, comment-to-code rows, the domain extractor,
completion metrics, the Stage B mix, prompt masking; and the group end to end on tiny models."""

from __future__ import annotations

import ast
import json
import random
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from ml.autocomplete import fim, metrics
from ml.autocomplete.domain import domain_examples, domain_units, literal_blocks, without_leading_comment
from ml.autocomplete.recipe import phase_config, stage_b_rows, training_pairs

PY = '''def scale(values, factor=2):
    """Multiply every value."""
    out = []
    for v in values:
        if v is None:
            continue
        out.append(v * factor)
    return out
'''
JS = "function add(a, b) {\n  const c = a + b;\n  if (c > 10) {\n    return c * 2;\n  }\n  return c;\n}\n"
JAVA = "public int add(int a, int b) {\n    int c = a + b;\n    if (c > 10) {\n        return c * 2;\n    }\n" \
       "    return c;\n}\n"
CODES = {"python": PY, "javascript": JS, "java": JAVA}


@pytest.mark.parametrize("language", list(CODES))
@pytest.mark.parametrize("seed", range(20))
def test_fim_rows_cut_the_code_without_losing_a_character(language, seed):
    code = CODES[language]
    row = fim.fim_row(code, language, random.Random(seed), fim.FimRates())
    assert row["prefix"] + row["middle"] + row["suffix"] == code
    prefix, suffix, order = fim.parse_fim_prompt(row["prompt"])
    assert (prefix, suffix) == (row["prefix"], row["suffix"])
    if row["prefix"]:  # with an empty prefix the PSM and SPM strings are the same string
        assert order == row["order"]
    assert row["completion"] == row["middle"] and row["middle"]


def test_psm_and_spm_prompts():
    assert fim.fim_prompt("a", "c", "psm") == "<|fim_prefix|>a<|fim_suffix|>c<|fim_middle|>"
    # SPM: the prefix runs straight into the middle
    assert fim.fim_prompt("a", "c", "spm") == "<|fim_prefix|><|fim_suffix|>c<|fim_middle|>a"
    with pytest.raises(ValueError):
        fim.fim_prompt("a", "c", "msp")
    with pytest.raises(ValueError, match="not a FIM prompt"):
        fim.parse_fim_prompt("def f(): pass")


def test_ast_spans_are_whole_syntax_nodes():
    spans = fim.node_spans(PY, "python")
    assert spans
    for a, b in spans:
        piece = PY[a:b]
        # a statement span (ending at a newline) parses alone once dedented; an expression span parses as one
        ast.parse(textwrap.dedent(piece) if piece.endswith("\n") else piece, mode="exec" if piece.endswith("\n")
                  else "eval")
    assert "return out\n" in {PY[a:b] for a, b in spans}  # from the statement to its line end
    java = {JAVA[a:b] for a, b in fim.node_spans(JAVA, "java")}
    assert "return c;" in java and "a + b" in java
    assert fim.node_spans("def broken(:\n", "python") == []


def test_char_spans_respect_the_middle_cap():
    rates = fim.FimRates(max_middle_chars=10)
    for seed in range(50):
        a, b = fim.char_span(PY, random.Random(seed), rates)
        assert 0 <= a < b <= len(PY) and b - a <= 10


def test_rates_shape_the_mix():
    units = [{"id": f"u{i}", "path": f"f{i}.py", "code": PY, "docstring": "Multiply every value."}
             for i in range(400)]
    rows = list(fim.training_rows(units, "python", fim.FimRates(fim_rate=0.75, spm_rate=0.25, ast_span_rate=1.0),
                                  seed=0, heldout_fraction=0.0, nl_target=lambda c: c.split('"""\n', 2)[-1]))
    kinds = [r["kind"] for r in rows]
    assert 0.65 < kinds.count("fim") / len(rows) < 0.85
    fims = [r for r in rows if r["kind"] == "fim"]
    assert 0.15 < sum(r["order"] == "spm" for r in fims) / len(fims) < 0.35
    assert all(r["span"] == "ast" for r in fims)
    c2c = next(r for r in rows if r["kind"] == "comment_to_code")
    assert c2c["prompt"] == "# Multiply every value.\n" and c2c["completion"].startswith("    out = []")


def test_split_is_by_file_and_heldout_files_only_give_tasks():
    units = [{"id": f"u{i}.{j}", "path": f"f{i}.py", "code": PY, "docstring": None}
             for i in range(40) for j in range(3)]
    rows = fim.dataset_rows(units, "python", fim.FimRates(), seed=3, heldout_fraction=0.3)
    sides = {}
    for r in rows:
        sides.setdefault(r["path"], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert {r["kind"] for r in rows if r["split"] == "heldout"} == {"infill_task"}
    assert {r["kind"] for r in rows if r["split"] == "train"} <= {"fim", "comment_to_code"}
    task = next(r for r in rows if r["kind"] == "infill_task")
    assert task["prefix"] + task["middle"] + task["suffix"] == PY and task["middle"].endswith("\n")
    assert task["middle"].count("\n") == 1 and task["middle"].strip()


def test_literal_blocks_and_the_domain_extractor(tmp_path):
    doc = textwrap.dedent('''
        """Module.

        ```python
        bucket = s3.Bucket(self, "B")
        ```
        """

        class Thing:
            """A thing.

            Example::

                # make a queue
                queue = sqs.Queue(self, "Q",
                    visibility_timeout=Duration.seconds(300)
                )

            More prose.
            """
    ''')
    blocks = list(literal_blocks(doc))
    assert 'bucket = s3.Bucket(self, "B")\n' in blocks
    assert any(b.startswith("# make a queue\nqueue = sqs.Queue") and "More prose" not in b for b in blocks)
    (tmp_path / "a.py").write_text("x = compute_something_long(1, 2, 3)\nprint(x)\n")
    (tmp_path / "b.py").write_text("x = compute_something_long(1, 2, 3)\nprint(x)\n")  # duplicate
    (tmp_path / "c.py").write_text("def broken(:\n    pass  # but long enough to be counted\n")
    (tmp_path / "d.py").write_text("y = 1\n")
    found = domain_examples(f"dir:{tmp_path}")
    assert [e["source"] for e in found.examples] == ["a.py"]
    assert found.skipped == {"duplicate": 1, "syntax_error": 1, "too_short": 1}
    with pytest.raises(ValueError, match="dir:PATH"):
        domain_examples("ftp:nowhere")
    with pytest.raises(FileNotFoundError):
        domain_examples(f"dir:{tmp_path / 'missing'}")
    unit = domain_units([{"source": "x", "code": "# make a queue\nqueue = Queue()\n"}])[0]
    assert unit["docstring"] == "make a queue" and without_leading_comment(unit["code"]) == "queue = Queue()\n"


def test_completion_metrics_on_known_inputs():
    assert metrics.exact_match("    return x  \n", "    return x\n")
    assert not metrics.exact_match("return x\n", "    return x\n")
    assert metrics.edit_similarity("abcd", "abcd") == 1.0
    assert metrics.edit_similarity("abcd", "abce") == pytest.approx(0.75)
    assert metrics.edit_similarity("", "") == 1.0 and metrics.edit_similarity("", "ab") == 0.0
    assert metrics.levenshtein("kitten", "sitting") == 3
    assert metrics.syntax_valid(PY, "python") and not metrics.syntax_valid(PY.replace("[]", "[", 1), "python")
    assert metrics.syntax_valid(JAVA, "java") and not metrics.syntax_valid(JAVA[:-3], "java")
    assert metrics.syntax_valid(JS, "javascript") and not metrics.syntax_valid(JS.replace(")", "", 1), "javascript")
    # the generated middle runs on into a broken second line: syntax-aware truncation keeps the first
    cut = metrics.truncate_syntax_aware("def f(x):\n", "    return x\n    y = (\n", "", "python")
    assert cut == "    return x\n"
    assert metrics.truncate_syntax_aware("def f(x):\n", "    ((\n", "", "python") == "    ((\n"
    assert metrics.percentile([1, 2, 3, 4], 50) == 2.0 and metrics.percentile([5.0], 95) == 5.0


def test_stage_b_mix_has_the_replay_ratio():
    domain = [{"kind": "fim", "prompt": f"d{i}", "completion": "x"} for i in range(80)]
    general = [{"kind": "fim", "prompt": f"g{i}", "completion": "x"} for i in range(500)]
    mixed = stage_b_rows(domain, general, 0.2, seed=0)
    assert len(mixed) == 100 and sum(r["prompt"].startswith("g") for r in mixed) == 20
    assert stage_b_rows(domain, general, 0.2, seed=0) == mixed
    assert len(stage_b_rows(domain, general, 0.0, seed=0)) == 80
    with pytest.raises(ValueError):
        stage_b_rows(domain, general, 1.0, seed=0)
    assert training_pairs([{"kind": "infill_task", "prompt": "p", "completion": "c"}]) == []


def test_prompt_is_masked_and_fim_rows_train(tmp_path):
    from ml.autocomplete.recipe import fim_tokenizer
    from ml.compute import resolve_compute
    from ml.training.base_model import build_base_model, save_base_model
    from ml.training.sft import build_lora_sft_trainer

    row = fim.fim_row(PY, "python", random.Random(1), fim.FimRates(spm_rate=1.0, ast_span_rate=0, line_span_rate=0))
    assert row["order"] == "spm" and row["span"] == "char"  # the hard case: a cut inside a word
    tok = fim_tokenizer("tiny:qwen2", [PY] * 20, 300)
    ids = tok(row["prompt"], add_special_tokens=False)["input_ids"]
    assert sum(i in tok.convert_tokens_to_ids(list(fim.FIM_TOKENS)) for i in ids) == 3  # each FIM token is atomic
    save_base_model(build_base_model("tiny:qwen2", tok, seed=0), tok, tmp_path / "base")
    cfg = phase_config({"max_steps": 1, "per_device_train_batch_size": 1, "max_length": 512, "lora_r": 4,
                        "lora_alpha": 8, "learning_rate": 1e-3, "not_a_field": 1}, tiny=False)
    assert cfg.trainable_embeddings == "added" and cfg.add_eos and cfg.separator == ""
    trainer, dropped = build_lora_sft_trainer(tmp_path / "base", tok, [(row["prompt"], row["completion"])], [],
                                              tmp_path / "work", cfg, resolve_compute(device="cpu"))
    example = trainer.train_dataset[0]
    supervised = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert tok.decode(supervised) == row["completion"] + tok.eos_token
    # prompt and middle tokenized apart, as at inference: the prompt's ids are a prefix of the row's
    prompt_ids = tok(row["prompt"], add_special_tokens=False)["input_ids"]
    assert example["input_ids"][: len(prompt_ids)] == prompt_ids
    assert example["labels"][: len(prompt_ids)] == [-100] * len(prompt_ids)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("trainable_tokens" in n for n in trainable) and any("lora_" in n for n in trainable)
    assert dropped == 0
    trainer.train()


def _has(result: dg.ExecuteInProcessResult, key: str) -> dict:
    mats = result.asset_materializations_for_node(key)
    assert mats, key
    return mats[-1].metadata


@pytest.mark.slow
def test_group_end_to_end_on_tiny_models(resources, tmp_path):
    """Slice data → FIM rows → domain corpus (a dir: source) → M0 → Stage A → Stage B → M0/M1/M2 evaluation."""
    from assets import AUTOCOMPLETE_ASSETS, DATA_ASSETS
    from resources import DuckDBCatalog

    domain = tmp_path / "domain"
    domain.mkdir()
    for i in range(30):
        (domain / f"ex{i}.py").write_text(f"# make queue {i}\nqueue_{i} = sqs.Queue(self, 'Q{i}',\n"
                                          f"    visibility_timeout=Duration.seconds({i * 10}))\n")
    corpus = [a for a in DATA_ASSETS if a.key.to_user_string() in ("source_files", "code_units")]
    assert dg.materialize(corpus + AUTOCOMPLETE_ASSETS[:1], resources=resources, partition_key="python",
                          run_config={"ops": {"fim_samples": {"config": {"heldout_fraction": 0.5, "seed": 1}}}}).success
    stage = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 512, "save_steps": 2,
             "logging_steps": 1, "precision": "fp32"}
    run_config = {"ops": {
        "domain_corpus": {"config": {"source": f"dir:{domain}", "heldout_fraction": 0.2}},
        "autocomplete_base_model": {"config": {"base_model": "tiny:qwen2", "vocab_size": 400}},
        "autocomplete_stage_a_adapter": {"config": stage},
        "autocomplete_stage_b_adapter": {"config": stage},
        "autocomplete_eval": {"config": {"tasks_per_set": 2, "max_new_tokens": 6}},
    }}
    result = dg.materialize(AUTOCOMPLETE_ASSETS[1:], resources=resources, run_config=run_config,
                            selection=AUTOCOMPLETE_ASSETS[1:])
    assert result.success
    assert _has(result, "domain_corpus")["examples"].value == 30
    assert _has(result, "autocomplete_stage_b_adapter")["steps"].value == 2
    catalog = DuckDBCatalog()
    names = {r["metric"] for r in
             catalog.query("SELECT metric FROM eval_metrics WHERE asset_key = 'autocomplete_eval'")}
    for model in ("m0", "m1", "m2"):
        for s in ("generic", "domain", "humaneval"):
            assert {f"{model}_{s}_exact_match", f"{model}_{s}_latency_ms_p50"} <= names
        assert f"{model}_humaneval_pass_at_1" in names
    rows = catalog.query("SELECT model, \"set\", count(*) AS n FROM autocomplete_results GROUP BY ALL")
    assert {(r["model"], r["set"]) for r in rows} == {(m, s) for m in ("m0", "m1", "m2")
                                                      for s in ("generic", "domain", "humaneval")}
    report = _has(result, "autocomplete_eval")["report"].value
    assert "M2 stage B" in report and "| humaneval | pass_at_1 |" in report
    generic = catalog.query("SELECT count(*) AS n FROM autocomplete_results WHERE \"set\" = 'generic'")[0]["n"]
    assert generic and generic % 3 == 0  # the fixture slice has a held-out file: its tasks, for each model

    # M1 and M2 exported as GGUF through the serving group: lineage to the adapter and base, the agreement check
    from assets import GGUF_ASSETS
    from ml.models.gguf_export import GgufExport
    from resources.serve import gguf_file

    exports = [a for a in GGUF_ASSETS if a.key.to_user_string().startswith("autocomplete_")]
    # a 2-step tiny model's q8_0 greedy picks are near-ties: only f16 must match here (the real M2: q8_0 6/8)
    loose = {"config": {"check_prompts": 3, "quantized_min_agreement": 0.0}}
    result = dg.materialize(exports, resources=resources, run_config={"ops": {
        "autocomplete_stage_a_gguf": loose, "autocomplete_stage_b_gguf": loose}})
    assert result.success
    (check,) = [c for c in result.get_asset_check_evaluations()
                if c.asset_key == dg.AssetKey("autocomplete_stage_b_gguf")]
    assert check.passed and check.metadata["f16_agreement"].value == 1.0
    entry = catalog.latest_artifact("autocomplete_stage_b_gguf", "all")
    upstream = json.loads(entry["upstream"])
    assert upstream["autocomplete_stage_b_adapter"] == catalog.latest_artifact("autocomplete_stage_b_adapter",
                                                                               "all")["data_version"]
    assert "autocomplete_base_model" in upstream
    export = GgufExport.load(entry["path"])
    assert gguf_file(catalog, "m2", None) == export.path("q8_0") and export.path("f16").is_file()
    assert (Path(entry["path"]) / "Modelfile").read_text().startswith("# in this folder: ollama create")
