"""Request templates: English and French requests generated together with their query AST.

The programmatic teacher (:class:`ml.dsl.teachers.programmatic.ProgrammaticTeacher`) hands these out.

Positives are correct by construction (the text is rendered from the AST). ``canonicalize`` / ``same_meaning``
give a semantic verdict that ignores the order of commutative ``and`` / ``or`` arguments and number spelling.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from typing import Any

from ml.dsl.domains import DomainSpec, FieldSpec, build_domain, build_schema

MONTHS_EN = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
             "November", "December")
MONTHS_FR = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
             "novembre", "décembre")

# Generic clause templates: op -> (english, french); {label} is the field label, {v} the rendered value.
CLAUSES: dict[str, tuple[str, str]] = {
    "eq": ("where the {label} is {v}", "où {label} est {v}"),
    "neq": ("where the {label} is not {v}", "où {label} n'est pas {v}"),
    "lt": ("where the {label} is below {v}", "où {label} est inférieur à {v}"),
    "lte": ("where the {label} is at most {v}", "où {label} est au plus {v}"),
    "gt": ("where the {label} is above {v}", "où {label} est supérieur à {v}"),
    "gte": ("where the {label} is at least {v}", "où {label} est au moins {v}"),
    "contains": ('where the {label} contains "{v}"', "où {label} contient « {v} »"),
    "in": ("where the {label} is one of {v}", "où {label} est parmi {v}"),
    "between": ("where the {label} is between {v}", "où {label} est entre {v}"),
}
DATE_CLAUSES: dict[str, tuple[str, str]] = {
    "lt": ("where the {label} is before {v}", "où {label} est avant le {v}"),
    "lte": ("where the {label} is on or before {v}", "où {label} est au plus tard le {v}"),
    "gt": ("where the {label} is after {v}", "où {label} est après le {v}"),
    "gte": ("where the {label} is on or after {v}", "où {label} est au plus tôt le {v}"),
    "eq": ("where the {label} is {v}", "où {label} est le {v}"),
    "neq": ("where the {label} is not {v}", "où {label} n'est pas le {v}"),
}


@dataclass(frozen=True)
class Query:
    """One request in both languages and its AST (``{"filter": ..., "sort": ...?, "limit": ...?}``)."""

    domain: str
    text_en: str
    text_fr: str
    ast: dict[str, Any]


@dataclass(frozen=True)
class Example:
    """One training row: a text, a target AST, and whether that AST is a schema-valid positive."""

    domain: str
    lang: str
    text: str
    ast: dict[str, Any]
    valid: bool
    mutation: str | None = None


# ---------------------------------------------------------------------------------------------------- values


def _scalar(f: FieldSpec, rng: random.Random) -> Any:
    if f.type == "enum":
        return rng.choice(f.enum_values)
    if f.type == "string":
        return rng.choice(f.pool)
    if f.type == "number":
        lo, hi = f.pool
        return rng.randint(lo, hi)
    lo, hi = f.pool
    return f"{rng.randint(lo, hi - 1):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _value(f: FieldSpec, op: str, rng: random.Random) -> Any:
    if op == "in":
        pool = f.enum_values or f.pool
        if f.type == "number":
            return sorted({_scalar(f, rng) for _ in range(rng.randint(2, 3))})
        return rng.sample(list(pool), min(len(pool), rng.randint(2, 3)))
    if op == "between":
        a, b = _scalar(f, rng), _scalar(f, rng)
        while a == b:
            b = _scalar(f, rng)
        return sorted([a, b])
    return _scalar(f, rng)


def _render_scalar(f: FieldSpec, v: Any, lang: str) -> str:
    if f.type == "date":
        y, m, d = (int(x) for x in v.split("-"))
        return f"{MONTHS_EN[m - 1]} {d}, {y}" if lang == "en" else f"{d} {MONTHS_FR[m - 1]} {y}"
    if f.type == "enum":
        return str(v).replace("_", " ")
    return str(v)


def _render_value(f: FieldSpec, op: str, v: Any, lang: str) -> str:
    if op == "in":
        parts = [_render_scalar(f, x, lang) for x in v]
        return ", ".join(parts[:-1]) + (" or " if lang == "en" else " ou ") + parts[-1]
    if op == "between":
        a, b = (_render_scalar(f, x, lang) for x in v)
        return f"{a} and {b}" if lang == "en" else f"{a} et {b}"
    return _render_scalar(f, v, lang)


# ---------------------------------------------------------------------------------------------------- rendering


def _render_comparison(domain: DomainSpec, node: dict[str, Any], lang: str) -> str:
    f = domain.field(node["field"])
    i = 0 if lang == "en" else 1
    v = _render_value(f, node["op"], node["value"], lang)
    if node["op"] in f.phrases:
        return f.phrases[node["op"]][i].format(v=v)
    table = DATE_CLAUSES if f.type == "date" and node["op"] in DATE_CLAUSES else CLAUSES
    label = f.label_en if lang == "en" else f.label_fr
    return table[node["op"]][i].format(label=label, v=v)


def render_expr(domain: DomainSpec, node: dict[str, Any], lang: str, top: bool = True) -> str:
    """Text of one filter expression. Nested groups are bracketed by "either ... or" / "both ... and"."""
    op = node["op"]
    if op in ("and", "or"):
        parts = [render_expr(domain, a, lang, top=False) for a in node["args"]]
        joiner = {("and", "en"): " and ", ("or", "en"): " or ", ("and", "fr"): " et ", ("or", "fr"): " ou "}
        if top:
            return joiner[(op, lang)].join(parts)
        if (op, lang) == ("or", "fr"):
            joiner[(op, lang)] = " soit "  # « soit A soit B »
        body = joiner[(op, lang)].join(parts)
        lead = {("and", "en"): "both ", ("or", "en"): "either ", ("and", "fr"): "à la fois ", ("or", "fr"): "soit "}
        return f"({lead[(op, lang)]}{body})"
    if op == "not":
        inner = render_expr(domain, node["arg"], lang, top=False)
        if lang == "en":
            return f"excluding those {inner}"
        return f"sauf {'celles' if domain.feminine_fr else 'ceux'} {inner}"
    return _render_comparison(domain, node, lang)


def _render_sort(domain: DomainSpec, key: dict[str, str], lang: str) -> str:
    f = domain.field(key["field"])
    desc = key["order"] == "desc"
    fem = domain.feminine_fr
    if f.type == "date":
        if lang == "en":
            return "newest first" if desc else "oldest first"
        word = ("récentes" if fem else "récents") if desc else ("anciennes" if fem else "anciens")
        return f"les plus {word} d'abord"
    if lang == "en":
        return f"sorted by {f.label_en} {'descending' if desc else 'ascending'}"
    participle = "triées" if fem else "triés"
    return f"{participle} par {f.label_fr} {'décroissant' if desc else 'croissant'}"


def render(domain: DomainSpec, ast: dict[str, Any], lang: str) -> str:
    """English (``lang="en"``) or French (``"fr"``) request for ``ast``."""
    noun = domain.noun_en if lang == "en" else f"les {domain.noun_fr}"
    text = f"{noun} {render_expr(domain, ast['filter'], lang)}"
    for key in ast.get("sort", []):
        text += ", " + _render_sort(domain, key, lang)
    if "limit" in ast:
        n = ast["limit"]
        if lang == "en":
            text += f", only the first {n}"
        else:
            text += f", seulement les {n} {'premières' if domain.feminine_fr else 'premiers'}"
    return text


# ---------------------------------------------------------------------------------------------------- sampling


def _comparison(domain: DomainSpec, rng: random.Random) -> dict[str, Any]:
    f = rng.choice(domain.fields)
    op = rng.choice(domain.operators_for(f))
    return {"op": op, "field": f.name, "value": _value(f, op, rng)}


def sample_expr(
    domain: DomainSpec, rng: random.Random, depth: int = 0, max_depth: int = 2, parent: str | None = None
) -> dict[str, Any]:
    """A random filter expression: mostly comparisons, some and/or groups and negations. A nested group always
    uses the other connective than its parent (an ``and`` inside an ``and`` would say nothing more)."""
    r = rng.random()
    if depth < max_depth and r < (0.55 if depth == 0 else 0.2):
        if parent in ("and", "or"):
            op = "or" if parent == "and" else "and"
        else:
            op = "and" if rng.random() < 0.7 else "or"
        n = rng.randint(2, 3)
        return {"op": op, "args": [sample_expr(domain, rng, depth + 1, max_depth, op) for _ in range(n)]}
    if depth > 0 and r > 0.9:
        return {"op": "not", "arg": _comparison(domain, rng)}
    return _comparison(domain, rng)


def sample_ast(domain: DomainSpec, rng: random.Random) -> dict[str, Any]:
    ast: dict[str, Any] = {"filter": sample_expr(domain, rng)}
    if rng.random() < 0.4:
        ast["sort"] = [{"field": rng.choice(domain.field_names), "order": rng.choice(("asc", "desc"))}]
    if rng.random() < 0.3:
        ast["limit"] = rng.choice((1, 3, 5, 10, 20, 50))
    return ast


def generate_queries(domain: DomainSpec, n: int, seed: int = 0) -> list[Query]:
    """``n`` seeded queries, each with its English and French text and its AST."""
    rng = random.Random(f"queries:{domain.name}:{domain.seed}:{seed}")
    out = []
    for _ in range(n):
        ast = sample_ast(domain, rng)
        out.append(Query(domain.name, render(domain, ast, "en"), render(domain, ast, "fr"), ast))
    return out


def generate_examples(
    domain: DomainSpec, n: int, seed: int = 0, negative_ratio: float = 0.0
) -> list[Example]:
    """``n`` examples (languages alternate en/fr); ``round(n * negative_ratio)`` of them, at seeded positions,
    pair a request with a schema-invalid mutation of its AST (``valid=False``)."""
    from ml.dsl.mutations import mutate

    if not 0.0 <= negative_ratio <= 1.0:
        raise ValueError("negative_ratio must be in [0, 1]")
    rng = random.Random(f"examples:{domain.name}:{domain.seed}:{seed}")
    queries = generate_queries(domain, (n + 1) // 2, seed)
    negatives = set(rng.sample(range(n), round(n * negative_ratio)))
    out = []
    for i in range(n):
        q = queries[i // 2]
        lang = "en" if i % 2 == 0 else "fr"
        text = q.text_en if lang == "en" else q.text_fr
        if i in negatives:
            bad, kind = mutate(q.ast, rng, domain)
            out.append(Example(domain.name, lang, text, bad, False, kind))
        else:
            out.append(Example(domain.name, lang, text, copy.deepcopy(q.ast), True))
    return out


def teacher(name: str, seed: int = 0) -> tuple[DomainSpec, dict[str, Any]]:
    """Convenience: the seeded domain spec and its schema."""
    domain = build_domain(name, seed)
    return domain, build_schema(domain)


# ---------------------------------------------------------------------------------------------------- verdict


def _norm_number(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _key(node: Any) -> str:
    return json.dumps(node, sort_keys=True, ensure_ascii=False)


def canonicalize_expr(node: dict[str, Any]) -> dict[str, Any]:
    op = node.get("op")
    if op in ("and", "or"):
        args: list[dict[str, Any]] = []
        for a in (canonicalize_expr(x) for x in node.get("args", [])):
            args.extend(a["args"] if a.get("op") == op else [a])  # flatten a and (b and c)
        unique = {_key(a): a for a in args}
        args = [unique[k] for k in sorted(unique)]
        return args[0] if len(args) == 1 else {"op": op, "args": args}
    if op == "not":
        inner = canonicalize_expr(node["arg"])
        return inner["arg"] if inner.get("op") == "not" else {"op": "not", "arg": inner}
    out = {k: v for k, v in node.items()}
    value = node.get("value")
    if isinstance(value, list):
        value = [_norm_number(x) for x in value]
        if op == "in":
            value = sorted({_key(x): x for x in value}.values(), key=_key)
    else:
        value = _norm_number(value)
    out["value"] = value
    return out


def canonicalize(ast: dict[str, Any]) -> dict[str, Any]:
    """Canonical form: and/or args flattened, deduplicated and sorted; double negations removed; integral floats
    made ints; ``in`` lists sorted. Sort keys keep their order (it is meaningful)."""
    out = dict(ast)
    if "filter" in ast:
        out["filter"] = canonicalize_expr(ast["filter"])
    if "limit" in ast:
        out["limit"] = _norm_number(ast["limit"])
    return json.loads(_key(out))


def same_meaning(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Do ``a`` and ``b`` have the same canonical form? Either may break the schema (the teacher judges meaning
    only); one too malformed to canonicalize (a ``not`` without ``arg``, a non-object node) means nothing."""
    try:
        return _key(canonicalize(a)) == _key(canonicalize(b))
    except (KeyError, TypeError, AttributeError, ValueError):
        return False
