"""The DSL pipeline report: plots as PNG bytes, the SFT/DPO comparison table, per-language rates, samples."""

from __future__ import annotations

import json

import pytest

from ml.dsl.evaluation import METRICS
from ml.dsl.report import (
    comparison_table,
    dpo_curve_plot,
    dpo_verdict,
    dsl_report_markdown,
    language_rates,
    paired_table,
    pretty_samples,
    rates_plot,
    sft_curve_plot,
    target_statement,
)
from ml.stats import Estimate, paired_difference, rate

PNG = b"\x89PNG\r\n\x1a\n"

SFT = {
    "parsed_rate": 0.9, "schema_valid_rate": 0.8, "exact_match_rate": 0.3, "teacher_accept_rate": 0.6,
    "semantic_pass_rate": 0.55,
    "parsed_rate_constrained": 1.0, "schema_valid_rate_constrained": 1.0, "exact_match_rate_constrained": 0.4,
    "teacher_accept_rate_constrained": 0.7, "semantic_pass_rate_constrained": 0.6,
    "heldout_semantic_pass_rate_constrained": 0.25,
}
DPO = {
    "parsed_rate": 0.95, "semantic_pass_rate": 0.6,
    "parsed_rate_constrained": 1.0, "semantic_pass_rate_constrained": 0.725,
    "heldout_semantic_pass_rate_constrained": 0.2,
}


def _row(i, lang="en", mode="constrained", passed=True, **kw):
    target = {"filter": {"op": "eq", "field": "city", "value": "Paris"}, "limit": i + 1}
    pred = target if passed else {"filter": {"op": "eq", "field": "town", "value": "Paris"}}
    row = {
        "id": f"r{i}", "domain": "shop", "group": "seen", "lang": lang, "mode": mode,
        "query": "clients in Paris" if lang == "en" else "les clients à Paris",
        "target": json.dumps(target, separators=(",", ":"), ensure_ascii=False),
        "output": json.dumps(pred, separators=(",", ":")),
        "prediction": json.dumps(pred, separators=(",", ":")),
        "parsed": True, "schema_valid": passed, "exact_match": passed, "teacher_accept": passed,
        "semantic_pass": passed, "error": None if passed else "schema: 'town' is not one of ['city']",
    }
    row.update(kw)
    return row


