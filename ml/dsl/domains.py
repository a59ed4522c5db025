"""Domain specs (fields, types, operator subsets) and the JSON Schema of each domain's query DSL.

Everything is drawn from a seeded ``random.Random``: the same ``(name, seed)`` always gives the same spec and schema.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

FIELD_TYPES = ("string", "number", "date", "enum")
OPERATOR_CATALOG = ("eq", "neq", "lt", "lte", "gt", "gte", "contains", "in", "between")
LOGICAL_OPERATORS = ("and", "or", "not")
SORT_ORDERS = ("asc", "desc")

# Which comparison operators make sense for which field type.
OPERATORS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "string": ("eq", "neq", "contains", "in"),
    "enum": ("eq", "neq", "in"),
    "number": ("eq", "neq", "lt", "lte", "gt", "gte", "in", "between"),
    "date": ("eq", "neq", "lt", "lte", "gt", "gte", "between"),
}
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"


@dataclass(frozen=True)
class FieldSpec:
    """One queryable field. ``pool`` holds sample values (strings) or, for number/date, ``(low, high)``."""

    name: str
    type: str
    label_en: str
    label_fr: str
    enum_values: tuple[str, ...] = ()
    pool: tuple[Any, ...] = ()
    # Optional nicer phrasings keyed by operator: (english, french), with ``{v}`` for the value.
    phrases: dict[str, tuple[str, str]] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class DomainSpec:
    name: str
    seed: int
    noun_en: str
    noun_fr: str
    feminine_fr: bool
    fields: tuple[FieldSpec, ...]
    operators: tuple[str, ...]

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def operators_for(self, f: FieldSpec) -> tuple[str, ...]:
        return tuple(op for op in OPERATORS_BY_TYPE[f.type] if op in self.operators)


def _f(name, type_, en, fr, pool=(), enum=(), **phrases) -> FieldSpec:
    return FieldSpec(name, type_, en, fr, tuple(enum), tuple(pool), dict(phrases))


# name -> (noun_en, noun_fr, feminine_fr, candidate fields). The first field is always kept.
DOMAIN_CATALOG: dict[str, tuple[str, str, bool, tuple[FieldSpec, ...]]] = {
    "library": ("books", "livres", False, (
        _f("author", "string", "author", "l'auteur", ("Tolkien", "Austen", "Hugo", "Orwell", "Le Guin", "Camus"),
           eq=("by {v}", "de {v}")),
        _f("year", "number", "publication year", "l'année de publication", (1800, 2024),
           gt=("published after {v}", "publiés après {v}"), lt=("published before {v}", "publiés avant {v}")),
        _f("title", "string", "title", "le titre", ("Ring", "Pride", "Night", "Stranger", "Dune")),
        _f("genre", "enum", "genre", "le genre",
           enum=("fantasy", "romance", "classic", "science_fiction", "mystery", "poetry", "history", "essay")),
        _f("pages", "number", "page count", "le nombre de pages", (50, 1500)),
        _f("added_on", "date", "date added", "la date d'ajout", (1995, 2025)),
        _f("language", "enum", "language", "la langue", enum=("en", "fr", "de", "es", "it", "ja")),
    )),
    "movies": ("movies", "films", False, (
        _f("director", "string", "director", "le réalisateur",
           ("Kubrick", "Varda", "Kurosawa", "Nolan", "Truffaut", "Bigelow"),
           eq=("directed by {v}", "réalisés par {v}")),
        _f("release_date", "date", "release date", "la date de sortie", (1950, 2025)),
        _f("rating", "number", "rating", "la note", (1, 10)),
        _f("genre", "enum", "genre", "le genre",
           enum=("drama", "comedy", "horror", "thriller", "animation", "documentary", "western")),
        _f("runtime", "number", "runtime in minutes", "la durée en minutes", (60, 240)),
        _f("title", "string", "title", "le titre", ("Space", "Night", "Wave", "River", "City")),
        _f("country", "enum", "country", "le pays", enum=("us", "fr", "jp", "uk", "kr", "it")),
    )),
    "orders": ("orders", "commandes", True, (
        _f("customer", "string", "customer", "le client", ("Dupont", "Smith", "Garcia", "Nguyen", "Martin"),
           eq=("placed by {v}", "passées par {v}")),
        _f("total", "number", "total", "le total", (5, 5000),
           gt=("over {v} dollars", "de plus de {v} dollars")),
        _f("order_date", "date", "order date", "la date de commande", (2015, 2026)),
        _f("status", "enum", "status", "le statut",
           enum=("pending", "paid", "shipped", "delivered", "cancelled", "refunded")),
        _f("items", "number", "item count", "le nombre d'articles", (1, 50)),
        _f("city", "string", "city", "la ville", ("Paris", "Lyon", "Boston", "Austin", "Montreal")),
        _f("channel", "enum", "channel", "le canal", enum=("web", "mobile", "store", "phone")),
    )),
    "weather": ("weather reports", "relevés météo", False, (
        _f("station", "string", "station", "la station", ("Oslo", "Nice", "Denver", "Quebec", "Lille"),
           eq=("from {v}", "de {v}")),
        _f("temperature", "number", "temperature", "la température", (-30, 45)),
        _f("observed_on", "date", "observation date", "la date d'observation", (2000, 2026)),
        _f("condition", "enum", "condition", "la condition",
           enum=("sunny", "cloudy", "rain", "snow", "fog", "storm", "wind")),
        _f("humidity", "number", "humidity", "l'humidité", (0, 100)),
        _f("wind_speed", "number", "wind speed", "la vitesse du vent", (0, 150)),
        _f("region", "string", "region", "la région", ("north", "south", "coast", "alps", "plains")),
    )),
    "recipes": ("recipes", "recettes", True, (
        _f("cuisine", "enum", "cuisine", "la cuisine",
           enum=("french", "italian", "japanese", "mexican", "indian", "thai", "lebanese")),
        _f("prep_minutes", "number", "preparation time", "le temps de préparation", (5, 240),
           lt=("ready in under {v} minutes", "prêtes en moins de {v} minutes")),
        _f("ingredient", "string", "ingredient", "l'ingrédient", ("tomato", "basil", "rice", "lentil", "garlic"),
           contains=("with {v}", "avec {v}")),
        _f("calories", "number", "calories", "les calories", (50, 1500)),
        _f("author", "string", "author", "l'auteur", ("Child", "Bocuse", "Ottolenghi", "Hazan", "Robuchon")),
        _f("published", "date", "publication date", "la date de publication", (1990, 2026)),
        _f("difficulty", "enum", "difficulty", "la difficulté", enum=("easy", "medium", "hard")),
    )),
    "flights": ("flights", "vols", False, (
        _f("destination", "string", "destination", "la destination",
           ("Tokyo", "Lisbon", "Nairobi", "Lima", "Oslo", "Dakar"), eq=("to {v}", "à destination de {v}")),
        _f("price", "number", "price", "le prix", (30, 3000),
           lt=("under {v} euros", "à moins de {v} euros")),
        _f("departure", "date", "departure date", "la date de départ", (2024, 2027)),
        _f("airline", "enum", "airline", "la compagnie",
           enum=("air_france", "klm", "lufthansa", "delta", "tap", "iberia", "ana")),
        _f("stops", "number", "number of stops", "le nombre d'escales", (0, 3)),
        _f("origin", "string", "origin", "l'origine", ("Paris", "Madrid", "Berlin", "Rome", "Dublin")),
        _f("cabin", "enum", "cabin", "la cabine", enum=("economy", "premium", "business", "first")),
    )),
}
DOMAIN_NAMES = tuple(DOMAIN_CATALOG)


def build_domain(
    name: str,
    seed: int = 0,
    *,
    min_fields: int = 4,
    max_fields: int = 7,
    min_operators: int = 4,
    max_operators: int = 7,
) -> DomainSpec:
    """A seeded domain spec: a subset of the domain's candidate fields (the first always kept), enum values
    subsampled, and an operator subset of ``min_operators..max_operators`` from ``OPERATOR_CATALOG``.

    ``eq`` is always in the subset so that every field has at least one usable operator."""
    if name not in DOMAIN_CATALOG:
        raise KeyError(f"unknown domain {name!r}; known: {', '.join(DOMAIN_NAMES)}")
    if not 1 <= min_operators <= max_operators <= len(OPERATOR_CATALOG):
        raise ValueError("need 1 <= min_operators <= max_operators <= len(OPERATOR_CATALOG)")
    noun_en, noun_fr, fem, candidates = DOMAIN_CATALOG[name]
    rng = random.Random(f"{name}:{seed}")
    hi = min(max_fields, len(candidates))
    k = rng.randint(min(min_fields, hi), hi)
    keep = {0, *rng.sample(range(1, len(candidates)), k - 1)}
    fields = []
    for i, f in enumerate(candidates):
        if i not in keep:
            continue
        if f.type == "enum":
            m = rng.randint(min(3, len(f.enum_values)), len(f.enum_values))
            chosen = set(rng.sample(f.enum_values, m))
            f = FieldSpec(f.name, f.type, f.label_en, f.label_fr,
                          tuple(v for v in f.enum_values if v in chosen), f.pool, f.phrases)
        fields.append(f)
    operators = sample_operators(rng, min_operators, max_operators)
    return DomainSpec(name, seed, noun_en, noun_fr, fem, tuple(fields), operators)


def value_schema(f: FieldSpec) -> dict[str, Any]:
    """Schema of one scalar value of field ``f``."""
    if f.type == "string":
        return {"type": "string", "minLength": 1}
    if f.type == "number":
        return {"type": "number"}
    if f.type == "date":
        return {"type": "string", "pattern": DATE_PATTERN}
    return {"enum": list(f.enum_values)}


def _comparison_branches(domain: DomainSpec, f: FieldSpec) -> list[dict[str, Any]]:
    ops = domain.operators_for(f)
    scalar = value_schema(f)
    branches = []
    plain = [op for op in ops if op not in ("in", "between", "contains")]
    if plain:
        branches.append({"properties": {"field": {"const": f.name}, "op": {"enum": plain}, "value": scalar}})
    if "contains" in ops:
        branches.append({"properties": {"field": {"const": f.name}, "op": {"const": "contains"},
                                        "value": {"type": "string", "minLength": 1}}})
    if "in" in ops:
        branches.append({"properties": {"field": {"const": f.name}, "op": {"const": "in"},
                                        "value": {"type": "array", "items": scalar, "minItems": 1}}})
    if "between" in ops:
        branches.append({"properties": {"field": {"const": f.name}, "op": {"const": "between"},
                                        "value": {"type": "array", "items": scalar, "minItems": 2, "maxItems": 2}}})
    return branches


def build_schema(domain: DomainSpec) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of ``{"filter": expr, "sort": [...]?, "limit": int?}`` for this domain."""
    names = list(domain.field_names)
    branches = [b for f in domain.fields for b in _comparison_branches(domain, f)]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"astforge://dsl/{domain.name}/{domain.seed}",
        "title": f"{domain.name} query",
        "type": "object",
        "required": ["filter"],
        "additionalProperties": False,
        "properties": {
            "filter": {"$ref": "#/$defs/expr"},
            "sort": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["field", "order"],
                    "additionalProperties": False,
                    "properties": {"field": {"enum": names}, "order": {"enum": list(SORT_ORDERS)}},
                },
            },
            "limit": {"type": "integer", "minimum": 1},
        },
        "$defs": {
            "expr": {"anyOf": [{"$ref": "#/$defs/logical"}, {"$ref": "#/$defs/not"}, {"$ref": "#/$defs/comparison"}]},
            "logical": {
                "type": "object",
                "required": ["op", "args"],
                "additionalProperties": False,
                "properties": {
                    "op": {"enum": ["and", "or"]},
                    "args": {"type": "array", "minItems": 2, "items": {"$ref": "#/$defs/expr"}},
                },
            },
            "not": {
                "type": "object",
                "required": ["op", "arg"],
                "additionalProperties": False,
                "properties": {"op": {"const": "not"}, "arg": {"$ref": "#/$defs/expr"}},
            },
            "comparison": {
                "type": "object",
                "required": ["op", "field", "value"],
                "additionalProperties": False,
                "properties": {"op": {"enum": list(domain.operators)}, "field": {"enum": names}, "value": {}},
                "anyOf": branches,
            },
        },
    }


