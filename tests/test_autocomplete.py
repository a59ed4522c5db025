"""The autocomplete recipe: FIM formatting and span policies, the train/dev/test split by file and by near-duplicate
cluster (with the blocking leak check), comment-to-code rows, the domain extractor, completion metrics as estimates
with n and interval, paired differences in the report, the Stage B mix, prompt masking; and the group end to end on
tiny models."""

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
from ml.autocomplete.recipe import (
    paired_differences,
    phase_config,
    sample_tasks,
    set_metrics,
    stage_b_rows,
    training_pairs,
)
from ml.autocomplete.report import autocomplete_report, differences_table
from ml.splits import leaked_groups
from ml.stats import Estimate

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
                                  seed=0, nl_target=lambda c: c.split('"""\n', 2)[-1]))
    kinds = [r["kind"] for r in rows]
    assert 0.65 < kinds.count("fim") / len(rows) < 0.85
    fims = [r for r in rows if r["kind"] == "fim"]
    assert 0.15 < sum(r["order"] == "spm" for r in fims) / len(fims) < 0.35
    assert all(r["span"] == "ast" for r in fims)
    c2c = next(r for r in rows if r["kind"] == "comment_to_code")
    assert c2c["prompt"] == "# Multiply every value.\n" and c2c["completion"].startswith("    out = []")


def test_split_is_by_file_and_dev_test_files_only_give_tasks():
    units = [{"id": f"u{i}.{j}", "path": f"f{i}.py", "code": PY, "docstring": None}
             for i in range(60) for j in range(3)]
    rows = fim.dataset_rows(units, "python", fim.FimRates(), seed=3)
    sides = {}
    for r in rows:
        assert r["group_key"] == r["path"]
        sides.setdefault(r["path"], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values())  # same file, same split
    assert {s for (s,) in sides.values()} == {"train", "dev", "test"}
    assert leaked_groups(rows) == {"test": [], "dev": []}
    for split in ("dev", "test"):
        assert {r["kind"] for r in rows if r["split"] == split} == {"infill_task"}
    assert {r["kind"] for r in rows if r["split"] == "train"} <= {"fim", "comment_to_code"}
    # the evaluation reads test only, training reads train only
    assert {t["split"] for t in sample_tasks(rows, 1000, seed=0)} == {"test"}
    assert {t["split"] for t in sample_tasks(rows, 1000, seed=0, split="dev")} == {"dev"}
    assert all(r["split"] == "train" for r in rows if r["kind"] in ("fim", "comment_to_code"))
    # the fractions move files between splits (the same hash, other cut points)
    more_test = fim.dataset_rows(units, "python", fim.FimRates(), seed=3, dev_fraction=0.0, test_fraction=0.6)
    assert sum(r["split"] == "test" for r in more_test) > sum(r["split"] == "test" for r in rows)
    assert not any(r["split"] == "dev" for r in more_test)
    from assets.autocomplete_data import FimRowsConfig

    with pytest.raises(ValueError, match="leave room for train"):
        FimRowsConfig(dev_fraction=0.5, test_fraction=0.5)
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


def _tablet(snippets: dict[str, dict[str, str]]) -> bytes:
    import gzip

    return gzip.compress(json.dumps({"version": "2", "snippets": {
        k: {"translations": {lang: {"source": src} for lang, src in v.items()},
            "location": {"api": {"api": "type", "fqn": f"aws-cdk-lib.{k}"}}} for k, v in snippets.items()}}).encode())


