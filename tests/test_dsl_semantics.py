"""The semantic judge (ml/dsl/semantics.py): equivalent queries select the same records, near misses do not; and
the metrics and paired differences computed from per-request rows (ml/dsl/evaluation.py)."""

from __future__ import annotations

import json

import pytest

from ml.dsl import build_domain, build_schema, generate_queries
from ml.dsl.evaluation import metrics_from_results, paired_differences, score_sample
from ml.dsl.format import ast_to_text
from ml.dsl.semantics import equivalent, record_table
from ml.stats import Estimate


@pytest.fixture(scope="module")
def library():
    spec = build_domain("library", 3)
    assert spec.field("author").type == "string" and spec.field("year").type == "number"
    assert spec.field("added_on").type == "date" and spec.field("genre").type == "enum"
    return spec


def q(node, **rest):
    return {"filter": node, **rest}


def cmp(op, field, value):
    return {"op": op, "field": field, "value": value}


A = cmp("eq", "author", "Hugo")
B = cmp("gt", "year", 1900)
C = cmp("eq", "genre", "classic")

EQUIVALENT = {
    "operand order": (q({"op": "and", "args": [A, B]}), q({"op": "and", "args": [B, A]})),
    "De Morgan (and)": (q({"op": "not", "arg": {"op": "and", "args": [A, B]}}),
                        q({"op": "or", "args": [{"op": "not", "arg": A}, {"op": "not", "arg": B}]})),
    "De Morgan (or)": (q({"op": "not", "arg": {"op": "or", "args": [A, C]}}),
                       q({"op": "and", "args": [cmp("neq", "author", "Hugo"), cmp("neq", "genre", "classic")]})),
    "in vs or of eq": (q(cmp("in", "author", ["Hugo", "Camus"])),
                       q({"op": "or", "args": [A, cmp("eq", "author", "Camus")]})),
    "lte vs not gt": (q(cmp("lte", "year", 1900)), q({"op": "not", "arg": B})),
    "between vs gte and lte": (q(cmp("between", "year", [1900, 1950])),
                               q({"op": "and", "args": [cmp("gte", "year", 1900), cmp("lte", "year", 1950)]})),
    "date lt vs not gte": (q(cmp("lt", "added_on", "2001-03-01")),
                           q({"op": "not", "arg": cmp("gte", "added_on", "2001-03-01")})),
    "double negation": (q({"op": "not", "arg": {"op": "not", "arg": A}}), q(A)),
    "1900.0 is 1900": (q(cmp("gt", "year", 1900.0)), q(B)),
    "distribution": (q({"op": "and", "args": [A, {"op": "or", "args": [B, C]}]}),
                     q({"op": "or", "args": [{"op": "and", "args": [A, B]}, {"op": "and", "args": [A, C]}]})),
    "same sort and limit": (q(A, sort=[{"field": "year", "order": "desc"}], limit=5),
                            q(A, limit=5.0, sort=[{"field": "year", "order": "desc"}])),
}

NEAR_MISSES = {
    "gt vs gte": (q(B), q(cmp("gte", "year", 1900))),
    "gt 1900 vs gte 1901 (numbers are real)": (q(B), q(cmp("gte", "year", 1901))),
    "off by one constant": (q(B), q(cmp("gt", "year", 1901))),
    "and vs or": (q({"op": "and", "args": [A, B]}), q({"op": "or", "args": [A, B]})),
    "a missing conjunct": (q({"op": "and", "args": [A, B, C]}), q({"op": "and", "args": [A, B]})),
    "De Morgan done wrong": (q({"op": "not", "arg": {"op": "and", "args": [A, B]}}),
                             q({"op": "and", "args": [{"op": "not", "arg": A}, {"op": "not", "arg": B}]})),
    "in with one value less": (q(cmp("in", "author", ["Hugo", "Camus"])), q(A)),
    "between excludes an end": (q(cmp("between", "year", [1900, 1950])),
                                q({"op": "and", "args": [cmp("gt", "year", 1900), cmp("lte", "year", 1950)]})),
    "contains vs eq": (q(cmp("contains", "title", "Ring")), q(cmp("eq", "title", "Ring"))),
    "contains another case": (q(cmp("contains", "title", "Ring")), q(cmp("contains", "title", "ring"))),
    "eq vs neq": (q(A), q(cmp("neq", "author", "Hugo"))),
    "date one day later": (q(cmp("lt", "added_on", "2001-03-01")), q(cmp("lte", "added_on", "2001-03-01"))),
    "other enum value": (q(C), q(cmp("eq", "genre", "poetry"))),
    "other field": (q(cmp("gt", "pages", 1900)), q(B)),
    "limit differs": (q(A, limit=5), q(A, limit=10)),
    "sort differs": (q(A, sort=[{"field": "year", "order": "desc"}]), q(A, sort=[{"field": "year", "order": "asc"}])),
    "a limit added": (q(A), q(A, limit=50)),
}