def schema_errors(ast: Any, schema: dict[str, Any]) -> list[str]:
    """Validation messages of ``ast`` against ``schema`` (empty when valid). Needs ``jsonschema``."""
    from jsonschema import Draft202012Validator

    return [e.message for e in Draft202012Validator(schema).iter_errors(ast)]


def is_valid(ast: Any, schema: dict[str, Any]) -> bool:
    return not schema_errors(ast, schema)


# ---------------------------------------------------------------------------------------------------- serialization


def spec_to_dict(domain: DomainSpec) -> dict[str, Any]:
    """JSON-ready form of a spec (what the ``dsl_domain_specs`` asset stores)."""
    return {
        "name": domain.name, "seed": domain.seed, "noun_en": domain.noun_en, "noun_fr": domain.noun_fr,
        "feminine_fr": domain.feminine_fr, "operators": list(domain.operators),
        "fields": [
            {"name": f.name, "type": f.type, "label_en": f.label_en, "label_fr": f.label_fr,
             "enum_values": list(f.enum_values), "pool": list(f.pool),
             "phrases": {op: list(p) for op, p in f.phrases.items()}}
            for f in domain.fields
        ],
    }


def spec_from_dict(data: dict[str, Any]) -> DomainSpec:
    """Inverse of :func:`spec_to_dict`. Raises ``ValueError`` on an unknown field type or operator."""
    fields = []
    for f in data["fields"]:
        if f["type"] not in FIELD_TYPES:
            raise ValueError(f"field {f['name']!r}: unknown type {f['type']!r}; expected one of {FIELD_TYPES}")
        fields.append(FieldSpec(
            f["name"], f["type"], f.get("label_en") or f["name"].replace("_", " "),
            f.get("label_fr") or f["name"].replace("_", " "), tuple(f.get("enum_values") or ()),
            tuple(f.get("pool") or ()), {op: tuple(p) for op, p in (f.get("phrases") or {}).items()},
        ))
    unknown = [op for op in data["operators"] if op not in OPERATOR_CATALOG]
    if unknown:
        raise ValueError(f"unknown operators {unknown}; the catalog is {OPERATOR_CATALOG}")
    return DomainSpec(data["name"], int(data.get("seed", 0)), data.get("noun_en", data["name"]),
                      data.get("noun_fr", data["name"]), bool(data.get("feminine_fr", False)), tuple(fields),
                      tuple(op for op in OPERATOR_CATALOG if op in data["operators"]))


def sample_operators(rng: random.Random, min_operators: int, max_operators: int) -> tuple[str, ...]:
    """A seeded subset of ``OPERATOR_CATALOG`` of ``min..max`` operators, ``eq`` always in."""
    if not 1 <= min_operators <= max_operators <= len(OPERATOR_CATALOG):
        raise ValueError("need 1 <= min_operators <= max_operators <= len(OPERATOR_CATALOG)")
    n_ops = rng.randint(min_operators, max_operators)
    others = [op for op in OPERATOR_CATALOG if op != "eq"]
    chosen = {"eq", *rng.sample(others, n_ops - 1)}
    return tuple(op for op in OPERATOR_CATALOG if op in chosen)