def test_the_npm_jsii_tablet_gives_each_slice_its_examples(tmp_path):
    """The javascript slice keeps the TypeScript originals that are plain JavaScript (the rest are counted, not
    used), the java slice the Java translations; a tarball as npm packs it, its folder or the tablet file reads the
    same; what is not a tablet says so."""
    import io
    import tarfile

    snippets = {
        "plain": {"$": "// a bucket for the logs\nconst logs = new s3.Bucket(this, 'Logs', { versioned: true });\n",
                  "java": "// a bucket for the logs\nBucket logs = Bucket.Builder.create(this, \"Logs\")"
                          ".versioned(true).build();\n"},
        "typed": {"$": "declare const role: iam.IRole;\nconst fn = new lambda.Function(this, 'Fn', { role });\n",
                  "java": "IRole role;\nFunction fn = Function.Builder.create(this, \"Fn\").role(role).build();\n"},
        "short": {"$": "app.synth();\n", "java": "app.synth();\n"},
        "python_only": {"python": "queue = sqs.Queue(self, 'Q', visibility_timeout=Duration.seconds(300))\n"},
    }
    data = _tablet(snippets)
    folder = tmp_path / "pkg" / "package"
    folder.mkdir(parents=True)
    (folder / ".jsii.tabl.json.gz").write_bytes(data)
    tgz = tmp_path / "aws-cdk-lib-0.0.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        info = tarfile.TarInfo("package/.jsii.tabl.json.gz")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    for source in (f"npm:{tgz}", f"npm:{tmp_path / 'pkg'}", f"npm:{folder / '.jsii.tabl.json.gz'}"):
        js = domain_examples(source, language="javascript")
        assert [e["source"] for e in js.examples] == ["aws-cdk-lib.plain"]
        assert js.skipped == {"typescript_only": 1, "too_short": 1, "no_translation": 1}
        java = domain_examples(source, language="java")
        assert [e["source"] for e in java.examples] == ["aws-cdk-lib.plain", "aws-cdk-lib.typed"]
    unit = domain_units(java.examples, language="java")[0]
    assert unit["docstring"] == "a bucket for the logs"
    assert without_leading_comment(unit["code"], "java").startswith("Bucket logs = ")
    rows = fim.dataset_rows(domain_units(java.examples, language="java"), "java", fim.FimRates(), seed=0)
    assert rows and all(r["language"] == "java" for r in rows)
    (tmp_path / "not_a_tablet.json").write_text('{"files": []}')
    with pytest.raises(ValueError, match="not a jsii tablet"):
        domain_examples(f"npm:{tmp_path / 'not_a_tablet.json'}", language="java")
    with pytest.raises(FileNotFoundError, match="no jsii tablet"):
        domain_examples(f"npm:{tmp_path / 'missing.tgz'}", language="java")
    with pytest.raises(ValueError, match="no domain corpus for the slice"):
        domain_examples(f"npm:{tgz}", language="cobol")


def test_sets_of_other_slices_are_named_and_reported_apart():
    from ml.autocomplete.recipe import eval_set_name

    assert eval_set_name("generic", "python") == "generic" and eval_set_name("domain", "java") == "domain_java"
    rng = random.Random(1)
    base = [rng.random() * 0.3 for _ in range(20)]
    results = []
    for set_name in ("generic", "generic_javascript", "domain_javascript"):
        results += _result_rows("m0", set_name, base) + _result_rows("m1", set_name, [s + 0.5 for s in base])
    diffs = paired_differences(results)
    assert "diff_m1_vs_m0_domain_javascript_edit_similarity" in diffs
    metrics = {f"{m}_{k}": v for m in ("m0", "m1") for set_name in ("generic", "generic_javascript",
                                                                     "domain_javascript")
               for k, v in set_metrics([r for r in results if r["model"] == m and r["set"] == set_name],
                                       set_name).items()} | diffs
    table = differences_table(metrics)
    assert "| domain_javascript | edit_similarity | M1 stage A − M0 base |" in table
    assert "| generic_javascript | exact_match |" in table
    report = autocomplete_report(metrics, results, {"generic": 20, "generic_javascript": 20,
                                                    "domain_javascript": 20})
    assert "| generic_javascript | edit_similarity |" in report and "| domain_javascript | exact_match |" in report


