"""Schema-conditioned DSL → JSON AST: domain specs, query schemas, a programmatic teacher and negatives."""

from ml.dsl.domains import (
    DOMAIN_NAMES,
    OPERATOR_CATALOG,
    DomainSpec,
    FieldSpec,
    build_domain,
    build_schema,
    is_valid,
    schema_errors,
)
from ml.dsl.mutations import MUTATION_KINDS, mutate
from ml.dsl.request_templates import (
    Example,
    Query,
    canonicalize,
    generate_examples,
    generate_queries,
    render,
    same_meaning,
    teacher,
)

__all__ = [
    "DOMAIN_NAMES",
    "MUTATION_KINDS",
    "OPERATOR_CATALOG",
    "DomainSpec",
    "Example",
    "FieldSpec",
    "Query",
    "build_domain",
    "build_schema",
    "canonicalize",
    "generate_examples",
    "generate_queries",
    "is_valid",
    "mutate",
    "render",
    "same_meaning",
    "schema_errors",
    "teacher",
]
