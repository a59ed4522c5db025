"""Negatives by mutation: each mutation of a valid query AST breaks the domain's schema on purpose."""

from __future__ import annotations

import copy
import random
from typing import Any

from ml.dsl.domains import OPERATOR_CATALOG, DomainSpec

MUTATION_KINDS = ("unknown_field", "unknown_operator", "wrong_value_type", "missing_key", "extra_key")


def _nodes(expr: dict[str, Any]) -> list[dict[str, Any]]:
    """All expression nodes of ``expr``, pre-order."""
    out = [expr]
    if expr.get("op") in ("and", "or"):
        for a in expr["args"]:
            out.extend(_nodes(a))
    elif expr.get("op") == "not":
        out.extend(_nodes(expr["arg"]))
    return out


def _comparisons(ast: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in _nodes(ast["filter"]) if "field" in n]


def _unknown_field(domain: DomainSpec, rng: random.Random) -> str:
    names = set(domain.field_names)
    pool = [f"{n}_id" for n in names] + ["unknown", "misc", "owner", "score", "tags"]
    return rng.choice(sorted(p for p in pool if p not in names))


def _wrong_value(domain: DomainSpec, node: dict[str, Any], rng: random.Random) -> Any:
    f = domain.field(node["field"])
    if f.type == "number":
        bad: Any = rng.choice(["12", "many", True, None])
    elif f.type == "date":
        bad = rng.choice([2020, "next week", "03/04/2021", None])
    elif f.type == "enum":
        bad = rng.choice([0, "not_a_" + f.name, None])
    else:
        bad = rng.choice([42, 3.5, True, None, ""])
    if node["op"] in ("in", "between"):
        return [bad] * (2 if node["op"] == "between" else 1)
    return bad


def mutate(
    ast: dict[str, Any], rng: random.Random, domain: DomainSpec, kind: str | None = None
) -> tuple[dict[str, Any], str]:
    """A schema-invalid copy of ``ast`` and the mutation kind used (drawn from ``MUTATION_KINDS`` when None).

    ``ast`` itself is never modified."""
    kind = kind or rng.choice(MUTATION_KINDS)
    if kind not in MUTATION_KINDS:
        raise ValueError(f"unknown mutation kind {kind!r}")
    out = copy.deepcopy(ast)
    comparisons = _comparisons(out)
    node = rng.choice(comparisons)
    if kind == "unknown_field":
        if out.get("sort") and rng.random() < 0.3:
            rng.choice(out["sort"])["field"] = _unknown_field(domain, rng)
        else:
            node["field"] = _unknown_field(domain, rng)
    elif kind == "unknown_operator":
        outside = [op for op in OPERATOR_CATALOG if op not in domain.operators] + ["like", "regex", "xor"]
        node["op"] = rng.choice(outside)
    elif kind == "wrong_value_type":
        node["value"] = _wrong_value(domain, node, rng)
    elif kind == "missing_key":
        target = rng.choice(["filter", "node", "node"])
        if target == "filter":
            del out["filter"]
        else:
            container = rng.choice(_nodes(out["filter"]))
            required = {"and": "args", "or": "args", "not": "arg"}.get(container["op"])
            key = required or rng.choice(["op", "field", "value"])
            del container[key]
    else:  # extra_key
        where = rng.choice(["root", "node", "node"])
        target = out if where == "root" else rng.choice(_nodes(out["filter"]))
        target[rng.choice(["note", "comment", "weight", "extra"])] = rng.choice([1, "x", True])
    return out, kind


def mutate_many(
    ast: dict[str, Any], rng: random.Random, domain: DomainSpec, n: int
) -> list[tuple[dict[str, Any], str]]:
    return [mutate(ast, rng, domain) for _ in range(n)]