CDK_BASES = [
    """# a bucket for the build artifacts
bucket = s3.Bucket(self, "ArtifactBucket",
    versioned=True,
    encryption=s3.BucketEncryption.S3_MANAGED,
    removal_policy=RemovalPolicy.RETAIN,
    lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days({n}))]
)
bucket.grant_read(role)
""",
    """# a queue with a dead-letter queue
dlq = sqs.Queue(self, "DeadLetters", retention_period=Duration.days(14))
queue = sqs.Queue(self, "Jobs",
    visibility_timeout=Duration.seconds({n}),
    dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=5, queue=dlq)
)
queue.grant_consume_messages(worker)
""",
    """# a function behind an API
handler = lambda_.Function(self, "Handler",
    runtime=lambda_.Runtime.PYTHON_3_12,
    handler="index.main",
    code=lambda_.Code.from_asset("lambda"),
    memory_size={n}
)
api = apigateway.LambdaRestApi(self, "Api", handler=handler)
""",
    """# a table with a stream
table = dynamodb.TableV2(self, "Orders",
    partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
    dynamo_stream=dynamodb.StreamViewType.NEW_IMAGE,
    billing=dynamodb.Billing.on_demand(max_read_request_units={n})
)
table.grant_read_write_data(service)
""",
]


def planted_cdk_examples(copies: int = 4) -> list[dict]:
    """Each base example and edited copies of it (another number; the last copy also renames a variable), as the
    CDK READMEs repeat one snippet per construct variant; plus examples that share nothing."""
    examples = []
    for b, base in enumerate(CDK_BASES):
        for k in range(copies):
            code = base.format(n=10 * (k + 1))
            if k == copies - 1:
                code = code.replace("self,", "scope,", 1)
            examples.append({"source": f"cdk:base{b}", "code": code})
    rng = random.Random(7)
    words = ["topic", "vpc", "role", "alarm", "cluster", "bucket", "key", "stream", "rule", "secret", "table", "zone",
             "queue", "graph", "pipe", "fleet", "cache", "mesh", "trail", "vault"]
    for i in range(30):
        w = rng.sample(words, 8)
        examples.append({"source": "cdk:other", "code": f"{w[0]}_{w[1]} = {w[2]}.{w[3].title()}(self, '{w[4]}', "
                                                        f"{w[5]}={i})\n{w[0]}_{w[1]}.grant_{w[6]}({w[7]})\n"})
    return examples


