"""Dataset rows of the DSL pipeline: stable ids, the group key and train/dev/test split of requests, mutated
negatives."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ml.dsl.domains import DomainSpec, schema_errors
from ml.dsl.format import ast_to_text
from ml.dsl.mutations import mutate
from ml.dsl.request_templates import canonicalize
from ml.splits import DEFAULT_DEV_FRACTION, DEFAULT_TEST_FRACTION, split_of


def row_id(*parts: object) -> str:
    """A stable 16-hex id from the parts (same parts, same id, in every run)."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def group_key(domain: str, ast: Mapping[str, Any]) -> str:
    """The group key of a request: its domain and its canonical target AST (``and``/``or`` operands sorted, number
    spelling normalised). Both languages of one request, and requests that differ only in operand order, share it."""
    return f"{domain}:{ast_to_text(canonicalize(dict(ast)))}"


def request_split(domain_split: str, key: str, *, dev: float = DEFAULT_DEV_FRACTION,
                  test: float = DEFAULT_TEST_FRACTION) -> str:
    """``train``/``dev``/``test`` of a request: a held-out domain (``domain_split`` = ``heldout_domain``) is all
    ``test`` (its own evaluation group, never trained on); a training domain's request gets
    :func:`ml.splits.split_of` of its group key."""
    if domain_split != "train":
        return "test"
    return split_of(key, dev=dev, test=test)


def evaluation_group(domain_split: str) -> str:
    """``seen`` (a training domain) or ``heldout`` (a domain never trained on): the evaluation reports them apart."""
    return "seen" if domain_split == "train" else "heldout"


def mutated_negatives(
    positives: Sequence[Mapping[str, Any]],
    specs: Mapping[str, DomainSpec],
    schemas: Mapping[str, dict],
    negative_ratio: float,
    seed: int,
) -> tuple[list[dict], int]:
    """Per domain, ``round(n_positives * negative_ratio)`` seeded positives mutated into schema-invalid rows
    (``valid=False``, ``mutation`` kind, first schema ``errors``; the positive's group key and split). Returns the
    rows and how many mutations were still schema-valid (dropped; a mutation is meant to break the schema)."""
    out, still_valid = [], 0
    for domain in specs:
        mine = [r for r in positives if r["domain"] == domain]
        rng = random.Random(f"negatives:{seed}:{domain}")
        for r in rng.sample(mine, min(len(mine), round(len(mine) * negative_ratio))):
            bad, kind = mutate(json.loads(r["ast_json"]), rng, specs[domain])
            errors = schema_errors(bad, schemas[domain])
            if not errors:
                still_valid += 1
                continue
            out.append({**r, "id": row_id(r["id"], kind), "ast_json": ast_to_text(bad), "valid": False,
                        "mutation": kind, "errors": errors[0][:300]})
    return out, still_valid
