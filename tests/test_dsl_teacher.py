"""The programmatic DSL teacher: seeded domains, schemas, EN/FR queries, semantic verdict, invalid mutations."""

from __future__ import annotations

import random

import jsonschema
import pytest

from ml.dsl import (
    DOMAIN_NAMES,
    MUTATION_KINDS,
    OPERATOR_CATALOG,
    build_domain,
    build_schema,
    canonicalize,
    generate_examples,
    generate_queries,
    mutate,
    same_meaning,
)
from ml.dsl.domains import FIELD_TYPES

SEEDS = (0, 1, 7)


def _validator(schema):
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_domains_are_seed_reproducible_and_well_formed():
    assert {"library", "movies", "orders", "weather", "recipes", "flights"} <= set(DOMAIN_NAMES)
    for name in DOMAIN_NAMES:
        for seed in SEEDS:
            d = build_domain(name, seed)
            assert d == build_domain(name, seed)
            assert build_schema(d) == build_schema(build_domain(name, seed))
            assert 4 <= len(d.operators) <= 7
            assert set(d.operators) <= set(OPERATOR_CATALOG)
            assert len(d.fields) >= 4 and len(set(d.field_names)) == len(d.fields)
            for f in d.fields:
                assert f.type in FIELD_TYPES
                assert bool(f.enum_values) == (f.type == "enum")
                assert d.operators_for(f)
    # Different seeds do give different specs somewhere.
    assert len({(build_domain("movies", s).operators, build_domain("movies", s).field_names) for s in range(10)}) > 1


def test_schema_uses_refs_and_restricts_fields_and_operators():
    d = build_domain("library", 3)
    schema = build_schema(d)
    assert schema["properties"]["filter"] == {"$ref": "#/$defs/expr"}
    comparison = schema["$defs"]["comparison"]
    assert comparison["properties"]["field"]["enum"] == list(d.field_names)
    assert comparison["properties"]["op"]["enum"] == list(d.operators)
    _validator(schema)


def test_queries_are_reproducible_and_bilingual():
    d = build_domain("library", 0)
    a, b = generate_queries(d, 20, seed=5), generate_queries(d, 20, seed=5)
    assert a == b
    assert a != generate_queries(d, 20, seed=6)
    for q in a:
        assert q.text_en.startswith("books ") and q.text_fr.startswith("les livres ")
        assert q.text_en != q.text_fr


def test_every_positive_validates_against_its_schema():
    for name in DOMAIN_NAMES:
        for seed in SEEDS:
            d = build_domain(name, seed)
            v = _validator(build_schema(d))
            for q in generate_queries(d, 20, seed=seed):
                errors = [e.message for e in v.iter_errors(q.ast)]
                assert not errors, (name, seed, q.ast, errors)


@pytest.mark.parametrize("kind", MUTATION_KINDS)
def test_every_mutation_is_schema_invalid(kind):
    rng = random.Random(kind)
    for name in DOMAIN_NAMES:
        d = build_domain(name, 2)
        v = _validator(build_schema(d))
        for q in generate_queries(d, 10, seed=11):
            before = repr(q.ast)
            bad, got = mutate(q.ast, rng, d, kind)
            assert got == kind
            assert repr(q.ast) == before, "mutate must not modify its input"
            assert not v.is_valid(bad), (kind, bad)


def test_examples_mix_languages_and_negatives():
    d = build_domain("orders", 4)
    v = _validator(build_schema(d))
    examples = generate_examples(d, 40, seed=1, negative_ratio=0.25)
    assert examples == generate_examples(d, 40, seed=1, negative_ratio=0.25)
    assert len(examples) == 40
    assert {e.lang for e in examples} == {"en", "fr"}
    negatives = [e for e in examples if not e.valid]
    assert len(negatives) == 10
    assert all(e.mutation in MUTATION_KINDS for e in negatives)
    for e in examples:
        assert v.is_valid(e.ast) == e.valid
    assert all(e.valid for e in generate_examples(d, 10, negative_ratio=0.0))


def test_canonicalize_ignores_and_or_order_and_number_spelling():
    a = {"op": "eq", "field": "author", "value": "Tolkien"}
    b = {"op": "gt", "field": "year", "value": 1950}
    c = {"op": "lt", "field": "pages", "value": 300.0}
    x = {"filter": {"op": "and", "args": [a, {"op": "or", "args": [b, c]}]}, "limit": 5}
    y = {"filter": {"op": "and", "args": [{"op": "or", "args": [dict(c, value=300), b]}, a]}, "limit": 5.0}
    assert canonicalize(x) == canonicalize(y)
    assert same_meaning(x, y)
    # Nesting the same connective and double negation are also normalized.
    flat = {"filter": {"op": "and", "args": [a, b, c]}}
    nested = {"filter": {"op": "and", "args": [a, {"op": "and", "args": [c, {"op": "not", "arg": {"op": "not",
                                                                                                   "arg": b}}]}]}}
    assert same_meaning(flat, nested)
    # `in` is a set; sort order is meaningful.
    assert same_meaning({"filter": {"op": "in", "field": "g", "value": [2, 1]}},
                        {"filter": {"op": "in", "field": "g", "value": [1.0, 2]}})
    s1 = {"filter": a, "sort": [{"field": "year", "order": "asc"}, {"field": "pages", "order": "asc"}]}
    s2 = {"filter": a, "sort": [{"field": "pages", "order": "asc"}, {"field": "year", "order": "asc"}]}
    assert not same_meaning(s1, s2)


def test_same_meaning_is_false_for_a_changed_value_operator_or_connective():
    a = {"op": "eq", "field": "author", "value": "Tolkien"}
    b = {"op": "gt", "field": "year", "value": 1950}
    base = {"filter": {"op": "and", "args": [a, b]}}
    assert not same_meaning(base, {"filter": {"op": "and", "args": [a, dict(b, value=1951)]}})
    assert not same_meaning(base, {"filter": {"op": "and", "args": [a, dict(b, op="gte")]}})
    assert not same_meaning(base, {"filter": {"op": "or", "args": [a, b]}})
    assert not same_meaning(base, {"filter": {"op": "and", "args": [a, b]}, "limit": 1})


def test_generated_queries_match_their_canonical_forms():
    d = build_domain("flights", 0)
    for q in generate_queries(d, 30, seed=3):
        assert same_meaning(q.ast, canonicalize(q.ast))