def test_planted_near_duplicate_cdk_examples_land_in_one_split():
    examples = planted_cdk_examples()
    units = domain_units(examples)
    planted = {}
    for ex, unit in zip(examples, units):
        planted.setdefault(ex["source"], set()).add(unit["group_key"])
    for b in range(len(CDK_BASES)):  # every edited copy shares its base's group key
        assert len(planted[f"cdk:base{b}"]) == 1
    assert len({next(iter(planted[f"cdk:base{b}"])) for b in range(len(CDK_BASES))}) == len(CDK_BASES)
    assert len(planted["cdk:other"]) == 30  # unrelated examples stay apart
    # the threshold is what decides: at 0.95 the edited copies (Jaccard ≈ 0.9) are examples of their own
    assert len({u["group_key"] for u in domain_units(examples[:16], threshold=0.95)}) == 16
    rows = fim.dataset_rows(units, "python", fim.FimRates(), seed=0, nl_target=without_leading_comment)
    by_key = {}
    for r in rows:
        by_key.setdefault(r["group_key"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_key.values())
    assert leaked_groups(rows) == {"test": [], "dev": []}
    assert {s for (s,) in by_key.values()} == {"train", "dev", "test"}
    # with exact dedup only (each example its own group, the old split) the copies scatter: the planted leak is real
    source_of = {u["path"]: ex["source"] for ex, u in zip(examples, units)}
    sides = {}
    for r in fim.dataset_rows([{**u, "group_key": None} for u in units], "python", fim.FimRates(), seed=0):
        sides.setdefault(source_of[r["path"]], set()).add(r["split"])
    assert any(len(sides[f"cdk:base{b}"]) > 1 for b in range(len(CDK_BASES)))
    # the key is the content of the cluster's first example, not its position: other examples coming or going
    # leave a cluster's key (so its split) as it was
    fewer = domain_units(examples[len(CDK_BASES) * 4 + 10:] + examples[: len(CDK_BASES) * 4])
    assert {u["id"]: u["group_key"] for u in fewer}.items() >= {u["id"]: u["group_key"]
                                                                 for u in units[: len(CDK_BASES) * 4]}.items()


def test_domain_corpus_asset_splits_by_cluster_and_passes_the_leak_check(resources, tmp_path):
    import pyarrow.parquet as pq

    from assets import AUTOCOMPLETE_ASSETS
    from resources import DuckDBCatalog

    source = tmp_path / "cdk"
    source.mkdir()
    examples = planted_cdk_examples()
    for i, ex in enumerate(examples):
        (source / f"{ex['source'].replace(':', '_')}_{i:03d}.py").write_text(ex["code"])
    domain = [a for a in AUTOCOMPLETE_ASSETS if a.key.to_user_string() == "domain_corpus"]
    result = dg.materialize(domain, resources=resources, partition_key="python",
                            run_config={"ops": {"domain_corpus": {"config": {"source": f"dir:{source}"}}}})
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "no_split_leak" and check.passed
    assert check.metadata["leaked_rows"].value == 0
    meta = _has(result, "domain_corpus")
    assert meta["near_duplicate_clusters"].value == len(CDK_BASES) + 30
    entry = DuckDBCatalog().latest_artifact("domain_corpus", "python")
    rows = pq.read_table(Path(entry["path"]) / "rows.parquet").to_pylist()
    by_base = {}
    for r in rows:
        if r["path"].startswith("cdk_base"):
            by_base.setdefault(r["path"][: len("cdk_baseN")], set()).add((r["group_key"], r["split"]))
    assert len(by_base) == len(CDK_BASES) and all(len(v) == 1 for v in by_base.values())


def _result_rows(model: str, set_name: str, scores: list[float], passed: list[bool] | None = None) -> list[dict]:
    return [{"model": model, "set": set_name, "split": "test", "id": f"{set_name}/{i}", "expected": "x\n",
             "generated": "x\n", "truncated": "x\n", "exact_match": s == 1.0, "edit_similarity": s,
             "syntax_valid": True, "syntax_valid_truncated": s > 0.5, "passed": None if passed is None else passed[i],
             "latency_ms": 100.0 + i, "new_tokens": 4} for i, s in enumerate(scores)]


def test_set_metrics_are_estimates_with_n_and_interval(tmp_path):
    from ml.stats import write_metrics_files

    rows = _result_rows("m1", "generic", [1.0, 0.5, 0.0, 1.0] * 6)
    m = set_metrics(rows, "generic")
    exact = m["generic_exact_match"]
    assert isinstance(exact, Estimate) and exact.n == 24 and exact.split == "test" and exact.method == "wilson"
    assert exact.value == pytest.approx(0.5) and 0.25 < exact.ci_low < 0.5 < exact.ci_high < 0.75
    similarity = m["generic_edit_similarity"]
    assert similarity.method == "bootstrap" and similarity.value == pytest.approx(0.625)
    assert similarity.ci_low < 0.625 < similarity.ci_high
    assert m["generic_syntax_valid_rate_truncated"].value == pytest.approx(0.5)
    assert "generic_pass_at_1" not in m  # only scored sets have pass@1
    latency = m["generic_latency_ms_p50"]  # a timing too carries its n and interval
    assert isinstance(latency, Estimate) and latency.n == 24 and latency.ci_low <= latency.value <= latency.ci_high
    speed = m["generic_tokens_per_s"]
    assert speed.n == 24 and speed.value == pytest.approx(sum(r["new_tokens"] for r in rows)
                                                          / sum(r["latency_ms"] / 1000 for r in rows))
    assert str(exact).endswith("n=24") and str(exact).startswith("0.500 [")
    scored = set_metrics(_result_rows("m1", "humaneval", [0.0] * 3, passed=[True, False, False]), "humaneval")
    assert scored["humaneval_pass_at_1"].value == pytest.approx(1 / 3) and scored["humaneval_pass_at_1"].n == 3
    assert set_metrics([], "generic")["generic_exact_match"].n == 0
    flat = write_metrics_files(tmp_path, m)
    evidence = json.loads((tmp_path / "metrics_evidence.json").read_text())
    assert flat["generic_exact_match"] == pytest.approx(0.5)
    assert evidence["generic_exact_match"]["n"] == 24 and evidence["generic_exact_match"]["split"] == "test"
    assert evidence["generic_latency_ms_p50"]["n"] == 24
    partly_timed = [dict(r, latency_ms=None) if i % 3 else r for i, r in enumerate(rows)]
    assert set_metrics(partly_timed, "generic")["generic_latency_ms_p50"].n == 8  # only the timed rows
    assert "generic_tokens_per_s" not in set_metrics([dict(r, latency_ms=None) for r in rows], "generic")


def test_report_shows_paired_differences_and_claims_only_what_they_allow():
    rng = random.Random(0)
    base = [rng.random() * 0.3 for _ in range(30)]
    results = (_result_rows("m0", "generic", base)
               + _result_rows("m1", "generic", [min(1.0, s + 0.4) for s in base])  # clearly better on every task
               + _result_rows("m2", "generic", [min(1.0, s + 0.4) for s in base[:15]] + [min(1.0, s + 0.4 + (
                   0.05 if i % 2 else -0.05)) for i, s in enumerate(base[15:])])
               + _result_rows("m0", "humaneval", [0.0] * 10, passed=[False] * 10)
               + _result_rows("m1", "humaneval", [0.0] * 10, passed=[i == 0 for i in range(10)]))
    rng.shuffle(results)  # pairing is by (set, id), not by position
    diffs = paired_differences(results)
    d = diffs["diff_m1_vs_m0_generic_edit_similarity"]
    assert d.method == "paired_bootstrap" and d.n == 30 and d.ci_low > 0
    assert d.value == pytest.approx(sum(min(1.0, s + 0.4) - s for s in base) / 30)
    assert "diff_m2_vs_m1_generic_edit_similarity" in diffs and "diff_m2_vs_m0_generic_exact_match" in diffs
    assert "diff_m1_vs_m0_humaneval_pass_at_1" in diffs and "diff_m1_vs_m0_generic_pass_at_1" not in diffs
    assert "diff_m2_vs_m0_humaneval_pass_at_1" not in diffs  # M2 has no HumanEval rows here
    table = differences_table(diffs)
    lines = {line.split("|")[1].strip() + "/" + line.split("|")[2].strip() + "/" + line.split("|")[3].strip():
             line for line in table.splitlines()[2:]}
    assert "M1 stage A beats M0 base" in lines["generic/edit_similarity/M1 stage A − M0 base"]
    assert str(d) in lines["generic/edit_similarity/M1 stage A − M0 base"]
    assert "no measurable difference at n=30" in lines["generic/edit_similarity/M2 stage B − M1 stage A"]
    assert "no measurable difference at n=10" in lines["humaneval/pass_at_1/M1 stage A − M0 base"]
    metrics = {**set_metrics([r for r in results if r["model"] == "m1" and r["set"] == "generic"], "generic"),
               **diffs}
    report = autocomplete_report({f"m1_{k}" if not k.startswith("diff_") else k: v for k, v in metrics.items()},
                                 results, {"generic": 30, "humaneval": 10})
    assert "## Paired differences" in report and "M1 stage A beats M0 base" in report
    assert f"| {metrics['generic_exact_match']} |" in report  # the table cell is the estimate with n and interval
    with pytest.raises(ValueError, match="cannot pair"):
        paired_differences(results + results[:1])


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
    from ml.training.lora_sft import build_lora_sft_trainer

    row = fim.fim_row(PY, "python", random.Random(1), fim.FimRates(spm_rate=1.0, ast_span_rate=0, line_span_rate=0))
    assert row["order"] == "spm" and row["span"] == "char"  # the hard case: a cut inside a word
    tok = fim_tokenizer("tiny:qwen2", [PY] * 20, 300)
    ids = tok(row["prompt"], add_special_tokens=False)["input_ids"]
    assert sum(i in tok.convert_tokens_to_ids(list(fim.FIM_TOKENS)) for i in ids) == 3  # each FIM token is atomic
    save_base_model(build_base_model("tiny:qwen2", tok, seed=0), tok, tmp_path / "base")
    with pytest.raises(ValueError, match="not_a_field"):  # a misspelt knob is refused, never trained with defaults
        phase_config({"max_steps": 1, "not_a_field": 1}, tiny=False)
    cfg = phase_config({"max_steps": 1, "per_device_train_batch_size": 1, "max_length": 512, "lora_r": 4,
                        "lora_alpha": 8, "learning_rate": 1e-3}, tiny=False)
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


def test_batched_completions_are_the_one_at_a_time_ones():
    """The evaluation completes most tasks in left-padded batches: the same greedy texts as one at a time (what an
    editor gets), each cut after its first newline, and only the timed rows carry a latency."""
    from ml.autocomplete.recipe import complete, complete_batch, evaluate_set, fim_tokenizer
    from ml.training.base_model import build_base_model

    tok = fim_tokenizer("tiny:qwen2", [PY] * 20, 300)
    model = build_base_model("tiny:qwen2", tok, seed=3).eval()
    rows = [fim.fim_row(PY, "python", random.Random(seed), fim.FimRates()) for seed in range(6)]
    prompts = [r["prompt"] for r in rows]  # different lengths: the batch is padded on the left
    assert len({len(tok(p)["input_ids"]) for p in prompts}) > 1
    one_by_one = [complete(model, tok, p, max_new_tokens=12)[::2] for p in prompts]
    assert complete_batch(model, tok, prompts, max_new_tokens=12, batch_size=4) == one_by_one
    tasks = [{"id": str(i), "prefix": PY[:40 + i], "middle": PY[40 + i:50 + i], "suffix": PY[50 + i:]}
             for i in range(5)]
    metrics_, results = evaluate_set(model, tok, tasks, "generic", max_new_tokens=8, latency_tasks=2, batch_size=2)
    assert [r["latency_ms"] is not None for r in results] == [True, True, False, False, False]
    assert metrics_["generic_latency_ms_p50"].n == 2 and metrics_["generic_exact_match"].n == 5


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
    data_assets = [a for a in AUTOCOMPLETE_ASSETS if a.key.to_user_string() in ("fim_samples", "domain_corpus")]
    data = dg.materialize(corpus + data_assets, resources=resources, partition_key="python",
                          run_config={"ops": {"fim_samples": {"config": {"seed": 1}},
                                              "domain_corpus": {"config": {"source": f"dir:{domain}"}}}})
    assert data.success
    (check,) = [c for c in data.get_asset_check_evaluations() if c.asset_key == dg.AssetKey("fim_samples")]
    assert check.check_name == "no_split_leak" and check.passed and check.metadata["rows_test"].value > 0
    stage = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 512, "save_steps": 2,
             "logging_steps": 1, "precision": "fp32"}
    run_config = {"ops": {
        "autocomplete_base_model": {"config": {"base_model": "tiny:qwen2", "vocab_size": 400}},
        "autocomplete_stage_a_adapter": {"config": stage},
        "autocomplete_stage_b_adapter": {"config": stage},
        "autocomplete_eval": {"config": {"tasks_per_set": 2, "humaneval_problems": 2, "max_new_tokens": 6}},
    }}
    models = [a for a in AUTOCOMPLETE_ASSETS if a not in data_assets]
    result = dg.materialize(models, resources=resources, run_config=run_config)
    assert result.success
    assert _has(data, "domain_corpus")["examples"].value == 30
    assert _has(result, "autocomplete_stage_b_adapter")["steps"].value == 2
    catalog = DuckDBCatalog()
    names = {r["metric"] for r in
             catalog.query("SELECT metric FROM eval_metrics WHERE asset_key = 'autocomplete_eval'")}
    for model in ("m0", "m1", "m2"):
        for s in ("generic", "domain", "humaneval"):
            assert f"{model}_{s}_exact_match" in names
        # the generic set's first tasks are timed one at a time; the other sets go in batches, untimed
        assert f"{model}_generic_latency_ms_p50" in names and f"{model}_domain_latency_ms_p50" not in names
        assert f"{model}_humaneval_pass_at_1" in names
    exact = catalog.query("SELECT n, ci_low, ci_high, split FROM eval_metrics WHERE asset_key = 'autocomplete_eval' "
                          "AND metric = 'm1_generic_exact_match'")[0]
    assert exact["n"] >= 1 and exact["split"] == "test" and 0 <= exact["ci_low"] <= exact["ci_high"] <= 1
    for diff in ("diff_m1_vs_m0_generic_exact_match", "diff_m2_vs_m1_domain_edit_similarity",
                 "diff_m2_vs_m0_humaneval_pass_at_1"):
        assert diff in names
    rows = catalog.query("SELECT model, \"set\", count(*) AS n FROM autocomplete_results GROUP BY ALL")
    assert {(r["model"], r["set"]) for r in rows} == {(m, s) for m in ("m0", "m1", "m2")
                                                      for s in ("generic", "domain", "humaneval")}
    report = _has(result, "autocomplete_eval")["report"].value
    assert "M2 stage B" in report and "| humaneval | pass_at_1 |" in report and "## Paired differences" in report
    evidence = json.loads((Path(catalog.latest_artifact("autocomplete_eval", "all")["path"])
                           / "metrics_evidence.json").read_text())
    assert evidence["m0_humaneval_pass_at_1"]["n"] == 2
    generic = catalog.query("SELECT count(*) AS n FROM autocomplete_results WHERE \"set\" = 'generic'")[0]["n"]
    assert generic and generic % 3 == 0  # the fixture slice has a test file: its tasks, for each model

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
    assert (check.metadata["f16_exact"].value, check.metadata["f16_near_ties"].value) == (3, 0)
    entry = catalog.latest_artifact("autocomplete_stage_b_gguf", "all")
    upstream = json.loads(entry["upstream"])
    assert upstream["autocomplete_stage_b_adapter"] == catalog.latest_artifact("autocomplete_stage_b_adapter",
                                                                               "all")["data_version"]
    assert "autocomplete_base_model" in upstream
    export = GgufExport.load(entry["path"])
    assert gguf_file(catalog, "m2", None) == export.path("q8_0") and export.path("f16").is_file()
    assert (Path(entry["path"]) / "Modelfile").read_text().startswith("# in this folder: ollama create")


def test_stage_b_reads_the_languages_stage_a_recorded(tmp_path):
    from ml.autocomplete.recipe import stage_languages, write_stage_languages

    with pytest.raises(ValueError, match="does not record the languages"):
        stage_languages(tmp_path)
    write_stage_languages(tmp_path, ["javascript", "python"])
    assert stage_languages(tmp_path) == ["javascript", "python"]