def _table_row(table: str, label: str, metric: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == [label, f"`{metric}`"]:
            return cells[2:]
    raise AssertionError(f"no row {label} {metric} in\n{table}")


SFT_CURVE = [(s, "loss", 2.0 / (1 + s)) for s in range(0, 50, 5)] + [
    (10, "eval_loss", 1.1), (20, "eval_loss", 0.9), (30, "eval_loss", 0.8),
    (10, "probe_semantic_pass_rate_constrained", 0.1), (20, "probe_semantic_pass_rate_constrained", 0.4),
    (30, "probe_semantic_pass_rate_constrained", 0.6), (20, "probe_schema_valid_rate_constrained", 0.9),
    (5, "learning_rate", 1e-4), (5, "grad_norm", 3.0), (7, "loss", float("nan")),
]
DPO_CURVE = [(s, m, v) for s in range(1, 20, 3) for m, v in (
    ("loss", 0.69 - s * 0.01), ("rewards/margins", 0.1 * s), ("rewards/accuracies", min(1.0, 0.5 + s / 40)),
    ("rewards/chosen", 0.05 * s), ("rewards/rejected", -0.05 * s), ("learning_rate", 5e-6))]


@pytest.mark.parametrize("make", [
    lambda: rates_plot({"SFT": SFT, "DPO": DPO}),
    lambda: rates_plot({"SFT": {"parsed_rate": 0.5}}),  # no held-out keys, most keys missing
    lambda: rates_plot({}),
    lambda: rates_plot({"SFT": {}, "DPO": {"semantic_pass_rate": float("nan")}}),
    lambda: sft_curve_plot(SFT_CURVE),
    lambda: sft_curve_plot([(1, "loss", 1.0)]),  # no probe, no eval loss
    lambda: sft_curve_plot([]),
    lambda: sft_curve_plot(None),
    lambda: dpo_curve_plot(DPO_CURVE),
    lambda: dpo_curve_plot([(1, "rewards/accuracies", 0.5)]),
    lambda: dpo_curve_plot([]),
], ids=["rates", "rates-partial", "rates-empty", "rates-nan", "sft", "sft-loss-only", "sft-empty", "sft-none",
        "dpo", "dpo-acc-only", "dpo-empty"])
def test_plots_are_png(make):
    data = make()
    assert isinstance(data, bytes) and data.startswith(PNG) and len(data) > 1000


def test_comparison_table_numbers():
    table = comparison_table(SFT, DPO)
    assert table.splitlines()[0] == "| domains | metric | SFT | SFT constrained | DPO | DPO constrained |"
    assert _table_row(table, "seen domains", "semantic_pass_rate") == ["0.550", "0.600", "0.600", "0.725"]
    assert _table_row(table, "seen domains", "exact_match_rate") == ["0.300", "0.400", "–", "–"]  # DPO lacks it
    assert _table_row(table, "held-out domains", "semantic_pass_rate") == ["–", "0.250", "–", "0.200"]
    assert len([line for line in table.splitlines() if line.startswith("| seen")]) == len(METRICS)


def test_comparison_table_prints_estimates_with_interval_and_n():
    sft = {"semantic_pass_rate_constrained": rate([1, 1] + [0] * 10)}
    table = comparison_table(sft, {}, base={"semantic_pass_rate_constrained": rate([0] * 12)})
    cells = _table_row(table, "seen domains", "semantic_pass_rate")
    assert cells[1] == "0.000 [0.000, 0.242] n=12" and cells[3] == "0.167 [0.047, 0.448] n=12"


def test_comparison_table_without_heldout_or_metrics():
    table = comparison_table({"parsed_rate": 1.0}, {})
    assert "held-out" not in table
    assert _table_row(table, "seen domains", "parsed_rate") == ["1.000", "–", "–", "–"]
    assert "–" in comparison_table({}, {})


def _differences(sft_gain: list[float], dpo_gain: list[float]) -> dict[str, dict[str, Estimate]]:
    zeros = [0.0] * len(sft_gain)
    return {"sft_vs_base": {"semantic_pass_rate_constrained": paired_difference(sft_gain, zeros)},
            "dpo_vs_sft": {"semantic_pass_rate_constrained": paired_difference(dpo_gain, zeros[:len(dpo_gain)])}}


def test_paired_table_says_beats_only_when_the_interval_excludes_zero():
    diffs = _differences([1.0] * 10 + [0.0] * 2, [1.0, 0.0, -1.0, 0.0] * 3)
    table = paired_table(diffs)
    row = next(line for line in table.splitlines() if "`semantic_pass_rate`" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["seen domains", "constrained", "`semantic_pass_rate`"]
    assert cells[3].startswith("0.833 [") and cells[3].endswith("n=12") and cells[4] == "SFT beats base"
    assert cells[5].startswith("0.000 [") and cells[6] == "no measurable difference at n=12"
    worse = paired_table(_differences([-1.0] * 12, [0.0] * 12))
    assert "base beats SFT" in worse
    assert paired_table({}) == "_no paired requests_"
    text = dpo_verdict(diffs)
    assert "SFT − base on seen domains" in text and "SFT beats base" in text
    assert "DPO − SFT on seen domains" in text and "no measurable difference at n=12" in text
    assert "DPO vs SFT on seen domains: not measured" in dpo_verdict({"sft_vs_base": {}})


def test_language_rates_from_rows():
    rows = [_row(0, "en"), _row(1, "en", passed=False), _row(2, "en"), _row(3, "fr", passed=False),
            _row(4, "fr"), _row(5, "fr", mode="unconstrained", passed=False), _row(6, "en", mode="unconstrained")]
    rates = language_rates(rows)
    assert list(rates) == ["en", "fr"]
    assert rates["en"] == (pytest.approx(2 / 3), 3)
    assert rates["fr"] == (0.5, 2)
    assert language_rates(rows, mode="unconstrained") == {"en": (1.0, 1), "fr": (0.0, 1)}
    assert language_rates([]) == {}


def test_target_statement_flips_with_value():
    assert target_statement({"semantic_pass_rate_constrained": 0.5}).endswith("— reached (0.500)")
    assert "— reached (0.917 [0.646, 0.985] n=12)" in target_statement(
        {"semantic_pass_rate_constrained": rate([1] * 11 + [0])})
    assert "— not reached (0.000" in target_statement({"semantic_pass_rate_constrained": rate([0] * 12)})
    assert "— not established at n=12 (0.500" in target_statement(
        {"semantic_pass_rate_constrained": rate([1, 0] * 6)})
    assert target_statement({"semantic_pass_rate_constrained": 0.49}).endswith("— not reached (0.490)")
    assert target_statement({}).endswith("not measured")
    assert "≥ 0.7" in target_statement({"semantic_pass_rate_constrained": 0.6}, target=0.7)


def _report(sft=SFT, dpo=DPO):
    sft_rows = [_row(0, "en"), _row(1, "fr", passed=False)]
    dpo_rows = [_row(0, "en"), _row(1, "fr"), _row(2, "en", passed=False), _row(3, "en", mode="unconstrained")]
    return dsl_report_markdown(
        sft_metrics=sft, dpo_metrics=dpo, sft_rows=sft_rows, dpo_rows=dpo_rows,
        differences=_differences([1.0] * 10 + [0.0] * 2, [0.0] * 12),
        images={"rates": "rates.png", "sft curve": "sft_curve.png"},
        summary={"teacher_backend": "programmatic", "base_model": "tiny-gpt", "train_domains": ["shop", "hr"],
                 "heldout_domains": ["fleet"], "dataset_sizes": {"sft": 400, "dpo": 120}, "sft_steps": 300},
    )


def test_report_sections():
    md = _report()
    assert md.startswith("# DSL student")
    assert "- **teacher backend**: programmatic" in md and "- **training domains**: shop, hr" in md
    assert "- **dataset sizes**: sft=400, dpo=120" in md
    assert "— reached (0.600)" in md
    assert "## Paired differences (test split)" in md and "SFT beats base" in md
    assert "no measurable difference at n=12" in md
    assert "| en | 1.000 [0.207, 1.000] n=1 | 0.500 [0.095, 0.905] n=2 |" in md
    assert "![rates](rates.png)" in md and "![sft curve](sft_curve.png)" in md
    assert "`semantic_pass` = schema-valid and selecting the same records" in md
    assert "## Samples (DPO)" in md


def test_report_target_not_reached():
    md = _report(sft={"semantic_pass_rate_constrained": 0.3}, dpo={"semantic_pass_rate_constrained": 0.2})
    assert "— not reached (0.300)" in md


def test_pretty_samples_json_blocks():
    unparsed = _row(9, "fr", passed=False, parsed=False, prediction=None, output="désolé ``` pas de JSON",
                    error="no JSON object")
    rows = [_row(0), _row(1, passed=False), unparsed, _row(2, mode="unconstrained")] + [_row(i) for i in range(3, 8)]
    md = pretty_samples(rows, k=2)
    target = json.dumps(json.loads(rows[0]["target"]), indent=2, ensure_ascii=False)
    assert f"```json\n{target}\n```" in md
    assert '```json\n{\n  "filter": {\n    "op": "eq",\n    "field": "town"' in md  # schema-invalid prediction
    assert "#### Semantic passes — 6 of 8, showing 2" in md
    assert "r5" not in md  # only k per category
    assert "### Unconstrained decoding (1 requests)" in md
    assert "````text\ndésolé ``` pas de JSON\n````" in md  # raw output fallback, fence not broken
    assert "> les clients à Paris" in md and "semantic_pass=✗" in md and "error: `no JSON object`" in md
    assert pretty_samples([]) == "_no samples_\n"