@pytest.mark.parametrize("name", list(EQUIVALENT))
def test_equivalent_queries_select_the_same_records(library, name):
    a, b = EQUIVALENT[name]
    verdict = equivalent(a, b, library)
    assert verdict.equivalent, verdict.reason
    assert verdict.exhaustive and verdict.records > 1
    assert equivalent(b, a, library).equivalent  # symmetric


@pytest.mark.parametrize("name", list(NEAR_MISSES))
def test_near_misses_are_rejected(library, name):
    a, b = NEAR_MISSES[name]
    verdict = equivalent(a, b, library)
    assert not verdict.equivalent
    assert not equivalent(b, a, library).equivalent


def test_the_table_holds_the_boundary_values_of_every_compared_field(library):
    table = record_table(library, [q({"op": "and", "args": [B, cmp("contains", "title", "Ring"),
                                                             cmp("eq", "added_on", "2001-03-01")]})["filter"]])
    assert set(table.fields) == {"year", "title", "added_on"}  # only compared fields vary
    assert {1899, 1899.5, 1900, 1900.5, 1901} <= set(table.values["year"])
    assert {"2001-02-28", "2001-03-01", "2001-03-02"} <= set(table.values["added_on"])
    titles = table.values["title"]
    assert "" in titles and any("Ring" in t and t != "Ring" for t in titles) and "rING" in titles
    # every combination of the per-field values is a record (exhaustive)
    assert len(table) == len(table.values["year"]) * len(titles) * len(table.values["added_on"])
    assert table.exhaustive and len({tuple(r.items()) for r in table.records()}) == len(table)


def test_a_large_product_is_sampled_with_a_seed(library):
    big = q({"op": "and", "args": [cmp("in", "year", list(range(1900, 1940))), cmp("in", "pages", list(range(40))),
                                   cmp("in", "author", ["Hugo", "Camus", "Orwell", "Austen"])]})
    verdict = equivalent(big, big, library, max_records=5000)
    assert verdict.equivalent and not verdict.exhaustive and verdict.records == 5000
    assert record_table(library, [big["filter"]], max_records=5000).codes.tolist() == \
        record_table(library, [big["filter"]], max_records=5000).codes.tolist()


def test_malformed_candidates_are_not_equivalent_and_never_raise(library):
    for broken in ({"filter": {"op": "not"}}, {"filter": 3}, {"filter": {"op": "and", "args": "ab"}}, [1], {},
                   {"filter": cmp("eq", "no_such_field", 1)}, {"filter": cmp("like", "author", "H")},
                   {"filter": cmp("in", "author", "Hugo")}, {"filter": cmp("between", "year", [1])},
                   {"filter": A, "limit": "ten"}, {"filter": A, "sort": "year"}):
        verdict = equivalent(broken, q(A), library)
        assert not verdict.equivalent, broken
    # a value of the wrong type compares false, it does not crash
    assert not equivalent(q(cmp("gt", "year", "1900")), q(B), library).equivalent


def test_generated_queries_are_equivalent_to_themselves_and_mostly_not_to_each_other(library):
    queries = [x.ast for x in generate_queries(library, 40, seed=4)]
    assert all(equivalent(a, a, library).equivalent for a in queries)
    differ = sum(not equivalent(a, b, library).equivalent for a, b in zip(queries, queries[1:]))
    assert differ >= len(queries) - 3


# ---------------------------------------------------------------------------------------------------- scores, metrics


def test_semantic_pass_can_differ_from_exact_match(library):
    schema = build_schema(library)
    target = {"filter": {"op": "and", "args": [A, cmp("lte", "year", 1950)]}}
    swapped = {"filter": {"op": "and", "args": [cmp("lte", "year", 1950), A]}}
    negated = {"filter": {"op": "and", "args": [A, {"op": "not", "arg": cmp("gt", "year", 1950)}]}}
    wrong = {"filter": {"op": "and", "args": [A, cmp("lt", "year", 1950)]}}
    scores = [score_sample(ast_to_text(x), schema, target, library) for x in (target, swapped, negated, wrong)]
    assert [(s.exact_match, s.semantic_pass) for s in scores] == [(True, True), (False, True), (False, True),
                                                                   (False, False)]
    assert scores[3].error.startswith("meaning: selects different records")
    assert all(s.teacher_accept is None for s in scores)  # no LLM teacher judged
    with_teacher = score_sample(ast_to_text(swapped), schema, target, library, lambda _: False)
    assert with_teacher.teacher_accept is False and with_teacher.semantic_pass
    assert score_sample(ast_to_text(swapped), schema, target, library, lambda _: None).teacher_accept is False


def _rows(flags, mode="constrained", group="seen", prefix="r"):
    return [{"id": f"{prefix}{i}", "group": group, "mode": mode, "parsed": True, "schema_valid": True,
             "exact_match": False, "teacher_accept": None, "semantic_pass": bool(f), "comparison_f1": 0.5 * f}
            for i, f in enumerate(flags)]


def test_metrics_are_estimates_with_n_and_interval():
    rows = _rows([1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) + _rows([1, 0, 0, 0], group="heldout", prefix="h") \
        + _rows([1, 1, 1, 0], mode="unconstrained")
    m = metrics_from_results(rows)
    spr = m["semantic_pass_rate_constrained"]
    assert isinstance(spr, Estimate) and spr.n == 12 and spr.split == "test" and spr.method == "wilson"
    assert str(spr) == "0.167 [0.047, 0.448] n=12"
    assert m["heldout_semantic_pass_rate_constrained"].n == 4
    assert m["semantic_pass_rate"].value == 0.75 and m["semantic_pass_rate"].n == 4
    assert m["comparison_f1_constrained"].method == "bootstrap"
    assert m["comparison_f1_constrained"].value == pytest.approx(2 * 0.5 / 12)
    # no teacher verdicts: no teacher_accept_rate (it would only repeat the judge)
    assert not any(k.startswith(("teacher_accept", "heldout_teacher_accept")) for k in m)
    assert metrics_from_results([]) == {}
    rated = [dict(r, teacher_accept=bool(i % 2)) for i, r in enumerate(_rows([1, 0, 1, 0]))]
    assert metrics_from_results(rated)["teacher_accept_rate_constrained"].value == 0.5


def test_paired_differences_align_on_id_and_mode():
    better = _rows([1] * 10 + [0] * 2)
    worse = list(reversed(_rows([0] * 12)))  # order does not matter, ids do
    diff = paired_differences(better, worse)["semantic_pass_rate_constrained"]
    assert diff.method == "paired_bootstrap" and diff.n == 12 and diff.value == pytest.approx(10 / 12)
    assert diff.excludes_zero
    # requests only one side evaluated are left out; another mode is another cell
    partial = paired_differences(better, _rows([0] * 5) + _rows([0] * 12, mode="unconstrained"))
    assert partial["semantic_pass_rate_constrained"].n == 5 and "semantic_pass_rate" not in partial
    tie = paired_differences(_rows([1, 0] * 6), _rows([0, 1] * 6))["semantic_pass_rate_constrained"]
    assert tie.value == 0 and not tie.excludes_zero


def test_the_programmatic_teacher_judges_by_selection(library):
    from ml.dsl.teachers import ProgrammaticTeacher, TeacherQuery

    schema = build_schema(library)
    teacher = ProgrammaticTeacher()
    tq = TeacherQuery(library.name, "en", "books by Hugo", q(A))
    assert teacher.judge(library, schema, tq, q(cmp("in", "author", ["Hugo"])), q(A)).accept
    assert not teacher.judge(library, schema, tq, q(cmp("in", "author", ["Hugo", "Camus"])), q(A)).accept
    assert json.loads(ast_to_text(q(A))) == q(A)
